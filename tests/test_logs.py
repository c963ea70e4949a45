"""Worker and CLI logging: secrets are masked on every handler coditect sets up or finds; records
logged inside a job carry its fields, in text lines and in JSON lines."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import logging.config
import sys
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import SecretStr

from coditect.logs import (
    LOG_CONFIG,
    JobContextFilter,
    JsonFormatter,
    SecretsFilter,
    TextFormatter,
    ensure_worker_logging,
    install_secrets_filter,
    job_log_context,
    redact_secrets,
)
from coditect.secrets import Redactor, register_secrets
from coditect.settings import Settings

KEY = "sk-ant-api03-Zx9_secret-Key-0123456789"


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(f"key {KEY} refused", "key sk-ant-*** refused", id="anthropic-key"),
        pytest.param("openai sk-proj-abcdefghijklmnopqrstuvwx ok", "openai sk-*** ok", id="openai-key"),
        pytest.param("Authorization: Bearer abc.DEF-123_456", "Authorization: Bearer ***", id="bearer"),
        pytest.param(
            f"{{'authorization': 'Bearer {KEY}'}}", "{'authorization': 'Bearer sk-ant-***'}", id="bearer-key"
        ),
        pytest.param("x-api-key: abcdef123", "x-api-key: ***", id="x-api-key-header"),
        pytest.param(
            "{'X-Api-Key': 'abcdef123', 'a': 1}", "{'X-Api-Key': '***', 'a': 1}", id="x-api-key-repr"
        ),
        pytest.param("connect(api_key=abcdef123)", "connect(api_key=***)", id="api-key-kwarg"),
        pytest.param('{"api_key": "abcdef123"}', '{"api_key": "***"}', id="api-key-json"),
        pytest.param("at redis://:hunter2@h:6379/0", "at redis://:***@h:6379/0", id="redis-url"),
        pytest.param("rediss://user:p@ss@h:1/0", "rediss://user:***@h:1/0", id="rediss-at-in-password"),
        pytest.param("redis+sentinel://:pw@a:1,b:2/m", "redis+sentinel://:***@a:1,b:2/m", id="sentinel-url"),
        pytest.param(
            "at redis://h:1/0?password=hunter2", "at redis://h:1/0?password=***", id="query-password"
        ),
        pytest.param(
            "redis://h/0?db=1&password=pw&x=1", "redis://h/0?db=1&password=***&x=1", id="amp-password"
        ),
        pytest.param("redis://h/0?password=***: refused", "redis://h/0?password=***: refused", id="masked"),
    ],
)
def test_secrets_are_masked(text: str, expected: str) -> None:
    assert redact_secrets(text) == expected
    assert redact_secrets(expected) == expected  # masking twice changes nothing


@pytest.mark.parametrize(
    "text",
    [
        "invalid task payload, not executed: api_key: Extra inputs are not permitted",
        "the bearer of good news",
        "redis://localhost:6379/0 and redis://user@host/1",
        "task sk-1 finished",
    ],
)
def test_ordinary_text_is_left_alone(text: str) -> None:
    assert redact_secrets(text) == text


@pytest.fixture
def isolated() -> Iterator[tuple[logging.Logger, logging.Handler, io.StringIO]]:
    """A logger tree of its own (``secrets_test.child``) with a handler on the parent only."""
    parent = logging.getLogger("secrets_test")
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    parent.addHandler(handler)
    parent.propagate = False
    yield logging.getLogger("secrets_test.child"), handler, stream
    parent.removeHandler(handler)
    parent.propagate = True


def test_the_filter_masks_arguments_tracebacks_and_stacks_of_propagated_records(
    isolated: tuple[logging.Logger, logging.Handler, io.StringIO],
) -> None:
    logger, handler, stream = isolated
    install_secrets_filter("secrets_test.child")
    install_secrets_filter("secrets_test.child")  # idempotent
    assert sum(isinstance(f, SecretsFilter) for f in handler.filters) == 1

    logger.warning("calling with %s and %r", KEY, {"x-api-key": "abcdef123"})
    try:
        raise RuntimeError(f"Authorization: Bearer {KEY}")
    except RuntimeError:
        logger.exception("request failed")
    out = stream.getvalue()
    assert "calling with sk-ant-*** and {'x-api-key': '***'}" in out
    assert "request failed\nTraceback (most recent call last)" in out
    assert "RuntimeError: Authorization: Bearer sk-ant-***" in out
    assert KEY not in out
    assert "abcdef123" not in out


def test_the_filter_masks_a_stack() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "here", None, None, sinfo=f"key = {KEY!r}")
    assert SecretsFilter().filter(record)
    assert record.stack_info == "key = 'sk-ant-***'"


def test_a_record_whose_arguments_do_not_fit_passes_the_filter_unchanged() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "%d items", ("many",), None)
    assert SecretsFilter().filter(record)  # the handler reports the bad format, as without the filter
    assert (record.msg, record.args) == ("%d items", ("many",))


@pytest.fixture
def saved_logging() -> Iterator[None]:
    loggers = [logging.getLogger(name) for name in ("", "arq", "coditect")]
    saved = [(lg, list(lg.handlers), lg.level, lg.propagate) for lg in loggers]
    filters = {id(h): list(h.filters) for lg in loggers for h in lg.handlers}
    yield
    for lg, handlers, level, propagate in saved:
        for handler in lg.handlers:
            if handler not in handlers:
                handler.close()
            elif id(handler) in filters:
                handler.filters[:] = filters[id(handler)]
        lg.handlers[:] = handlers
        lg.setLevel(level)
        lg.propagate = propagate


@pytest.mark.usefixtures("saved_logging")
def test_ensure_worker_logging_under_the_arq_command_masks_on_arqs_handler_and_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    arq_stream = io.StringIO()
    arq_handler = logging.StreamHandler(arq_stream)
    # What `arq coditect.jobs.WorkerSettings` leaves: a handler on "arq" (default_log_config), none elsewhere.
    logging.getLogger().handlers[:] = []
    logging.getLogger("arq").handlers[:] = [arq_handler]
    logging.getLogger("arq").setLevel(logging.INFO)
    logging.getLogger("coditect").handlers[:] = []

    ensure_worker_logging()
    ensure_worker_logging()

    (own,) = logging.getLogger("coditect").handlers
    for handler in (own, arq_handler):
        assert sum(isinstance(f, SecretsFilter) for f in handler.filters) == 1
    logging.getLogger("arq.worker").info("job args %s", KEY)
    logging.getLogger("coditect.jobs").info("try failed: Bearer %s", KEY)
    assert "job args sk-ant-***" in arq_stream.getvalue()
    assert "try failed: Bearer sk-ant-***" in capsys.readouterr().err
    assert KEY not in arq_stream.getvalue()


@pytest.mark.usefixtures("saved_logging")
def test_ensure_worker_logging_under_coditect_worker_masks_on_the_roots_handler() -> None:
    root_stream = io.StringIO()
    root_handler = logging.StreamHandler(root_stream)
    # What `coditect worker` leaves: one handler on the root logger.
    logging.getLogger().handlers[:] = [root_handler]
    logging.getLogger("arq").handlers[:] = []
    logging.getLogger("coditect").handlers[:] = []
    logging.getLogger("coditect").setLevel(logging.INFO)

    ensure_worker_logging()

    assert logging.getLogger("coditect").handlers == []  # the root's handler prints its lines already
    assert sum(isinstance(f, SecretsFilter) for f in root_handler.filters) == 1
    logging.getLogger("coditect.jobs").info("try failed: Bearer %s", KEY)
    assert "try failed: Bearer sk-ant-***" in root_stream.getvalue()
    assert KEY not in root_stream.getvalue()


@pytest.mark.usefixtures("saved_logging")
def test_log_config_for_arqs_custom_log_dict_masks_secrets(capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig(LOG_CONFIG)
    logging.getLogger("arq.worker").info("connecting to redis://:hunter2@redis:6379")
    logging.getLogger("coditect.execution.executor").warning("refused %s", KEY)
    err = capsys.readouterr().err
    assert "redis://:***@redis:6379" in err
    assert "refused sk-ant-***" in err
    assert "hunter2" not in err
    assert KEY not in err


def test_the_filter_masks_any_run_of_a_registered_secret(
    isolated: tuple[logging.Logger, logging.Handler, io.StringIO],
) -> None:
    logger, handler, stream = isolated
    handler.addFilter(SecretsFilter())
    key = "partial-secret-" + "k7Q" * 20
    logger.warning("provider said: bad key %s...%s", key[:40], key[-50:])
    assert key[:40] in stream.getvalue()  # not registered yet: nothing knows it is a secret
    register_secrets([key])
    logger.warning("provider said: bad key %s...%s", key[:40], key[-50:])
    assert stream.getvalue().splitlines()[-1] == "provider said: bad key ***...***"


def test_a_filter_can_be_given_its_own_redactor() -> None:
    record = logging.LogRecord("x", logging.WARNING, __file__, 1, "pw %s", ("own-secret-1234",), None)
    assert SecretsFilter(redactor=Redactor(["own-secret-1234"])).filter(record)
    assert record.getMessage() == "pw ***"


# -- job context, text and JSON lines ----------------------------------------------------------------

JOB = {"job_id": "coditect:b1:t1", "batch_id": "b1", "task_id": "t1", "attempt": 2, "worker": "host:42"}


@pytest.fixture
def json_lines(
    isolated: tuple[logging.Logger, logging.Handler, io.StringIO],
) -> tuple[logging.Logger, io.StringIO]:
    logger, handler, stream = isolated
    handler.addFilter(SecretsFilter())
    handler.addFilter(JobContextFilter())
    handler.setFormatter(JsonFormatter())
    return logger, stream


def parsed(stream: io.StringIO) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stream.getvalue().splitlines()]


def test_json_lines_carry_the_job_fields_inside_a_job_only(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_lines
    logger.warning("before")
    with job_log_context(**JOB) as context:
        logger.warning("during %s", "the job")
    logger.error("after")

    before, during, after = parsed(stream)
    assert context.task_id == "t1"
    assert during == {"time": during["time"], "level": "WARNING", "logger": "secrets_test.child",
                      "message": "during the job", **JOB}  # fmt: skip
    for outside, level, message in ((before, "WARNING", "before"), (after, "ERROR", "after")):
        assert outside == {"time": outside["time"], "level": level, "logger": "secrets_test.child",
                           "message": message}  # fmt: skip
    stamp = datetime.fromisoformat(during["time"])
    assert during["time"].endswith("Z")
    assert stamp.utcoffset() == timedelta(0)
    assert abs(datetime.now(UTC) - stamp) < timedelta(seconds=60)


def test_json_lines_mask_secrets_and_carry_the_exception(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_lines
    try:
        raise RuntimeError(f"Authorization: Bearer {KEY}")
    except RuntimeError:
        logger.exception("request with key %s failed", KEY)
    logger.warning("lone \ud800 surrogate")

    failed, lone = parsed(stream)
    assert failed["message"] == "request with key sk-ant-*** failed"
    assert failed["exception"].startswith("Traceback (most recent call last)")
    assert failed["exception"].endswith("RuntimeError: Authorization: Bearer sk-ant-***")
    assert KEY not in stream.getvalue()
    assert lone["message"] == "lone \ud800 surrogate"


async def test_concurrent_jobs_each_tag_their_own_records(
    json_lines: tuple[logging.Logger, io.StringIO],
) -> None:
    logger, stream = json_lines
    both_inside = asyncio.Barrier(2)

    async def job(task_id: str) -> None:
        with job_log_context(job_id=f"coditect:b:{task_id}", batch_id="b", task_id=task_id):
            await both_inside.wait()  # each logs while the other's context is set too
            logger.warning("working on %s", task_id)

    await asyncio.gather(job("x"), job("y"))
    assert sorted((line["message"], line["task_id"]) for line in parsed(stream)) == [
        ("working on x", "x"),
        ("working on y", "y"),
    ]


def test_text_lines_show_batch_and_task_inside_a_job(
    isolated: tuple[logging.Logger, logging.Handler, io.StringIO],
) -> None:
    logger, handler, stream = isolated
    handler.addFilter(JobContextFilter())
    handler.setFormatter(TextFormatter("%(levelname)s %(message)s"))
    with job_log_context(**JOB):
        logger.warning("inside")
    with job_log_context(job_id="arq-job-1"):
        logger.warning("no batch")
    logger.warning("outside")
    record = logging.LogRecord("x", logging.INFO, __file__, 1, "unfiltered", None, None)
    with job_log_context(**JOB):
        unfiltered = TextFormatter("%(message)s").format(record)  # read from the context instead
    assert stream.getvalue().splitlines() == ["WARNING [b1/t1] inside", "WARNING [-/arq-job-1] no batch",
                                              "WARNING outside"]  # fmt: skip
    assert unfiltered == "[b1/t1] unfiltered"


def test_a_json_line_formats_the_traceback_and_the_stack_itself_when_no_filter_did() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        record = logging.LogRecord("x", logging.ERROR, __file__, 1, "failed", None, sys.exc_info())
    record.stack_info = "Stack (most recent call last):\n  here"
    entry = json.loads(JsonFormatter().format(record))
    assert entry["exception"].endswith("ValueError: boom")
    assert entry["stack"] == "Stack (most recent call last):\n  here"
    assert "task_id" not in entry


@pytest.mark.usefixtures("saved_logging")
def test_ensure_worker_logging_writes_json_lines_when_asked(capsys: pytest.CaptureFixture[str]) -> None:
    arq_stream = io.StringIO()
    arq_handler = logging.StreamHandler(arq_stream)
    logging.getLogger().handlers[:] = []
    logging.getLogger("arq").handlers[:] = [arq_handler]
    logging.getLogger("arq").setLevel(logging.INFO)
    logging.getLogger("coditect").handlers[:] = []
    key = "sk-worker-json-" + "w" * 30
    settings = Settings(_env_file=None, log_format="json", openai_api_key=SecretStr(key))  # type: ignore[call-arg]

    ensure_worker_logging(settings)

    with job_log_context(job_id="coditect:b2:t9", batch_id="b2", task_id="t9", attempt=1, worker="w"):
        logging.getLogger("coditect.jobs").info("provider refused %s", key[-30:])
        logging.getLogger("arq.worker").info("job started")
    (own,) = [json.loads(line) for line in capsys.readouterr().err.splitlines()]
    (arqs,) = [json.loads(line) for line in arq_stream.getvalue().splitlines()]
    assert (own["message"], own["task_id"], own["logger"]) == ("provider refused ***", "t9", "coditect.jobs")
    assert (arqs["message"], arqs["batch_id"], arqs["attempt"]) == ("job started", "b2", 1)


@pytest.mark.usefixtures("saved_logging")
def test_log_config_tags_job_records(capsys: pytest.CaptureFixture[str]) -> None:
    logging.config.dictConfig(LOG_CONFIG)
    with job_log_context(job_id="j", batch_id="b3", task_id="t3"):
        logging.getLogger("coditect.execution.executor").warning("slow")
    assert capsys.readouterr().err.rstrip().endswith(": [b3/t3] slow")
