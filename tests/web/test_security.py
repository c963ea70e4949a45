"""The dashboard's security: binding, the token, sessions, CSRF and origins, hosts, headers, secrets."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator
from pathlib import Path

import httpx
import pytest
from pydantic import SecretStr
from starlette.datastructures import Headers

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.errors import ConfigurationError
from coditect.models import AgentTask
from coditect.settings import Settings
from coditect.web.security import COOKIE, Guard, check_bind, is_loopback
from tests.support.redis_server import RedisServer
from tests.web.conftest import ORIGIN, asgi_client

TOKEN = "a-dashboard-token-of-32-characters!"


def csrf_of(html: str) -> str:
    found = re.search(r'name="csrf" value="([^"]+)"', html)
    assert found is not None, html
    return found.group(1)


@pytest.fixture
async def token_orch(embedded_settings: Settings) -> AsyncIterator[ProjectOrchestrator]:
    settings = embedded_settings.model_copy(update={"dashboard_token": SecretStr(TOKEN)})
    async with ProjectOrchestrator(settings) as orch:
        yield orch


@pytest.fixture
async def token_client(token_orch: ProjectOrchestrator) -> AsyncIterator[httpx.AsyncClient]:
    async with asgi_client(token_orch) as client:
        yield client


# -- binding ------------------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_needs_no_token(host: str) -> None:
    assert is_loopback(host)
    check_bind(host, None)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.10", "dashboard.example"])
def test_any_other_address_needs_the_token(host: str) -> None:
    assert not is_loopback(host)
    with pytest.raises(ConfigurationError, match="needs CODITECT_DASHBOARD_TOKEN"):
        check_bind(host, None)
    check_bind(host, TOKEN)


def test_a_short_token_is_refused() -> None:
    with pytest.raises(ConfigurationError, match="too short"):
        check_bind("127.0.0.1", "short")


# -- guard --------------------------------------------------------------------------------------


def test_session_cookies_are_signed_and_tampering_is_noticed() -> None:
    guard = Guard(TOKEN)
    session = guard.new_session(authenticated=True)
    cookie = guard.cookie_value(session)
    assert guard.session_from(cookie) == session
    session_id, _, signature = cookie.split(".")
    assert guard.session_from(f"{session_id}.1.{signature[:-1]}x") is None
    assert guard.session_from(cookie.replace(".1.", ".0.")) is None  # claims another state: bad signature
    assert guard.session_from(f"{session_id}.2.{signature}") is None
    assert guard.session_from("garbage") is None
    assert guard.session_from(None) is None
    assert Guard(TOKEN).session_from(cookie) is None  # another process: another key


def test_csrf_tokens_belong_to_their_session() -> None:
    guard = Guard(None)
    one, two = guard.new_session(), guard.new_session()
    assert guard.csrf_ok(one, guard.csrf_token(one))
    assert not guard.csrf_ok(two, guard.csrf_token(one))
    assert not guard.csrf_ok(one, None)
    assert not guard.csrf_ok(one, "")


def test_bearer_tokens_and_hosts() -> None:
    guard = Guard(TOKEN)
    assert guard.bearer_ok(f"Bearer {TOKEN}")
    assert guard.bearer_ok(f"bearer {TOKEN}")
    assert not guard.bearer_ok(f"Bearer {TOKEN}x")
    assert not guard.bearer_ok(f"Basic {TOKEN}")
    assert not guard.bearer_ok(None)
    assert not Guard(None).bearer_ok("Bearer ")
    assert guard.host_ok("anything.example:8000")  # with a token, any name (a rebinding page cannot log in)
    local = Guard(None)
    for host in ("127.0.0.1:8000", "localhost:8000", "[::1]:8000", "LOCALHOST", "127.0.0.1"):
        assert local.host_ok(host), host
    for other in ("evil.example:8000", "127.0.0.1.evil.example", "", None):
        assert not local.host_ok(other), other


@pytest.mark.parametrize(
    ("headers", "same"),
    [
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8000"}, True),
        ({"host": "127.0.0.1:8000", "origin": "https://127.0.0.1:8000"}, True),  # behind a TLS proxy
        ({"host": "127.0.0.1:8000", "referer": "http://127.0.0.1:8000/batches/b"}, True),
        ({"host": "127.0.0.1:8000", "origin": "http://evil.example"}, False),
        ({"host": "127.0.0.1:8000", "origin": "http://127.0.0.1:8001"}, False),
        ({"host": "127.0.0.1:8000", "origin": "null"}, False),
        ({"host": "127.0.0.1:8000", "referer": "http://evil.example/?u=http://127.0.0.1:8000/"}, False),
        ({"host": "127.0.0.1:8000"}, False),
    ],
)
def test_same_origin_checks_origin_then_referer(headers: dict[str, str], same: bool) -> None:
    assert Guard.same_origin(Headers(headers)) is same


# -- responses ----------------------------------------------------------------------------------


async def test_every_response_has_the_security_headers_and_a_session_cookie(
    client: httpx.AsyncClient,
) -> None:
    page = await client.get("/")
    assert page.headers["cache-control"] == "no-store"
    cookie = page.headers["set-cookie"]
    assert cookie.startswith(COOKIE + "=")
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert "<script" not in page.text.replace('<script src="/static/dashboard.js" defer></script>', "")
    for path in ("/", "/workers", "/static/dashboard.js", "/no/such/page"):
        response = await client.get(path)
        csp = response.headers["content-security-policy"]
        assert "script-src 'self'" in csp
        assert "default-src 'none'" in csp
        assert "unsafe-inline" not in csp
        assert "frame-ancestors 'none'" in csp
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.headers["referrer-policy"] == "same-origin"
        assert response.headers["x-frame-options"] == "DENY"
    assert "set-cookie" not in (await client.get("/")).headers  # the session it has is kept


async def test_without_a_token_only_loopback_host_names_are_answered(client: httpx.AsyncClient) -> None:
    assert (await client.get("/", headers={"host": "localhost:8000"})).status_code == 200
    rebound = await client.get("/", headers={"host": "attacker.example"})
    assert rebound.status_code == 400


# -- the token ----------------------------------------------------------------------------------


async def test_with_a_token_nothing_is_served_before_logging_in(token_client: httpx.AsyncClient) -> None:
    for path in ("/", "/workers", "/batches/b-any", "/batches/b-any/tasks/t"):
        response = await token_client.get(path)
        assert response.status_code == 401, path
        assert '<form method="post" action="/login"' in response.text
        assert "<table" not in response.text
    for path in ("/live", "/batches/b-any/live"):
        response = await token_client.get(path)
        assert response.status_code == 401
        assert response.headers["content-type"].startswith("text/plain")
    post = await token_client.post("/batches/b-any/cancel", headers={"origin": ORIGIN}, data={"csrf": "x"})
    assert post.status_code == 401
    assert (await token_client.get("/static/dashboard.css")).status_code == 200  # the login page's style


async def test_logging_in_sets_an_httponly_strict_cookie_and_a_new_session(
    token_orch: ProjectOrchestrator, token_client: httpx.AsyncClient
) -> None:
    await token_orch.run_batch([AgentTask(id="t", title="x")], batch_id="b-in")
    form = await token_client.get("/login?next=/batches/b-in")
    anonymous = token_client.cookies[COOKIE]
    csrf = csrf_of(form.text)
    assert 'name="next" value="/batches/b-in"' in form.text
    wrong = await token_client.post(
        "/login", data={"csrf": csrf, "token": TOKEN + "x", "next": "/"}, headers={"origin": ORIGIN}
    )
    assert wrong.status_code == 401
    assert "That is not the token." in wrong.text
    assert TOKEN not in wrong.text
    right = await token_client.post(
        "/login", data={"csrf": csrf, "token": TOKEN, "next": "/batches/b-in"}, headers={"origin": ORIGIN}
    )
    assert right.status_code == 303
    assert right.headers["location"] == "/batches/b-in"
    cookie = right.headers["set-cookie"]
    assert "HttpOnly" in cookie
    assert "SameSite=Strict" in cookie
    assert TOKEN not in cookie
    assert token_client.cookies[COOKIE] != anonymous
    page = await token_client.get("/batches/b-in")
    assert page.status_code == 200
    assert '<tr data-task="t"' in page.text
    assert TOKEN not in page.text
    logout = await token_client.post("/logout", data={"csrf": csrf_of(page.text)}, headers={"origin": ORIGIN})
    assert logout.status_code == 303
    assert (await token_client.get("/batches/b-in")).status_code == 401


async def test_the_login_form_never_sends_anyone_to_another_site(token_client: httpx.AsyncClient) -> None:
    for target, expected in (
        ("//evil.example/", "/"),
        ("https://evil.example/", "/"),
        ("/\\evil.example", "/"),
        ("/workers", "/workers"),
    ):
        csrf = csrf_of((await token_client.get("/login")).text)  # each login starts a new session
        response = await token_client.post(
            "/login", data={"csrf": csrf, "token": TOKEN, "next": target}, headers={"origin": ORIGIN}
        )
        assert response.headers["location"] == expected, target


async def test_a_bearer_token_opens_everything_and_needs_no_csrf(
    token_orch: ProjectOrchestrator, token_client: httpx.AsyncClient
) -> None:
    await token_orch.submit(
        [AgentTask(id="s", title="x", agent="sleeper", metadata={"seconds": 60})], batch_id="b-bear"
    )
    bearer = {"authorization": f"Bearer {TOKEN}"}
    assert (await token_client.get("/", headers=bearer)).status_code == 200
    response = await token_client.post("/batches/b-bear/cancel", headers=bearer)
    assert response.status_code == 303
    (result,) = await token_orch.wait("b-bear", timeout_s=20)
    assert result.status == "cancelled"
    assert (await token_client.get("/", headers={"authorization": "Bearer wrong-token"})).status_code == 401


# -- cross-site requests --------------------------------------------------------------------------


async def test_actions_need_the_csrf_token_and_a_same_origin_post(
    embedded: ProjectOrchestrator, client: httpx.AsyncClient
) -> None:
    await embedded.submit(
        [AgentTask(id="s", title="x", agent="sleeper", metadata={"seconds": 60})], batch_id="b-csrf"
    )
    csrf = csrf_of((await client.get("/batches/b-csrf")).text)
    refused = [
        await client.post("/batches/b-csrf/cancel", data={"csrf": csrf}),  # no Origin, no Referer
        await client.post(
            "/batches/b-csrf/cancel", data={"csrf": csrf}, headers={"origin": "http://evil.example"}
        ),
        await client.post("/batches/b-csrf/cancel", data={}, headers={"origin": ORIGIN}),
        await client.post("/batches/b-csrf/cancel", data={"csrf": csrf + "x"}, headers={"origin": ORIGIN}),
        await client.post("/batches/b-csrf/rerun", data={}, headers={"origin": ORIGIN}),
    ]
    assert [response.status_code for response in refused] == [403] * 5
    summary = await embedded.summary("b-csrf")
    assert summary.cancelled is None
    assert not summary.finished
    accepted = await client.post(
        "/batches/b-csrf/cancel", data={"csrf": csrf}, headers={"referer": ORIGIN + "/batches/b-csrf"}
    )
    assert accepted.status_code == 303
    assert accepted.headers["location"] == "/batches/b-csrf?notice=cancelled"
    (result,) = await embedded.wait("b-csrf", timeout_s=20)
    assert result.status == "cancelled"


async def test_notices_are_chosen_by_key_never_echoed(client: httpx.AsyncClient) -> None:
    response = await client.get("/?notice=<b>owned</b>")
    assert "owned" not in response.text
    assert "Cancel requested" in (await client.get("/?notice=cancelled")).text


# -- secrets --------------------------------------------------------------------------------------


async def test_no_secret_reaches_a_page(embedded_settings: Settings) -> None:
    key = "sk-ant-api03-" + "k" * 40
    settings = embedded_settings.model_copy(
        update={"anthropic_api_key": SecretStr(key), "llm_provider": "offline"}
    )
    async with ProjectOrchestrator(settings) as orch, asgi_client(orch) as client:
        prompt = f"use the key {key} for this"
        tasks = [
            AgentTask(id="t", title=f"keys {key}", description=prompt),
            AgentTask(id="u", title="after", depends_on=["t"]),
        ]
        await orch.run_batch(tasks, batch_id="b-secret", timeout_s=30)
        pages = [
            await client.get(path)
            for path in ("/", "/batches/b-secret", "/batches/b-secret/tasks/t", "/workers")
        ]
    for page in pages:
        assert page.status_code == 200
        assert key[:20] not in page.text
        assert "k" * 10 not in page.text
    assert "use the key ***" in pages[2].text
    assert '<td data-field="title">keys ***</td>' in pages[1].text
    assert "<title>t: keys ***</title>" in pages[1].text  # the graph's tooltip
    assert '<h1 id="task-title">keys ***</h1>' in pages[2].text


async def test_the_redis_password_never_reaches_a_page(tmp_path: Path) -> None:
    password = "redis-password-for-the-dashboard"
    server = RedisServer(tmp_path / "redis")
    server.start()
    try:
        with server.client() as admin:
            admin.config_set("requirepass", password)
        url = f"redis://:{password}@127.0.0.1:{server.port}/0"
        settings = Settings(_env_file=None, redis_url=url)  # type: ignore[call-arg]
        async with ProjectOrchestrator(settings) as orch, asgi_client(orch) as client:
            await orch.submit([AgentTask(id="t", title="queued, no worker")], batch_id="b-pw")
            pages = [
                await client.get(path) for path in ("/", "/batches/b-pw", "/batches/b-pw/tasks/t", "/workers")
            ]
    finally:
        server.stop()
    for page in pages:
        assert page.status_code == 200
        assert password[:8] not in page.text
        assert f"Redis: redis://:***@127.0.0.1:{server.port}/0" in page.text
