"""``coditect dashboard`` and ``--dashboard`` on ``run`` and ``demo``: in-process through ``main([...])``
for refusals, as real processes for serving (a real redis-server for ``coditect dashboard``)."""

from __future__ import annotations

import asyncio
import os
import re
import signal
import socket
import subprocess
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass

import httpx
import pytest

from coditect.cli.app import main
from coditect.client.orchestrator import ProjectOrchestrator
from coditect.models import AgentTask
from coditect.settings import Settings

ADDRESS = re.compile(r"dashboard at (http://127\.0\.0\.1:\d+/)")
DEADLINE_S = 30
TOKEN = "a-dashboard-token-of-32-characters!"


def one_error_line(err: str) -> str:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert lines[0].startswith("coditect: error: ")
    return lines[0]


@pytest.fixture
def no_dashboard_extra(monkeypatch: pytest.MonkeyPatch) -> None:
    """As if ``pip install coditect`` had been run without the ``dashboard`` extra."""
    monkeypatch.setitem(sys.modules, "starlette", None)


@pytest.mark.usefixtures("no_dashboard_extra")
@pytest.mark.parametrize(
    "argv", [["dashboard", "--redis-url", "redis://127.0.0.1:1/0"], ["demo", "--dashboard"]]
)
def test_without_the_extra_it_says_what_to_install(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(argv) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "pip install 'coditect[dashboard]'" in line
    assert "starlette" in line


def test_the_dashboard_needs_a_shared_redis(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "needs a shared Redis" in line
    assert "coditect demo --dashboard" in line


def test_serving_beyond_loopback_needs_the_token(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Refused before connecting: no Redis listens on port 1.
    assert main(["dashboard", "--host", "0.0.0.0", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "serving the dashboard on 0.0.0.0 needs CODITECT_DASHBOARD_TOKEN" in line
    monkeypatch.setenv("CODITECT_DASHBOARD_TOKEN", "short")
    assert main(["dashboard", "--redis-url", "redis://127.0.0.1:1/0"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert "CODITECT_DASHBOARD_TOKEN is too short" in line
    assert "short" not in line.partition("too short")[2].replace("random", "")


def test_a_port_in_use_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        assert main(["demo", "--dashboard", "--dashboard-port", str(port), "--json"]) == 2
    line = one_error_line(capsys.readouterr().err)
    assert f"cannot serve the dashboard on 127.0.0.1:{port}" in line


@pytest.mark.parametrize("port", ["-1", "65536", "http"])
def test_ports_are_checked(port: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["dashboard", "--port", port]) == 2
    assert "expected a port number" in capsys.readouterr().err


def test_the_parser_imports_no_web_library() -> None:
    code = (
        "import sys; from coditect.cli.app import build_parser; build_parser(); "
        "print(sorted(m for m in ('starlette', 'uvicorn', 'jinja2', 'coditect.web') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert out.stdout.strip() == "[]"


@dataclass
class Running:
    process: asyncio.subprocess.Process
    url: str
    err: list[str]

    async def read_err_until(self, text: str) -> None:
        assert self.process.stderr is not None
        async with asyncio.timeout(DEADLINE_S):
            while not any(text in line for line in self.err):
                line = await self.process.stderr.readline()
                if not line:
                    raise AssertionError(f"the command ended before saying {text!r}: {self.err}")
                self.err.append(line.decode())

    async def interrupt(self) -> tuple[int, str]:
        self.process.send_signal(signal.SIGINT)
        async with asyncio.timeout(DEADLINE_S):
            out, rest = await self.process.communicate()
        self.err.append(rest.decode())
        assert self.process.returncode is not None
        return self.process.returncode, out.decode()


@pytest.fixture
def env() -> dict[str, str]:
    return {k: v for k, v in os.environ.items() if not k.startswith(("CODITECT_", "ANTHROPIC_", "OPENAI_"))}


@pytest.fixture
async def start() -> AsyncIterator[object]:
    started: list[asyncio.subprocess.Process] = []

    async def run(*argv: str, env: dict[str, str]) -> Running:
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", "coditect", *argv, env=env,
            stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
        )  # fmt: skip
        started.append(process)
        running = Running(process, "", [])
        await running.read_err_until("dashboard at")
        found = ADDRESS.search("".join(running.err))
        assert found is not None, running.err
        running.url = found.group(1)
        return running

    yield run
    for process in started:
        if process.returncode is None:
            process.kill()
            await process.wait()


async def test_demo_with_the_dashboard_serves_the_run_and_stays_until_ctrl_c(
    start: object, env: dict[str, str]
) -> None:
    running = await start("demo", "--dashboard", "--dashboard-port", "0", env=env)  # type: ignore[operator]
    await running.read_err_until("the run has ended")
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        page = await client.get(running.url)
        batch = re.search(r'<tr data-batch="(b-[0-9a-f]+)"', page.text)
        assert batch is not None
        assert '<td data-field="done">6/6</td>' in page.text
        detail = await client.get(f"{running.url}batches/{batch.group(1)}")
        assert detail.text.count("<tr data-task=") == 6
        assert "Redis: embedded (in this process)" in detail.text
    code, out = await running.interrupt()
    assert code == 0, running.err
    assert "6 tasks: 6 succeeded" in out
    assert "Traceback" not in "".join(running.err)


async def test_the_dashboard_command_serves_a_shared_redis_until_ctrl_c(
    start: object,
    env: dict[str, str],
    redis_url: str,
) -> None:
    settings = Settings(_env_file=None, redis_url=redis_url)  # type: ignore[call-arg]
    async with ProjectOrchestrator(settings) as orch:
        await orch.submit([AgentTask(id="t", title="waits for a worker")], batch_id="b-shared", name="shared")
    env = {**env, "CODITECT_DASHBOARD_TOKEN": TOKEN}
    running = await start("dashboard", "--redis-url", redis_url, "--port", "0", env=env)  # type: ignore[operator]
    assert f"for Redis at {redis_url}" in "".join(running.err)
    async with httpx.AsyncClient(timeout=DEADLINE_S) as client:
        assert (await client.get(running.url)).status_code == 401
        page = await client.get(running.url, headers={"authorization": f"Bearer {TOKEN}"})
        assert page.status_code == 200
        assert '<tr data-batch="b-shared">' in page.text
        assert '<td data-field="done">0/1</td>' in page.text
    code, _ = await running.interrupt()
    assert code == 0, running.err


async def test_serving_dashboard_serves_while_the_block_runs() -> None:
    from coditect.cli.dashboard_commands import serving_dashboard

    settings = Settings(_env_file=None)  # type: ignore[call-arg]
    async with ProjectOrchestrator(settings) as orch:
        async with serving_dashboard(orch, "127.0.0.1", 0) as url, httpx.AsyncClient() as client:
            assert (await client.get(url)).status_code == 200
        async with httpx.AsyncClient() as client:
            with pytest.raises(httpx.ConnectError):
                await client.get(url)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
async def test_until_interrupted_returns_on_ctrl_c_or_sigterm_and_restores_the_handlers(signum: int) -> None:
    from coditect.cli.dashboard_commands import until_interrupted

    waiting = asyncio.create_task(until_interrupted())
    await asyncio.sleep(0)  # let it install its handlers
    os.kill(os.getpid(), signum)
    await asyncio.wait_for(waiting, DEADLINE_S)
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler
