"""TaskExecutor with real parts: the offline provider, real scripts, a real HTTP endpoint on loopback."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import socket
import textwrap
import threading
import time
from collections.abc import AsyncIterator, Iterator, Sequence
from dataclasses import dataclass, field
from datetime import timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from coditect.agents import BUILTIN_AGENTS, AgentRegistry
from coditect.errors import PermanentProviderError, TransientProviderError
from coditect.execution.executor import TaskExecutor
from coditect.llm.base import BaseLlm, LlmRequest, LlmResponse, Message
from coditect.llm.factory import LlmFactory
from coditect.llm.offline import OfflineLlm
from coditect.models import AgentConfig, AgentTask, ExecutionResult, ExecutionStatus
from coditect.settings import Settings

SECRET = "sk-ant-executor-test-secret-4242"
DEFAULT_PROMPT = next(agent.system_prompt for agent in BUILTIN_AGENTS if agent.name == "default")

ECHO_SCRIPT = """
import json, sys
task = json.load(sys.stdin)
print("script saw " + task["title"].upper() + " for " + task["agent"])
"""

JSON_SCRIPT = """
import json, sys
task = json.load(sys.stdin)
print(json.dumps({
    "output": "description has " + str(len(task["description"])) + " chars",
    "usage": {"input_tokens": 11, "output_tokens": 4},
    "model": "legacy-1",
}))
"""

FAILING_SCRIPT = """
import sys
sys.stdin.read()
sys.stderr.write("boom: the legacy agent cannot parse its input\\n")
sys.exit(3)
"""

SLOW_SCRIPT = """
import time
time.sleep(30)
"""


def make_settings(monkeypatch: pytest.MonkeyPatch, **env: str) -> Settings:
    for name, value in env.items():
        monkeypatch.setenv(f"CODITECT_{name.upper()}", value)
    return Settings(_env_file=None)


def write_script(folder: Path, name: str, body: str) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / name
    path.write_text(textwrap.dedent(body), encoding="utf-8")
    return path


@pytest.fixture
async def executor(settings: Settings) -> AsyncIterator[TaskExecutor]:
    async with TaskExecutor(settings) as executor:
        yield executor


def assert_timestamps(result: ExecutionResult) -> None:
    assert result.started_at is not None
    assert result.finished_at is not None
    assert result.started_at.utcoffset() == timedelta(0)
    assert result.started_at <= result.finished_at
    wall = (result.finished_at - result.started_at).total_seconds()
    assert result.duration_s >= 0
    assert abs(result.duration_s - wall) < 0.1


# --- llm mode with the offline provider ---------------------------------------------------------


async def test_llm_mode_with_the_offline_provider(executor: TaskExecutor) -> None:
    task = AgentTask(id="t1", title="Summarise the ADR", description="In two sentences.")

    result = await executor.execute(task)

    # The executor sends the task's prompt with the agent's system prompt: the same call, made directly,
    # gives the same reply.
    expected = await OfflineLlm().generate_content_async(
        [Message("user", task.prompt)], LlmRequest(system=DEFAULT_PROMPT, max_tokens=1024)
    )
    assert result.status is ExecutionStatus.SUCCESS
    assert result.error is None
    assert result.task_id == "t1"
    assert result.agent == "default"
    assert result.mode == "llm"
    assert result.output == expected.text
    assert "Summarise the ADR" in result.output
    assert result.provider == "offline"
    assert result.model == "offline-1"
    assert result.usage == expected.usage
    assert result.usage.input_tokens > 0
    assert result.usage.output_tokens > 0
    assert result.attempts == 1
    assert result.worker == f"{socket.gethostname()}:{os.getpid()}"
    assert not result.retryable
    assert_timestamps(result)


async def test_offline_output_is_deterministic(settings: Settings) -> None:
    task = AgentTask(title="Same question")
    async with TaskExecutor(settings) as first, TaskExecutor(settings) as second:
        one = await first.execute(task)
        two = await second.execute(task.model_copy(update={"id": "another-id"}))
        other = await first.execute(AgentTask(title="Different question"))

    assert one.output == two.output
    assert other.output != one.output


async def test_agent_argument_overrides_the_task_agent(executor: TaskExecutor) -> None:
    task = AgentTask(title="Same question", agent="default")

    as_default = await executor.execute(task)
    as_writer = await executor.execute(task, agent="writer")

    assert as_writer.status is ExecutionStatus.SUCCESS
    assert as_writer.agent == "writer"
    # A different system prompt reached the provider.
    assert as_writer.output != as_default.output


async def test_model_and_worker_name_come_from_settings(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(monkeypatch, llm_model="my-model", worker_name="worker-7")
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="x"))

    assert result.model == "my-model"
    assert result.output.startswith("[offline my-model #")
    assert result.worker == "worker-7"


async def test_agent_model_overrides_the_default(settings: Settings) -> None:
    agents = AgentRegistry([AgentConfig(name="pinned", provider="offline", model="pinned-2")])
    async with TaskExecutor(settings, agents=agents) as executor:
        result = await executor.execute(AgentTask(title="x", agent="pinned"))

    assert result.status is ExecutionStatus.SUCCESS
    assert result.model == "pinned-2"


# --- failures are results ---------------------------------------------------------------------


async def test_unknown_agent_is_a_failed_result(executor: TaskExecutor) -> None:
    result = await executor.execute(AgentTask(title="x", agent="poet"))

    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert "unknown agent 'poet'" in result.error
    assert "writer" in result.error
    assert result.agent == "poet"
    assert not result.retryable
    assert_timestamps(result)


async def test_unknown_mode_is_a_failed_result(executor: TaskExecutor) -> None:
    result = await executor.execute(AgentTask(title="x"), mode="shell")

    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert "unknown mode 'shell'" in result.error
    assert "llm, api, script" in result.error


async def test_mode_override_api_without_endpoint_fails(executor: TaskExecutor) -> None:
    result = await executor.execute(AgentTask(title="x"), mode="api")

    assert result.status is ExecutionStatus.FAILED
    assert result.mode == "api"
    assert result.error is not None
    assert "needs an 'endpoint'" in result.error
    assert not result.retryable


async def test_api_agent_without_endpoint_fails(settings: Settings) -> None:
    agents = AgentRegistry([AgentConfig(name="remote", mode="api")])
    async with TaskExecutor(settings, agents=agents) as executor:
        result = await executor.execute(AgentTask(title="x", agent="remote"))

    assert result.status is ExecutionStatus.FAILED
    assert result.mode == "api"
    assert result.error == "agent remote: mode 'api' needs an 'endpoint' URL"


async def test_mode_override_llm_runs_an_api_agent_through_the_provider(settings: Settings) -> None:
    agents = AgentRegistry([AgentConfig(name="remote", mode="api", endpoint="http://127.0.0.1:9/")])
    async with TaskExecutor(settings, agents=agents) as executor:
        result = await executor.execute(AgentTask(title="x", agent="remote"), mode="llm")

    assert result.status is ExecutionStatus.SUCCESS
    assert result.mode == "llm"
    assert result.provider == "offline"


# --- script mode ---------------------------------------------------------------------------


async def test_use_direct_llm_false_runs_the_agent_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scripts = tmp_path / "scripts"
    write_script(scripts, "execute_default.py", ECHO_SCRIPT)
    settings = make_settings(monkeypatch, use_direct_llm="false", scripts_dir=str(scripts))
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="Summarise the ADR"))

    assert result.status is ExecutionStatus.SUCCESS, result.error
    assert result.mode == "script"
    assert result.output == "script saw SUMMARISE THE ADR for default"
    assert result.provider == "script"
    assert_timestamps(result)


async def test_use_direct_llm_false_uses_agents_file_and_named_script(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scripts = tmp_path / "scripts"
    write_script(scripts, "legacy_tool.py", ECHO_SCRIPT)
    agents_file = tmp_path / "agents.json"
    agents_file.write_text(json.dumps({"agents": [{"name": "legacy", "script": "legacy_tool.py"}]}))
    settings = make_settings(
        monkeypatch, use_direct_llm="false", scripts_dir=str(scripts), agents_file=str(agents_file)
    )
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="hello", agent="legacy"))

    assert result.status is ExecutionStatus.SUCCESS, result.error
    assert result.output == "script saw HELLO for legacy"


async def test_use_direct_llm_false_leaves_api_agents_in_api_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(monkeypatch, use_direct_llm="false")
    agents = AgentRegistry([AgentConfig(name="remote", mode="api")])
    async with TaskExecutor(settings, agents=agents) as executor:
        result = await executor.execute(AgentTask(title="x", agent="remote"))

    assert result.mode == "api"


async def test_mode_override_script(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    write_script(
        scripts, "execute_writer.py", 'import json, sys; print("writer: " + json.load(sys.stdin)["title"])'
    )
    settings = make_settings(monkeypatch, scripts_dir=str(scripts))  # use_direct_llm stays true
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="draft"), agent="writer", mode="script")

    assert result.status is ExecutionStatus.SUCCESS, result.error
    assert result.mode == "script"
    assert result.agent == "writer"
    assert result.output == "writer: draft"


async def test_script_json_output_is_parsed(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    write_script(scripts, "execute_default.py", JSON_SCRIPT)
    settings = make_settings(monkeypatch, use_direct_llm="false", scripts_dir=str(scripts))
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="t", description="x" * 37))

    assert result.status is ExecutionStatus.SUCCESS, result.error
    assert result.output == "description has 37 chars"
    assert result.usage.input_tokens == 11
    assert result.usage.output_tokens == 4
    assert result.model == "legacy-1"
    assert result.provider == "script"


async def test_failing_script_is_a_failed_result_with_its_stderr(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    scripts = tmp_path / "scripts"
    write_script(scripts, "execute_default.py", FAILING_SCRIPT)
    settings = make_settings(monkeypatch, use_direct_llm="false", scripts_dir=str(scripts))
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="t"))

    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert "exited with code 3" in result.error
    assert "boom: the legacy agent cannot parse its input" in result.error
    assert result.output == ""
    assert not result.retryable


async def test_missing_script_is_a_failed_result(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    settings = make_settings(monkeypatch, use_direct_llm="false", scripts_dir=str(tmp_path / "empty"))
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="t"))

    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert "script not found" in result.error
    assert "execute_default.py" in result.error


async def test_slow_script_times_out(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    scripts = tmp_path / "scripts"
    write_script(scripts, "execute_default.py", SLOW_SCRIPT)
    settings = make_settings(monkeypatch, use_direct_llm="false", scripts_dir=str(scripts))
    clock = time.perf_counter()
    async with TaskExecutor(settings) as executor:
        result = await executor.execute(AgentTask(title="t", timeout_s=0.3))

    assert time.perf_counter() - clock < 3
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.error is not None
    assert "timed out after 0.3 s" in result.error


# --- timeouts ------------------------------------------------------------------------------


async def test_task_timeout_is_a_timeout_result(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(monkeypatch, offline_latency_s="5")
    async with TaskExecutor(settings) as executor:
        clock = time.perf_counter()
        result = await executor.execute(AgentTask(id="slow-1", title="t", timeout_s=0.2))
        elapsed = time.perf_counter() - clock

    assert elapsed < 2
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.error == "task slow-1 timed out after 0.2 s and was cancelled"
    assert result.output == ""
    assert result.duration_s >= 0.2
    assert_timestamps(result)


@pytest.mark.parametrize("source", ["agent", "job"])
async def test_agent_and_job_timeouts_also_apply(monkeypatch: pytest.MonkeyPatch, source: str) -> None:
    env = {"offline_latency_s": "5"}
    if source == "job":
        env["job_timeout_s"] = "0.2"
    settings = make_settings(monkeypatch, **env)
    agent_timeout_s = 0.2 if source == "agent" else 60
    agents = AgentRegistry([AgentConfig(name="a", timeout_s=agent_timeout_s)])
    async with TaskExecutor(settings, agents=agents) as executor:
        clock = time.perf_counter()
        result = await executor.execute(AgentTask(title="t", agent="a"))

    assert time.perf_counter() - clock < 2
    assert result.status is ExecutionStatus.TIMEOUT
    assert result.error is not None
    assert "timed out after 0.2 s" in result.error


# --- api mode against a real HTTP server ---------------------------------------------------------


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes


@dataclass
class Reply:
    status: int = 200
    body: bytes = b'{"output": "remote answer"}'
    headers: dict[str, str] = field(default_factory=lambda: {"content-type": "application/json"})


class AgentEndpoint(ThreadingHTTPServer):
    """An agent's HTTP endpoint on loopback: records each request, answers from ``routes``."""

    def __init__(self) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.requests: list[Recorded] = []
        self.routes: dict[str, Reply] = {}

    def url(self, path: str = "/run") -> str:
        host, port = self.server_address[:2]
        return f"http://{host!s}:{port}{path}"


class _Handler(BaseHTTPRequestHandler):
    server: AgentEndpoint

    def _handle(self) -> None:
        body = self.rfile.read(int(self.headers.get("content-length", "0")))
        self.server.requests.append(
            Recorded(self.command, self.path, {k.lower(): v for k, v in self.headers.items()}, body)
        )
        reply = self.server.routes.get(self.path, Reply())
        self.send_response(reply.status)
        for name, value in reply.headers.items():
            self.send_header(name, value)
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        self.wfile.write(reply.body)

    do_POST = do_GET = _handle

    def log_message(self, format: str, *args: object) -> None:
        pass


@pytest.fixture
def endpoint(monkeypatch: pytest.MonkeyPatch) -> Iterator[AgentEndpoint]:
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy"):
        monkeypatch.delenv(name, raising=False)
    server = AgentEndpoint()
    thread = threading.Thread(target=server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)


def api_agents(url: str) -> AgentRegistry:
    return AgentRegistry([*BUILTIN_AGENTS, AgentConfig(name="remote", mode="api", endpoint=url)])


async def run_remote(settings: Settings, url: str, task: AgentTask | None = None) -> ExecutionResult:
    async with TaskExecutor(settings, agents=api_agents(url)) as executor:
        return await executor.execute(task or AgentTask(title="x", agent="remote"))


async def test_api_mode_posts_the_task_and_returns_the_output(
    monkeypatch: pytest.MonkeyPatch, endpoint: AgentEndpoint
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    settings = Settings(_env_file=None)
    task = AgentTask(
        id="api-1", title="Review t1", description="Be strict.", agent="remote", metadata={"n": 1}
    )

    result = await run_remote(settings, endpoint.url(), task)

    assert result.status is ExecutionStatus.SUCCESS, result.error
    assert result.mode == "api"
    assert result.output == "remote answer"
    assert result.provider == "api"
    assert len(endpoint.requests) == 1
    request = endpoint.requests[0]
    assert request.method == "POST"
    assert request.path == "/run"
    assert request.headers["content-type"] == "application/json"
    assert json.loads(request.body) == {"task": task.model_dump(mode="json"), "agent": "remote"}
    # The provider key is for the provider only; it never travels to an agent endpoint.
    assert SECRET not in repr(request.headers)
    assert SECRET.encode() not in request.body


async def test_api_mode_plain_text_reply(settings: Settings, endpoint: AgentEndpoint) -> None:
    endpoint.routes["/run"] = Reply(body=b"  just text\n", headers={"content-type": "text/plain"})

    result = await run_remote(settings, endpoint.url())

    assert result.status is ExecutionStatus.SUCCESS
    assert result.output == "just text"


async def test_api_mode_json_reply_with_usage(settings: Settings, endpoint: AgentEndpoint) -> None:
    body = {"output": "ok", "usage": {"input_tokens": 5, "output_tokens": 8}, "model": "remote-3"}
    endpoint.routes["/run"] = Reply(body=json.dumps(body).encode())

    result = await run_remote(settings, endpoint.url())

    assert result.output == "ok"
    assert result.usage.input_tokens == 5
    assert result.usage.output_tokens == 8
    assert result.model == "remote-3"


@pytest.mark.parametrize(
    ("body", "output", "input_tokens"),
    [
        pytest.param(b"{not json", "{not json", 0, id="brace-but-not-json"),
        pytest.param(b'{"result": "x"}', '{"result": "x"}', 0, id="json-without-output"),
        pytest.param(b'{"output": 42}', '{"output": 42}', 0, id="output-not-text"),
        pytest.param(b'{"output": "ok", "usage": {"input_tokens": -1}}', "ok", 0, id="bad-usage-ignored"),
        pytest.param(b'{"output": "ok", "usage": "lots"}', "ok", 0, id="usage-not-an-object"),
        pytest.param(b'{"output": "ok", "usage": {"input_tokens": 3}}', "ok", 3, id="partial-usage"),
    ],
)
async def test_api_mode_reply_parsing(
    settings: Settings, endpoint: AgentEndpoint, body: bytes, output: str, input_tokens: int
) -> None:
    endpoint.routes["/run"] = Reply(body=body)

    result = await run_remote(settings, endpoint.url())

    assert result.status is ExecutionStatus.SUCCESS
    assert result.output == output
    assert result.usage.input_tokens == input_tokens
    assert result.usage.output_tokens == 0


@pytest.mark.parametrize(
    ("status", "headers", "retryable", "retry_after_s"),
    [
        pytest.param(503, {}, True, None, id="503-retryable"),
        pytest.param(500, {}, True, None, id="500-retryable"),
        pytest.param(429, {"retry-after": "3"}, True, 3, id="429-retry-after"),
        pytest.param(400, {}, False, None, id="400-permanent"),
        pytest.param(401, {}, False, None, id="401-permanent"),
    ],
)
async def test_api_mode_http_errors(
    settings: Settings,
    endpoint: AgentEndpoint,
    status: int,
    headers: dict[str, str],
    retryable: bool,
    retry_after_s: float | None,
) -> None:
    endpoint.routes["/run"] = Reply(status=status, body=b"endpoint says no", headers=headers)

    result = await run_remote(settings, endpoint.url())

    assert result.status is ExecutionStatus.FAILED
    assert result.retryable is retryable
    assert result.retry_after_s == retry_after_s
    assert result.error is not None
    assert f"(HTTP {status})" in result.error
    assert "endpoint says no" in result.error
    assert "API_KEY" not in result.error  # an endpoint has no provider key to check
    if status == 401:
        assert "check the agent endpoint's credentials" in result.error
    assert result.output == ""
    assert len(endpoint.requests) == 1  # one attempt: retries belong to the queue layer


async def test_api_mode_redirect_is_not_a_silent_success(settings: Settings, endpoint: AgentEndpoint) -> None:
    endpoint.routes["/run"] = Reply(status=307, body=b"", headers={"location": endpoint.url("/final")})
    endpoint.routes["/final"] = Reply(body=b'{"output": "final answer"}')

    result = await run_remote(settings, endpoint.url())

    # A redirect is not followed (the task must not silently go elsewhere): it fails, not retried.
    assert result.status is ExecutionStatus.FAILED
    assert result.retryable is False
    assert "(HTTP 307)" in (result.error or "")


async def test_api_mode_connection_refused_is_retryable(settings: Settings) -> None:
    # A bound socket that does not listen: connecting is refused, and no other test can take the port.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
        result = await run_remote(settings, f"http://127.0.0.1:{port}/run")

    assert result.status is ExecutionStatus.FAILED
    assert result.retryable is True
    assert result.error is not None
    assert f"cannot reach http://127.0.0.1:{port}/run" in result.error


async def test_api_mode_request_timeout_is_retryable(monkeypatch: pytest.MonkeyPatch) -> None:
    settings = make_settings(monkeypatch, llm_timeout_s="0.2")
    # Listening but never answering: the kernel accepts the connection, nobody reads the request.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        sock.listen()
        url = f"http://127.0.0.1:{sock.getsockname()[1]}/run"
        clock = time.perf_counter()
        result = await run_remote(settings, url)

    assert time.perf_counter() - clock < 2
    assert result.status is ExecutionStatus.FAILED
    assert result.retryable is True
    assert result.error == f"agent remote endpoint: request to {url} timed out"


# --- lifecycle --------------------------------------------------------------------------------


async def test_async_with_closes_the_factory_it_created(settings: Settings) -> None:
    async with TaskExecutor(settings) as executor:
        assert (await executor.execute(AgentTask(title="x"))).succeeded
        client = executor.llm_factory.http_client

    assert client.is_closed
    with pytest.raises(RuntimeError, match="closed"):
        executor.llm_factory.create("openai")


async def test_external_factory_is_left_open(settings: Settings) -> None:
    async with LlmFactory(settings) as factory:
        client = factory.http_client
        async with TaskExecutor(settings, llm_factory=factory) as executor:
            assert executor.llm_factory is factory
            assert (await executor.execute(AgentTask(title="x"))).succeeded

        assert not client.is_closed
        assert factory.create("openai").model  # still usable
    assert client.is_closed


# --- provider failures ---------------------------------------------------------------------


class ScriptedLlm(BaseLlm):
    """Raises ``error`` when called; or, with none, signals ``started`` and waits forever."""

    provider = "scripted"

    def __init__(self, error: BaseException | None = None) -> None:
        super().__init__("scripted-1")
        self.error = error
        self.started = asyncio.Event()

    async def generate_content_async(
        self, messages: Sequence[Message], request: LlmRequest | None = None
    ) -> LlmResponse:
        if self.error is not None:
            raise self.error
        self.started.set()
        await asyncio.get_running_loop().create_future()
        raise AssertionError("unreachable")


class SingleLlmFactory(LlmFactory):
    def __init__(self, settings: Settings, llm: BaseLlm) -> None:
        super().__init__(settings)
        self.llm = llm

    def create(self, provider: str | None = None, model: str | None = None) -> BaseLlm:
        return self.llm


async def run_with(settings: Settings, llm: BaseLlm) -> ExecutionResult:
    async with SingleLlmFactory(settings, llm) as factory:
        executor = TaskExecutor(settings, llm_factory=factory)
        return await executor.execute(AgentTask(id="t-err", title="x"))


async def test_unexpected_provider_exception_is_a_failed_result(
    settings: Settings, caplog: pytest.LogCaptureFixture
) -> None:
    with caplog.at_level(logging.ERROR, logger="coditect.execution.executor"):
        result = await run_with(settings, ScriptedLlm(ValueError("bad number")))

    assert result.status is ExecutionStatus.FAILED
    assert result.error == "unexpected ValueError: bad number"
    assert not result.retryable
    assert any(record.exc_info and "t-err" in record.getMessage() for record in caplog.records)


async def test_transient_provider_error_is_retryable(settings: Settings) -> None:
    error = TransientProviderError("scripted", "overloaded", status_code=529, retry_after_s=7)

    result = await run_with(settings, ScriptedLlm(error))

    assert result.status is ExecutionStatus.FAILED
    assert result.retryable is True
    assert result.retry_after_s == 7
    assert result.error == "scripted (HTTP 529): overloaded"


async def test_permanent_provider_error_is_not_retryable(settings: Settings) -> None:
    error = PermanentProviderError("scripted", "bad key", status_code=401)

    result = await run_with(settings, ScriptedLlm(error))

    assert result.status is ExecutionStatus.FAILED
    assert result.retryable is False
    assert result.error == "scripted (HTTP 401): bad key"


async def test_cancelled_error_inside_the_provider_propagates(settings: Settings) -> None:
    with pytest.raises(asyncio.CancelledError):
        await run_with(settings, ScriptedLlm(asyncio.CancelledError()))


async def test_cancelling_execute_cancels_it(settings: Settings) -> None:
    llm = ScriptedLlm()
    async with SingleLlmFactory(settings, llm) as factory:
        executor = TaskExecutor(settings, llm_factory=factory)
        running = asyncio.create_task(executor.execute(AgentTask(title="x")))
        async with asyncio.timeout(5):
            await llm.started.wait()
        running.cancel()
        with pytest.raises(asyncio.CancelledError):
            await running

    assert running.cancelled()


async def test_a_run_failing_after_model_calls_keeps_their_usage(settings: Settings, tmp_path: Path) -> None:
    flaky = AgentConfig(name="flaky", mode="python", entrypoint="tests.support.python_agents:flaky_after_llm")
    task = AgentTask(id="f1", title="Try twice", agent="flaky", metadata={"ledger": str(tmp_path / "ledger")})
    async with TaskExecutor(settings, agents=AgentRegistry([*BUILTIN_AGENTS, flaky])) as executor:
        failed = await executor.execute(task)
        succeeded = await executor.execute(task)

    assert (failed.status, failed.retryable) == (ExecutionStatus.FAILED, True)
    assert succeeded.status is ExecutionStatus.SUCCESS
    # The call was made (and billed) before the agent failed: the failed attempt reports it.
    assert failed.usage == succeeded.usage
    assert failed.usage.total_tokens > 0
    assert (failed.provider, failed.model, failed.cost_usd) == ("offline", "offline-1", 0.0)
