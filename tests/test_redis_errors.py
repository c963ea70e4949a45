"""Redis errors in one short line (``coditect.redis_errors``): the cause, never the arguments."""

from __future__ import annotations

import logging

import pytest
from arq.connections import ArqRedis
from redis.exceptions import (
    AuthenticationError,
    BusyLoadingError,
    NoPermissionError,
    OutOfMemoryError,
    ReadOnlyError,
    RedisError,
    ResponseError,
)
from redis.exceptions import ConnectionError as RedisConnectionError

from coditect.errors import BackendUnavailableError, RedisRefusedError
from coditect.redis_errors import MAX_ERROR_CHARS, RefusalLog, refusal, refusals, short_error

URL = "redis://db/0"
SCRIPT_NOPERM = (
    "this user has no permissions to run the 'publish' command (nothing was written) script: "
    "4b9c6982471bafd7f9f8cac3e5e6b4d7014fff74, on @user_script:1."
)


async def test_a_pipelines_error_loses_the_command_and_its_megabytes_of_arguments(pool: ArqRedis) -> None:
    await pool.set("a-string", "x")
    prompt = "p" * 2_000_000
    async with pool.pipeline(transaction=False) as pipe:
        pipe.hset("a-string", "task", prompt)  # WRONGTYPE: redis-py quotes the command in its error
        with pytest.raises(ResponseError) as raised:
            await pipe.execute()
    assert len(str(raised.value)) > 2_000_000

    line = short_error(raised.value)

    assert line.startswith("WRONGTYPE")
    assert len(line) <= MAX_ERROR_CHARS
    assert "ppp" not in line


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", "ResponseError"),
        ("   ", "ResponseError"),
        ("first line\nsecond line", "first line"),
        ("x" * 500, "x" * (MAX_ERROR_CHARS - 3) + "..."),
    ],
)
def test_short_error_is_one_line_of_at_most_max_chars(text: str, expected: str) -> None:
    assert short_error(ResponseError(text)) == expected


@pytest.mark.parametrize(
    ("err", "cause", "command", "line"),
    [
        pytest.param(
            OutOfMemoryError("command not allowed when used memory > 'maxmemory'."),
            "oom", None,
            f"Redis is out of memory (maxmemory reached at {URL}, and maxmemory-policy refuses writes): "
            "batch b was not enqueued",
            id="oom",
        ),
        pytest.param(
            NoPermissionError(SCRIPT_NOPERM), "acl", "PUBLISH",
            f"Redis at {URL} refused PUBLISH (its ACL does not let this user run it): "
            "batch b was not enqueued",
            id="noperm-command",
        ),
        pytest.param(
            NoPermissionError("this user has no permissions to access one of the channels used as arguments"),
            "acl", None,
            f"Redis at {URL} refused access to a channel (its ACL must let this user use coditect's keys and "
            "channels: ~coditect:* ~arq:* &coditect:*): batch b was not enqueued",
            id="noperm-channel",
        ),
        pytest.param(
            NoPermissionError("The user executing the script can't run this command"), "acl", None,
            f"Redis at {URL} refused access to a command (its ACL must let this user use coditect's keys and "
            "channels: ~coditect:* ~arq:* &coditect:*): batch b was not enqueued",
            id="noperm-in-a-script",
        ),
        pytest.param(
            ReadOnlyError("You can't write against a read only replica."), "readonly", None,
            f"Redis at {URL} is a read-only replica: point the URL at the master (or at its sentinels): "
            "batch b was not enqueued",
            id="readonly",
        ),
        pytest.param(
            BusyLoadingError("Redis is loading the dataset in memory"), "loading", None,
            f"Redis at {URL} is still loading its data; try again once it has: batch b was not enqueued",
            id="loading",
        ),
        pytest.param(
            AuthenticationError("Authentication required."), "acl", None,
            f"Redis at {URL} refused the credentials: check the user name and password in the URL: batch b "
            "was not enqueued",
            id="noauth",
        ),
        pytest.param(
            ResponseError("ERR Error running script: @user_script:3: boom"), "error", None,
            f"Redis at {URL} refused a command: ERR Error running script: @user_script:3: boom: "
            "batch b was not enqueued",
            id="other",
        ),
    ],
)  # fmt: skip
def test_a_refusal_names_its_cause_in_one_line(
    err: RedisError, cause: str, command: str | None, line: str
) -> None:
    refused = refusal(err, URL, doing="batch b was not enqueued")

    assert refused is not None
    assert (refused.cause, refused.command, str(refused)) == (cause, command, line)
    assert isinstance(refused, BackendUnavailableError)


def test_a_dropped_connection_is_no_refusal() -> None:
    assert refusal(RedisConnectionError("Connection closed by server.")) is None


def test_refusals_translates_inside_the_block_and_lets_connection_errors_pass() -> None:
    with pytest.raises(RedisRefusedError) as refused, refusals(URL):
        raise ReadOnlyError("You can't write against a read only replica.")
    assert refused.value.cause == "readonly"
    assert isinstance(refused.value.__cause__, ReadOnlyError)
    with pytest.raises(RedisConnectionError), refusals(URL):
        raise RedisConnectionError("reset")


def test_the_refusal_log_says_each_refusal_once_and_its_repeats_at_debug(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG, logger="coditect.redis_errors")
    log = RefusalLog()
    evalsha = NoPermissionError("this user has no permissions to run the 'evalsha' command")

    said = [log.report(evalsha, "no jobs meanwhile") for _ in range(3)]
    said.append(log.report(OutOfMemoryError("command not allowed"), "no jobs meanwhile"))
    said.append(log.report(RedisConnectionError("reset"), "no jobs meanwhile"))
    said.append(log.report(TimeoutError(), "no jobs meanwhile"))

    assert said == [True, True, True, True, False, False]
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert errors == [
        "Redis refused EVALSHA (its ACL does not let this user run it): no jobs meanwhile",
        "Redis is out of memory (maxmemory reached, and maxmemory-policy refuses writes): no jobs meanwhile",
    ]
    assert [r.levelno for r in caplog.records].count(logging.DEBUG) == 2
