"""``rediss://``: the server certificate and its host name are verified; the password never shows.

A real ``redis-server`` that speaks only TLS (``--port 0``) and requires a password, with a CA and a
server certificate made here by the ``openssl`` command for ``localhost`` only (no IP address).
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from coditect.client.orchestrator import ProjectOrchestrator
from coditect.connections import create_redis_pool
from coditect.errors import BackendUnavailableError
from coditect.models import AgentTask, ExecutionStatus
from coditect.settings import Settings
from tests.support.tls import Certificates, TlsRedisServer, make_certificates
from tests.support.workers import WorkerProcess

PASSWORD = "tls-pass-8c1f2e"
WRONG_PASSWORD = "not-the-pass-55d0"
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def certificates(tmp_path_factory: pytest.TempPathFactory) -> Certificates:
    return make_certificates(tmp_path_factory.mktemp("tls"))


@pytest.fixture(scope="module")
def tls_server(
    tmp_path_factory: pytest.TempPathFactory, certificates: Certificates
) -> Iterator[TlsRedisServer]:
    server = TlsRedisServer(tmp_path_factory.mktemp("tls-redis"), certificates, password=PASSWORD)
    server.start()
    yield server
    server.stop()


def base_env() -> dict[str, str]:
    keep = {k: v for k, v in os.environ.items() if not k.startswith(("CODITECT_", "ANTHROPIC_", "OPENAI_"))}
    return {**keep, "PYTHONPATH": str(ROOT)}


def settings(url: str, ca: Path | None) -> Settings:
    return Settings(_env_file=None, redis_url=url, redis_tls_ca_file=ca, poll_interval_s=0.01)


async def test_a_batch_runs_over_tls_with_the_ca_file_and_the_password(
    tls_server: TlsRedisServer, certificates: Certificates
) -> None:
    url = tls_server.url()
    env = {**base_env(), "CODITECT_REDIS_URL": url, "CODITECT_REDIS_TLS_CA_FILE": str(certificates.ca)}
    worker = await WorkerProcess(env).start()
    try:
        async with ProjectOrchestrator(settings(url, certificates.ca)) as orch:
            tasks = [AgentTask(id=f"tls{i}", title=f"over TLS {i}") for i in range(3)]
            results = await orch.run_batch(tasks, batch_id="tls")
    finally:
        await worker.stop()
    assert [r.status for r in results] == [ExecutionStatus.SUCCESS] * 3
    assert {r.worker for r in results} == {results[0].worker}
    assert results[0].worker is not None
    assert results[0].worker.endswith(f":{worker.pid}")
    # The server speaks TLS only: the same address without TLS is refused.
    with pytest.raises(BackendUnavailableError):
        await create_redis_pool(settings(url.replace("rediss://", "redis://"), None), conn_retries=0)


async def run_cli(url: str, batch: Path, ca: Path | None = None) -> tuple[int, str, str]:
    env = base_env()
    if ca is not None:
        env["CODITECT_REDIS_TLS_CA_FILE"] = str(ca)
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "coditect", "run", str(batch), "--redis-url", url, "--json", "--timeout", "5",
        env=env, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    async with asyncio.timeout(30):
        out, err = await process.communicate()
    assert process.returncode is not None
    return process.returncode, out.decode(), err.decode()


async def test_the_cli_refuses_what_it_cannot_verify_with_exit_2_and_no_password(
    tls_server: TlsRedisServer, certificates: Certificates, tmp_path: Path
) -> None:
    batch = tmp_path / "batch.json"
    batch.write_text(json.dumps([{"id": "a", "title": "never runs"}]))
    no_ca, wrong_host, wrong_password = await asyncio.gather(
        run_cli(tls_server.url(), batch),
        run_cli(tls_server.url(host="127.0.0.1"), batch, certificates.ca),
        run_cli(tls_server.url(password=WRONG_PASSWORD), batch, certificates.ca),
    )
    expected = {
        "no CA file": (no_ca, "certificate verify failed", "CODITECT_REDIS_TLS_CA_FILE"),
        "host name not in the certificate": (
            wrong_host,
            "certificate is not valid for '127.0.0.1'",
            "host name",
        ),
        "wrong password": (wrong_password, "invalid username-password pair", "password in the URL"),
    }
    for case, ((code, out, err), reason, hint) in expected.items():
        assert code == 2, (case, err)
        assert out == "", case
        lines = err.splitlines()
        assert len(lines) == 1, (case, err)
        assert lines[0].startswith("coditect: error: cannot reach Redis at rediss://:***@"), (case, err)
        assert reason in lines[0], (case, err)
        assert hint in lines[0], (case, err)
        assert PASSWORD not in err, case
        assert WRONG_PASSWORD not in err, case
        assert "Traceback" not in err, case


async def test_errors_that_waiting_cannot_fix_are_not_retried(
    tls_server: TlsRedisServer, certificates: Certificates
) -> None:
    cases = [
        settings(tls_server.url(), None),
        settings(tls_server.url(host="127.0.0.1"), certificates.ca),
        settings(tls_server.url(password=WRONG_PASSWORD), certificates.ca),
    ]
    for case in cases:
        started = time.monotonic()
        with pytest.raises(BackendUnavailableError) as caught:
            await create_redis_pool(case, conn_retries=5)  # 5 retries, 1 s apart, if it retried
        assert time.monotonic() - started < 1.0, caught.value
        assert PASSWORD not in str(caught.value)
        assert WRONG_PASSWORD not in str(caught.value)
