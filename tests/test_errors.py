"""The error tree: status classification, retry-after parsing and the messages users read."""

from __future__ import annotations

import pytest

from coditect import errors as errors_module
from coditect.errors import (
    MAX_RETRY_AFTER_S,
    BackendUnavailableError,
    BudgetDeferred,
    CapacityDeferred,
    CoditectError,
    ConfigurationError,
    PermanentProviderError,
    ProviderError,
    ScriptError,
    TaskInputError,
    TransientProviderError,
    parse_retry_after,
    provider_error_for_status,
)
from coditect.llm.http_errors import error_message, retry_after_header


@pytest.mark.parametrize("status", [408, 409, 429, 500, 502, 503, 504, 529, 599])
def test_retryable_statuses_are_transient(status: int) -> None:
    err = provider_error_for_status("anthropic", status, "boom")

    assert isinstance(err, TransientProviderError)
    assert err.transient is True
    assert err.status_code == status


@pytest.mark.parametrize("status", [400, 401, 402, 403, 404, 413, 422, 300])
def test_client_statuses_are_permanent(status: int) -> None:
    err = provider_error_for_status("anthropic", status, "boom")

    assert isinstance(err, PermanentProviderError)
    assert not isinstance(err, TransientProviderError)
    assert err.transient is False
    assert err.status_code == status


def test_every_error_is_a_coditect_error() -> None:
    for cls in (ConfigurationError, TaskInputError, BackendUnavailableError, ScriptError, ProviderError):
        assert issubclass(cls, CoditectError)
    assert issubclass(TransientProviderError, ProviderError)
    assert issubclass(PermanentProviderError, ProviderError)


@pytest.mark.parametrize(
    ("value", "seconds"),
    [
        ("2", 2.0),
        ("1.5", 1.5),
        (" 3 ", 3.0),
        ("0", 0.0),
        ("300", 300.0),
        ("301", MAX_RETRY_AFTER_S),
        ("86400", MAX_RETRY_AFTER_S),
        ("-1", None),
        ("soon", None),
        ("Wed, 21 Oct 2015 07:28:00 GMT", None),  # the HTTP-date form is not used by LLM providers
        ("", None),
        (None, None),
    ],
)
def test_parse_retry_after(value: str | None, seconds: float | None) -> None:
    assert parse_retry_after(value) == seconds


def test_retry_after_reaches_the_transient_error_only() -> None:
    transient = provider_error_for_status("openai", 429, "slow down", retry_after="12")
    permanent = provider_error_for_status("openai", 400, "bad", retry_after="12")

    assert isinstance(transient, TransientProviderError)
    assert transient.retry_after_s == 12.0
    assert not hasattr(permanent, "retry_after_s")


@pytest.mark.parametrize(
    ("headers", "value"),
    [
        ({"retry-after": "4"}, "4"),
        ({"retry-after-ms": "2500"}, "2.5"),
        ({"retry-after-ms": "2500", "retry-after": "9"}, "2.5"),  # the precise one wins
        ({"retry-after-ms": "garbage", "retry-after": "9"}, "9"),
        ({"retry-after-ms": "nan"}, None),
        ({}, None),
    ],
)
def test_retry_after_header(headers: dict[str, str], value: str | None) -> None:
    assert retry_after_header(headers) == value


@pytest.mark.parametrize(
    ("body", "message"),
    [
        ({"type": "error", "error": {"type": "overloaded_error", "message": "Overloaded"}}, "Overloaded"),
        ({"error": "no slot available"}, "no slot available"),
        ({"error": {"message": "  "}, "detail": "fallback detail"}, "fallback detail"),
        ({"unexpected": 1}, '{"unexpected": 1}'),
        (["a", "list"], '["a", "list"]'),
        ("  plain text \n", "plain text"),
        ("", "HTTP 503 with an empty body"),
        (None, "HTTP 503 with an empty body"),
    ],
)
def test_error_message_from_any_body(body: object, message: str) -> None:
    assert error_message(503, body) == message


def test_error_message_redacts_before_truncating() -> None:
    secret = "sk-test-" + "k" * 40
    # The secret straddles the truncation point: a cut first would leave part of it behind.
    body = {"error": {"message": "x" * 480 + secret}}

    message = error_message(400, body, secret=secret)

    assert "sk-test-" not in message
    assert message == "x" * 480 + "***"


def test_provider_error_str_with_and_without_status() -> None:
    assert str(ProviderError("openai", "cannot connect")) == "openai: cannot connect"
    assert str(ProviderError("openai", "no", status_code=418)) == "openai (HTTP 418): no"


def test_status_hint_is_added_once() -> None:
    added = provider_error_for_status("anthropic", 401, "invalid x-api-key")
    already_there = provider_error_for_status("anthropic", 529, "busy (provider overloaded)")
    no_hint = provider_error_for_status("anthropic", 502, "bad gateway")

    assert str(added) == (
        "anthropic (HTTP 401): invalid x-api-key (the API key was refused; check ANTHROPIC_API_KEY)"
    )
    assert str(already_there) == "anthropic (HTTP 529): busy (provider overloaded)"
    assert str(no_hint) == "anthropic (HTTP 502): bad gateway"


@pytest.mark.parametrize(
    ("provider", "key"),
    [
        ("anthropic", "ANTHROPIC_API_KEY"),
        ("openai", "CODITECT_OPENAI_API_KEY"),
        ("agent reviewer-service endpoint", "the agent endpoint's credentials"),
    ],
)
def test_a_refused_key_names_the_key_of_the_provider_that_refused_it(provider: str, key: str) -> None:
    err = provider_error_for_status(provider, 401, "unauthorized")

    assert str(err) == f"{provider} (HTTP 401): unauthorized (the API key was refused; check {key})"


def test_transient_error_str_and_fields() -> None:
    err = TransientProviderError("anthropic", "request timed out after 2 s", retry_after_s=5.0)

    assert str(err) == "anthropic: request timed out after 2 s"
    assert (err.provider, err.message, err.status_code, err.retry_after_s) == (
        "anthropic",
        "request timed out after 2 s",
        None,
        5.0,
    )


@pytest.mark.parametrize(
    ("source", "field", "text"),
    [
        ("batch.json", "tasks[3].id", "batch.json: tasks[3].id: must match the pattern"),
        ("batch.json", "", "batch.json: must match the pattern"),
        ("", "tasks[3].id", "tasks[3].id: must match the pattern"),
        ("", "", "must match the pattern"),
    ],
)
def test_task_input_error_str(source: str, field: str, text: str) -> None:
    err = TaskInputError("must match the pattern", source=source, field=field)

    assert str(err) == text
    assert err.message == "must match the pattern"


def test_script_error_str_carries_the_stderr_tail() -> None:
    with_stderr = ScriptError("execute_review.py", 3, "Traceback ...\n" + "y" * 3000 + "\nValueError: bad\n")
    silent = ScriptError("execute_review.py", 1, "  \n")

    text = str(with_stderr)
    assert text.startswith("script execute_review.py exited with code 3: ")
    assert text.endswith("ValueError: bad")
    assert len(text) == len("script execute_review.py exited with code 3: ") + 2000
    assert str(silent) == "script execute_review.py exited with code 1"
    assert with_stderr.exit_code == 3


def test_plain_errors_str_is_their_message() -> None:
    assert str(ConfigurationError("no key")) == "no key"
    assert str(BackendUnavailableError("cannot reach redis://127.0.0.1:6390/0")) == (
        "cannot reach redis://127.0.0.1:6390/0"
    )


def test_capacity_deferred_says_for_what_and_how_long() -> None:
    err = CapacityDeferred(2.5, provider="anthropic", model="claude-sonnet-4-5")

    assert isinstance(err, CoditectError)
    assert not isinstance(err, ProviderError)
    assert (err.delay_s, err.provider, err.model) == (2.5, "anthropic", "claude-sonnet-4-5")
    assert (
        str(err) == "no rate-limit capacity for anthropic/claude-sonnet-4-5 for 2.500 s; run again after it"
    )
    assert str(CapacityDeferred(0.25)) == "no rate-limit capacity for 0.250 s; run again after it"
    assert "CapacityDeferred" in (errors_module.__doc__ or "")


def test_budget_deferred_is_a_deferral_that_says_it_waits_for_the_budget() -> None:
    err = BudgetDeferred(1.0)

    assert isinstance(err, CapacityDeferred)
    assert err.delay_s == 1.0
    assert str(err) == "no room in the batch's budget until its running tasks settle; run again after 1.000 s"
    assert (err.waiting_for, CapacityDeferred(1.0).waiting_for) == ("its batch's budget", "capacity")
    assert "BudgetDeferred" in (errors_module.__doc__ or "")
