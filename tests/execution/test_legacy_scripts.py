"""ScriptRunner against real scripts written to a temporary folder."""

from __future__ import annotations

import asyncio
import json
import logging
import os
import signal
import sys
import textwrap
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from coditect.errors import ConfigurationError, ScriptError
from coditect.execution.legacy_scripts import ScriptOutput, ScriptRunner, _kill_and_reap

WriteScript = Callable[[str, str], Path]

ECHO = """
import json, os, sys
data = sys.stdin.read()
print(json.dumps({"echo": data, "cwd": os.getcwd(), "isolated": sys.flags.isolated}))
"""

# Writes its own pid and a grandchild's pid (atomically, so a reader never sees half a number), then sleeps.
SLEEPER = """
import os, subprocess, sys, time
def publish(name, pid):
    tmp = name + ".tmp"
    with open(tmp, "w") as f:
        f.write(str(pid))
    os.replace(tmp, name)
child = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"], **KWARGS)
publish(sys.argv[0] + ".grandchild", child.pid)
publish(sys.argv[0] + ".pid", os.getpid())
time.sleep(SLEEP_S)
"""


@pytest.fixture
def scripts_dir(tmp_path: Path) -> Path:
    path = tmp_path / "scripts"
    path.mkdir()
    return path.resolve()


@pytest.fixture
def write_script(scripts_dir: Path) -> WriteScript:
    def write(name: str, body: str) -> Path:
        path = scripts_dir / name
        path.write_text(textwrap.dedent(body), encoding="utf-8")
        return path

    return write


@pytest.fixture
def runner(scripts_dir: Path) -> ScriptRunner:
    return ScriptRunner(scripts_dir)


@pytest.fixture
def spawned_pids() -> Iterator[list[int]]:
    """Pids a test expects dead; if the test fails early, they are killed here so nothing leaks."""
    pids: list[int] = []
    yield pids
    for pid in pids:
        if _is_alive(pid):
            os.kill(pid, signal.SIGKILL)


def _is_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A killed grandchild is re-parented to init, and is a zombie (dead) until init reaps it.
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return True
    return stat.rsplit(")", 1)[1].split()[0] != "Z"


async def _poll(predicate: Callable[[], bool], timeout_s: float = 3.0) -> bool:
    deadline = time.monotonic() + timeout_s
    while not predicate():
        if time.monotonic() > deadline:
            return False
        await asyncio.sleep(0.01)
    return True


def _read_pid(path: Path) -> int:
    assert path.exists(), f"the script did not get as far as writing {path.name}"
    return int(path.read_text())


def _sleeper(write_script: WriteScript, name: str, *, sleep_s: float, detach_stdio: bool = False) -> Path:
    kwargs = "{'stdout': subprocess.DEVNULL, 'stderr': subprocess.DEVNULL}" if detach_stdio else "{}"
    body = SLEEPER.replace("KWARGS", kwargs).replace("SLEEP_S", repr(sleep_s))
    return write_script(name, body)


async def test_stdout_returned_and_payload_arrives_intact(
    runner: ScriptRunner, write_script: WriteScript, scripts_dir: Path
) -> None:
    write_script("execute_echo.py", ECHO)
    payload = json.dumps(
        {"title": "héllo — 日本語 🚀", "x": "hello; rm -rf / $(id) `whoami`"}, ensure_ascii=False
    )

    out = await runner.run("echo", payload, timeout_s=10)

    assert isinstance(out, ScriptOutput)
    assert out.exit_code == 0
    assert out.duration_s > 0
    assert out.stderr == ""
    assert json.loads(out.stdout) == {"echo": payload, "cwd": str(scripts_dir), "isolated": 1}


async def test_explicit_script_name_is_used(runner: ScriptRunner, write_script: WriteScript) -> None:
    write_script("custom_tool.py", "print('custom')")
    write_script("execute_writer.py", "print('default')")

    out = await runner.run("writer", "{}", timeout_s=10, script="custom_tool.py")

    assert out.stdout == "custom\n"


async def test_environment_is_scrubbed(
    runner: ScriptRunner, write_script: WriteScript, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "sk-ant-very-secret")
    monkeypatch.setenv("CODITECT_REDIS_URL", "redis://:hunter2@redis:6379")
    write_script("execute_env.py", "import json, os; print(json.dumps(dict(os.environ)))")

    out = await runner.run("env", "{}", timeout_s=10)

    env = json.loads(out.stdout)
    assert "ANTHROPIC_API_KEY" not in env
    assert "CODITECT_REDIS_URL" not in env
    assert "sk-ant-very-secret" not in out.stdout
    assert env["LANG"] == "C.UTF-8"
    assert set(env) <= {"PATH", "HOME", "LANG", "PYTHONIOENCODING", "LC_CTYPE"}


async def test_nonzero_exit_raises_script_error_with_stderr(
    runner: ScriptRunner, write_script: WriteScript
) -> None:
    write_script("execute_failing.py", "import sys; sys.stderr.write('boom: bad input\\n'); sys.exit(3)")

    with pytest.raises(ScriptError) as excinfo:
        await runner.run("failing", "{}", timeout_s=10)

    assert excinfo.value.exit_code == 3
    assert excinfo.value.script == "execute_failing.py"
    assert "boom: bad input" in str(excinfo.value)


async def test_timeout_kills_script_and_grandchild(
    runner: ScriptRunner, write_script: WriteScript, spawned_pids: list[int]
) -> None:
    path = _sleeper(write_script, "execute_sleeper.py", sleep_s=30)
    started = time.monotonic()

    with pytest.raises(TimeoutError, match=r"execute_sleeper\.py.*0\.5"):
        await runner.run("sleeper", "{}", timeout_s=0.5)

    assert time.monotonic() - started < 3
    script_pid = _read_pid(Path(f"{path}.pid"))
    grandchild_pid = _read_pid(Path(f"{path}.grandchild"))
    spawned_pids += [script_pid, grandchild_pid]
    with pytest.raises(ProcessLookupError):  # our own child: killed and already reaped
        os.kill(script_pid, 0)
    assert await _poll(lambda: not _is_alive(grandchild_pid)), "the grandchild survived the timeout"


async def test_cancellation_kills_script_and_grandchild(
    runner: ScriptRunner, write_script: WriteScript, spawned_pids: list[int]
) -> None:
    path = _sleeper(write_script, "execute_sleeper.py", sleep_s=30)
    task = asyncio.create_task(runner.run("sleeper", "{}", timeout_s=30))
    pid_file = Path(f"{path}.pid")
    assert await _poll(pid_file.exists, timeout_s=10), "the script never started"
    script_pid = _read_pid(pid_file)
    grandchild_pid = _read_pid(Path(f"{path}.grandchild"))
    spawned_pids += [script_pid, grandchild_pid]

    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await task

    with pytest.raises(ProcessLookupError):
        os.kill(script_pid, 0)
    assert await _poll(lambda: not _is_alive(grandchild_pid)), "the grandchild survived the cancellation"


async def test_leftover_grandchild_is_killed_after_a_clean_exit(
    runner: ScriptRunner, write_script: WriteScript, spawned_pids: list[int]
) -> None:
    path = _sleeper(write_script, "execute_forker.py", sleep_s=0, detach_stdio=True)

    out = await runner.run("forker", "{}", timeout_s=10)

    assert out.exit_code == 0
    grandchild_pid = _read_pid(Path(f"{path}.grandchild"))
    spawned_pids.append(grandchild_pid)
    assert await _poll(lambda: not _is_alive(grandchild_pid)), "a background grandchild outlived the run"


async def test_timeout_while_flooding_output_still_reaps(
    runner: ScriptRunner, write_script: WriteScript
) -> None:
    write_script("execute_firehose.py", "import sys\nwhile True:\n    sys.stdout.write('f' * 65_536)")
    started = time.monotonic()

    with pytest.raises(TimeoutError):
        await runner.run("firehose", "{}", timeout_s=0.5)

    assert time.monotonic() - started < 3


async def test_reaping_unblocks_a_paused_pipe(write_script: WriteScript, tmp_path: Path) -> None:
    # 200 kB unread pauses asyncio's pipe (its buffer passes 128 KiB): a bare wait() would then never return.
    done = tmp_path / "done"
    script = write_script(
        "flood.py",
        f"""
        import sys, time
        sys.stdout.write("f" * 200_000)
        sys.stdout.flush()
        open({str(done)!r}, "w").close()
        time.sleep(30)
        """,
    )
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-I", str(script), stdout=asyncio.subprocess.PIPE, start_new_session=True
    )
    assert await _poll(done.exists, timeout_s=10)
    started = time.monotonic()

    await _kill_and_reap(proc)

    assert time.monotonic() - started < 3
    assert proc.returncode == -signal.SIGKILL


async def test_escaped_daemon_holding_the_pipes_cannot_hang_the_runner(
    runner: ScriptRunner,
    write_script: WriteScript,
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    # A grandchild in its own session escapes the group kill and keeps stdout open after the script exits.
    write_script(
        "execute_daemon.py",
        """
        import subprocess, sys
        argv = [sys.executable, "-c", "import time; time.sleep(60)"]
        child = subprocess.Popen(argv, start_new_session=True)
        open(sys.argv[0] + ".pid", "w").write(str(child.pid))
        """,
    )
    monkeypatch.setattr("coditect.execution.legacy_scripts._REAP_GRACE_S", 0.3)
    procs: list[asyncio.subprocess.Process] = []
    spawn = asyncio.create_subprocess_exec

    async def spawn_and_keep(*args: Any, **kwargs: Any) -> asyncio.subprocess.Process:
        procs.append(await spawn(*args, **kwargs))
        return procs[-1]

    monkeypatch.setattr(asyncio, "create_subprocess_exec", spawn_and_keep)
    started = time.monotonic()

    try:
        with pytest.raises(TimeoutError):
            await runner.run("daemon", "{}", timeout_s=0.5)
        assert time.monotonic() - started < 3
        assert "pipes are still open" in caplog.text
    finally:  # the daemon is out of the runner's reach: end it, and read its pipes to EOF to free them
        os.kill(_read_pid(runner.scripts_dir / "execute_daemon.py.pid"), signal.SIGKILL)
        stdout, stderr = procs[0].stdout, procs[0].stderr
        assert stdout is not None
        assert stderr is not None
        await asyncio.wait_for(asyncio.gather(stdout.read(), stderr.read()), 5)


async def test_missing_script_names_the_path(runner: ScriptRunner, scripts_dir: Path) -> None:
    with pytest.raises(ConfigurationError) as excinfo:
        await runner.run("nope", "{}", timeout_s=10)
    assert str(scripts_dir / "execute_nope.py") in str(excinfo.value)

    with pytest.raises(ConfigurationError, match="not found"):
        runner.resolve("nope", "absent_tool.py")


@pytest.mark.parametrize(
    ("agent", "script"),
    [
        ("../x", None),
        ("a/b", None),
        ("/etc/passwd", None),
        ("..", None),
        ("", None),
        ("ok\n", None),
        ("ok", "../evil.py"),
        ("ok", "/etc/passwd"),
        ("ok", "sub/tool.py"),
        ("ok", "tool.sh"),
    ],
)
def test_unsafe_names_are_refused(runner: ScriptRunner, agent: str, script: str | None) -> None:
    with pytest.raises(ConfigurationError, match="unsafe"):
        runner.resolve(agent, script)


async def test_symlink_pointing_outside_is_refused(
    runner: ScriptRunner, scripts_dir: Path, tmp_path: Path
) -> None:
    marker = tmp_path / "ran"
    outside = tmp_path / "outside.py"
    outside.write_text(f"open({str(marker)!r}, 'w').close()")
    (scripts_dir / "execute_evil.py").symlink_to(outside)

    with pytest.raises(ConfigurationError, match="outside the scripts folder"):
        await runner.run("evil", "{}", timeout_s=10)
    assert not marker.exists()


def test_symlink_inside_is_allowed_and_loops_are_refused(
    runner: ScriptRunner, write_script: WriteScript, scripts_dir: Path
) -> None:
    real = write_script("real_tool.py", "print('real')")
    (scripts_dir / "execute_alias.py").symlink_to(real)
    (scripts_dir / "execute_loop.py").symlink_to(scripts_dir / "execute_loop.py")

    assert runner.resolve("alias") == real
    with pytest.raises(ConfigurationError, match="execute_loop"):
        runner.resolve("loop")


async def test_output_is_capped_and_the_run_finishes(scripts_dir: Path, write_script: WriteScript) -> None:
    write_script(
        "execute_flood.py",
        "import sys; sys.stdout.write('x' * 5_000_000); sys.stderr.write('e' * 5_000_000)",
    )
    runner = ScriptRunner(scripts_dir, output_limit_bytes=65_536)

    out = await runner.run("flood", "{}", timeout_s=10)

    assert out.stdout == "x" * 65_536
    assert out.stderr == "e" * 65_536


async def test_cap_never_splits_a_character(scripts_dir: Path, write_script: WriteScript) -> None:
    write_script("execute_accents.py", "print('é' * 10_000)")
    runner = ScriptRunner(scripts_dir, output_limit_bytes=1025)

    out = await runner.run("accents", "{}", timeout_s=10)

    assert out.stdout == "é" * 512


async def test_large_payload_while_script_writes_first_does_not_deadlock(
    scripts_dir: Path, write_script: WriteScript
) -> None:
    # Writing 2 MB before reading: a runner that fed stdin before reading stdout would hang here.
    write_script(
        "execute_big.py",
        """
        import sys
        sys.stdout.write("y" * 2_000_000)
        sys.stdout.flush()
        sys.stderr.write(str(len(sys.stdin.buffer.read())))
        """,
    )
    runner = ScriptRunner(scripts_dir, output_limit_bytes=4_000_000)
    payload = "p" * 2_000_000

    out = await runner.run("big", payload, timeout_s=10)

    assert out.stderr == "2000000"
    assert len(out.stdout) == 2_000_000


async def test_script_that_ignores_its_input_still_succeeds(
    runner: ScriptRunner, write_script: WriteScript
) -> None:
    write_script("execute_deaf.py", "print('done')")

    out = await runner.run("deaf", "z" * 2_000_000, timeout_s=10)

    assert out.stdout == "done\n"


async def test_payload_is_never_logged(
    runner: ScriptRunner, write_script: WriteScript, caplog: pytest.LogCaptureFixture
) -> None:
    write_script("execute_echo.py", ECHO)
    caplog.set_level(logging.DEBUG, logger="coditect.execution.legacy_scripts")

    await runner.run("echo", "TOP-SECRET-PAYLOAD", timeout_s=10)

    assert any("execute_echo.py" in record.getMessage() for record in caplog.records)
    assert "TOP-SECRET-PAYLOAD" not in caplog.text


async def test_invalid_limits_are_refused(runner: ScriptRunner, scripts_dir: Path) -> None:
    with pytest.raises(ValueError, match="output_limit_bytes"):
        ScriptRunner(scripts_dir, output_limit_bytes=0)
    with pytest.raises(ValueError, match="timeout_s"):
        await runner.run("echo", "{}", timeout_s=0)
