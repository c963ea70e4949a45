"""Secret masking: any run of 8+ characters of a known secret, passwords in every URL form, and the
results a provider's error echoes part of the key into."""

from __future__ import annotations

import random
import string
import time
from collections.abc import Iterator

import pytest
from pydantic import SecretStr

from coditect.execution.executor import TaskExecutor
from coditect.llm.http_errors import error_message, redact
from coditect.models import AgentTask, ExecutionResult, ExecutionStatus
from coditect.secrets import (
    MIN_RUN_CHARS,
    Redactor,
    redact_result,
    redact_secrets,
    register_secrets,
    registered_redactor,
    settings_secrets,
    url_passwords,
)
from coditect.settings import Settings
from tests.support.fake_provider import FakeProvider

# The shape of a real Anthropic key: 108 characters.
KEY = "sk-ant-api03-" + "".join(random.Random(7).choices(string.ascii_letters + string.digits + "_-", k=95))
OTHER = "local-server-key-" + "q" * 20 + "Z9"


def runs_of(secret: str, text: str) -> list[str]:
    """The 8-character pieces of ``secret`` that are still in ``text``."""
    n = MIN_RUN_CHARS
    return [secret[i : i + n] for i in range(len(secret) - n + 1) if secret[i : i + n] in text]


@pytest.mark.parametrize(
    "fragment",
    [
        pytest.param(KEY, id="whole"),
        pytest.param(KEY[:40], id="first-40"),
        pytest.param(KEY[-50:], id="last-50"),
        pytest.param(KEY[30:38], id="middle-8"),
    ],
)
def test_every_run_of_8_or_more_characters_of_a_secret_is_masked(fragment: str) -> None:
    redactor = Redactor([KEY, OTHER])
    text = f"key '{fragment}' was refused"
    assert redactor.redact_known(text) == "key '***' was refused"


def test_runs_shorter_than_8_and_other_text_are_left_alone() -> None:
    redactor = Redactor([KEY])
    text = f"{KEY[10:17]} is seven characters of the key; the rest is prose"
    assert redactor.redact_known(text) == text


def test_overlapping_and_separate_runs_of_several_secrets() -> None:
    redactor = Redactor([KEY, OTHER, None, ""])
    text = f"a {KEY[:20]}{OTHER[5:30]} b {KEY[60:70]} c {OTHER}"
    assert redactor.redact_known(text) == "a *** b *** c ***"


def test_secrets_shorter_than_8_are_left_to_the_patterns() -> None:
    redactor = Redactor(["redis"])
    assert redactor.redact("redis error at redis://:redis@host/0") == "redis error at redis://:***@host/0"


def test_redact_masks_patterns_then_known_runs() -> None:
    redactor = Redactor([OTHER])
    text = f"Bearer {OTHER} and {OTHER[:12]} and api_key=abcdef123"
    assert redactor.redact(text) == "Bearer *** and *** and api_key=***"


def test_a_redactor_without_secrets_changes_nothing_but_patterns() -> None:
    assert Redactor().redact_known(KEY[:40]) == KEY[:40]


def test_200_kb_of_text_is_redacted_quickly() -> None:
    rng = random.Random(1)
    words = ["".join(rng.choices(string.ascii_letters + string.digits + "_-", k=rng.randint(1, 14)))]
    words += ["".join(rng.choices(string.ascii_lowercase, k=rng.randint(1, 12))) for _ in range(30_000)]
    text = " ".join(words)[:100_000] + KEY[:40] + " ".join(words)[:100_000] + KEY[-50:]
    redactor = Redactor([KEY, OTHER, "p" * 30])
    started = time.perf_counter()
    masked = redactor.redact(text)
    elapsed = time.perf_counter() - started
    # About 0.05 s here: the bound catches a quadratic scan, not a busy machine.
    assert elapsed < 1.0, f"{elapsed:.3f} s"
    assert runs_of(KEY, masked) == []
    assert len(text) > 200_000


# -- URLs and settings --------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "passwords"),
    [
        ("redis://:s3cret-pass@h:6379/0", {"s3cret-pass"}),
        ("redis://user:p%40ss%2Fword@h/0", {"p%40ss%2Fword", "p@ss/word"}),
        ("redis://h:6379/0?password=query-pass", {"query-pass"}),
        ("redis://h/0?db=1&password=amp-pass&x=1", {"amp-pass"}),
        ("redis+sentinel://:sentinel-pass@s1:26379,s2/master/0", {"sentinel-pass"}),
        ("redis://h:6379/0", set()),
        ("", set()),
        ("redis://[::1/0?password=broken-url", {"broken-url"}),
        ("redis://h:6379/0?client_name=me@host", set()),
        ("redis://:pa/ss@h/0?password=both", {"pa/ss", "both"}),
    ],
)
def test_url_passwords(url: str, passwords: set[str]) -> None:
    assert set(url_passwords(url)) == passwords


def test_settings_secrets_are_the_keys_and_the_redis_passwords() -> None:
    settings = Settings(
        _env_file=None,  # type: ignore[call-arg]
        anthropic_api_key=SecretStr(KEY),
        openai_api_key=SecretStr(OTHER),
        redis_url="redis://h/0?password=query-pass",
    )
    assert set(settings_secrets(settings)) == {KEY, OTHER, "query-pass"}
    assert Redactor.from_settings(settings).redact_known(f"{KEY[:20]} {OTHER[-9:]}") == "*** ***"
    assert settings_secrets(Settings(_env_file=None)) == []  # type: ignore[call-arg]


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("at redis://h:6379/0?password=hunter22", "at redis://h:6379/0?password=***"),
        ("redis://h/0?db=2&password=hunter22&x=1", "redis://h/0?db=2&password=***&x=1"),
        ("GET https://user:tok3n@api.example/v1", "GET https://user:***@api.example/v1"),
    ],
)
def test_passwords_in_every_url_form_are_masked_by_pattern(text: str, expected: str) -> None:
    assert redact_secrets(text) == expected
    assert redact_secrets(expected) == expected


# -- results and provider errors ----------------------------------------------------------------


def test_redact_result_masks_known_secrets_in_the_output_and_anything_secret_in_the_error() -> None:
    result = ExecutionResult(
        task_id="t",
        status=ExecutionStatus.FAILED,
        output=f'echo {KEY[-50:]}; example: api_key="abcdef123"',
        error=f"refused {KEY[40:90]}, Bearer abcdefghij, {KEY}",
        retryable=True,
    )
    masked = redact_result(result, Redactor([KEY]))
    assert masked.output == 'echo ***; example: api_key="abcdef123"'  # the agent's answer, as written
    assert masked.error == "refused ***, Bearer ***, sk-ant-***"
    assert masked.retryable is True
    clean = ExecutionResult(task_id="t", status=ExecutionStatus.SUCCESS, output="fine")
    assert redact_result(clean, Redactor([KEY])) is clean


def test_a_provider_error_that_echoes_part_of_the_key_is_masked_before_truncation() -> None:
    assert redact(f"bad key {KEY[:40]}...", KEY) == "bad key ***..."
    message = error_message(401, {"error": {"message": "x" * 480 + KEY[-50:]}}, secret=KEY)
    assert message == "x" * 480 + "***"
    assert redact("short key abc refused", "abc") == "short key *** refused"  # whole, as before


@pytest.fixture
def server() -> Iterator[FakeProvider]:
    with FakeProvider() as fake:
        yield fake


def provider_settings(provider: str, server: FakeProvider) -> Settings:
    if provider == "anthropic":
        return Settings(
            _env_file=None,  # type: ignore[call-arg]
            llm_provider="anthropic",
            llm_model="claude-test",
            anthropic_api_key=SecretStr(KEY),
            anthropic_base_url=server.url,
        )
    return Settings(
        _env_file=None,  # type: ignore[call-arg]
        llm_provider="openai",
        openai_api_key=SecretStr(KEY),
        openai_base_url=f"{server.url}/v1",
    )


@pytest.mark.parametrize("provider", ["anthropic", "openai"])
@pytest.mark.parametrize(
    ("status", "fragment"),
    [
        pytest.param(401, KEY[:40], id="401-first-40"),
        pytest.param(401, KEY[-50:], id="401-last-50"),
        pytest.param(429, KEY[-50:], id="429-last-50"),
        pytest.param(500, f"{KEY[:40]} ... {KEY[-50:]}", id="500-both-ends"),
    ],
)
async def test_a_provider_error_echoing_part_of_the_key_ends_masked_in_the_result(
    server: FakeProvider, provider: str, status: int, fragment: str
) -> None:
    server.plan(status=status, message=f"invalid key {fragment} for this account")
    async with TaskExecutor(provider_settings(provider, server)) as executor:
        result = await executor.execute(AgentTask(id="t", title="hello"))

    assert result.status is ExecutionStatus.FAILED
    assert result.error is not None
    assert f"invalid key {'*** ... ***' if status == 500 else '***'} for this account" in result.error
    assert runs_of(KEY, result.error) == []
    assert runs_of(KEY, result.model_dump_json()) == []
    assert len(server.requests) == 1


async def test_an_output_echoing_part_of_the_key_is_masked_in_the_result(server: FakeProvider) -> None:
    async with TaskExecutor(provider_settings("openai", server)) as executor:
        # The fake provider answers with the prompt: here, the last 50 characters of the key.
        result = await executor.execute(AgentTask(id="t", title=f"repeat {KEY[-50:]}"))

    assert result.status is ExecutionStatus.SUCCESS
    assert result.output == "echo: repeat ***"


def test_the_executor_registers_its_secrets_for_the_log_filter() -> None:
    key = "sk-registered-" + "r" * 30
    assert registered_redactor().redact_known(key[:20]) == key[:20]
    TaskExecutor(Settings(_env_file=None, openai_api_key=SecretStr(key)))  # type: ignore[call-arg]
    assert registered_redactor().redact_known(f"x {key[:20]} y") == "x *** y"
    register_secrets([key])  # again: nothing changes
    assert registered_redactor().redact_known(key) == "***"


def test_redact_secrets_skips_only_text_no_pattern_can_match() -> None:
    """The quick look for "sk-", "://" and the patterns' words answers as the eight patterns would,
    with the regex engine's case rules (the long s matches 's', the Kelvin sign 'k')."""
    import coditect.secrets as module

    def every_pattern(text: str) -> str:
        for pattern, replacement in module._SECRET_PATTERNS:
            text = pattern.sub(replacement, text)
        return text

    pieces = [
        "sk-", "ant-", "a" * 24, "://", "redis", "u:", "pw@", "BEARER ", "Bearer\t", "\u017f", "\u212a",
        "\u0130", "api", "AP\u0130", "_key", "-key", "=", ":", "'", '"', " ", "?", "&", "password=",
        "PA\u017f\u017fWORD=", "x-", "abcdefgh12345678", "***", "/", "@",
    ]  # fmt: skip
    rng = random.Random(7)
    for _ in range(20_000):
        text = "".join(rng.choice(pieces) for _ in range(rng.randint(1, 12)))
        assert redact_secrets(text) == every_pattern(text), text
    assert redact_secrets("  0.00s → coditect:b:t1:execute_task({'id': 't1'})") == (
        "  0.00s → coditect:b:t1:execute_task({'id': 't1'})"
    )
