"""Settings from CODITECT_* variables and a .env file; secrets that never leak."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from pydantic import SecretStr, ValidationError

from coditect.secrets import settings_secrets
from coditect.settings import Settings

SECRET = "sk-ant-test-0123456789-never-print-me"


def load() -> Settings:
    """Settings from the environment only (the autouse fixture chdirs into an empty tmp dir)."""
    return Settings(_env_file=None)


def test_defaults(settings: Settings) -> None:
    assert settings.redis_url == ""
    assert settings.embedded
    assert settings.queue_name == "coditect:queue"
    assert settings.llm_provider is None
    assert settings.provider == "offline"
    assert settings.llm_model == ""
    assert settings.offline_latency_s == 0
    assert settings.use_direct_llm is True
    assert settings.scripts_dir == Path("scripts")
    assert settings.max_jobs == 100
    assert settings.job_timeout_s == 300
    assert settings.max_tries == 5
    assert settings.anthropic_api_key is None
    assert settings.openai_api_key is None
    assert settings.agents_file is None
    assert settings.log_format == "text"
    assert settings.limits_file is None
    assert settings.prices_file is None
    assert settings.rate_limit_horizon_s == 5.0
    assert settings.metrics_port is None


ENV_CASES: list[tuple[str, str, str, Any]] = [
    ("CODITECT_REDIS_URL", "redis://localhost:6380/2", "redis_url", "redis://localhost:6380/2"),
    ("CODITECT_QUEUE_NAME", "my:queue", "queue_name", "my:queue"),
    ("CODITECT_LLM_PROVIDER", "openai", "llm_provider", "openai"),
    ("CODITECT_LLM_MODEL", "claude-x", "llm_model", "claude-x"),
    ("CODITECT_OFFLINE_LATENCY_S", "0.25", "offline_latency_s", 0.25),
    ("CODITECT_USE_DIRECT_LLM", "false", "use_direct_llm", False),
    ("CODITECT_USE_DIRECT_LLM", "0", "use_direct_llm", False),
    ("CODITECT_SCRIPTS_DIR", "/opt/agents", "scripts_dir", Path("/opt/agents")),
    ("CODITECT_MAX_JOBS", "7", "max_jobs", 7),
    ("CODITECT_JOB_TIMEOUT_S", "42.5", "job_timeout_s", 42.5),
    ("CODITECT_MAX_TRIES", "2", "max_tries", 2),
    ("CODITECT_KEEP_RESULT_S", "60", "keep_result_s", 60),
    ("CODITECT_POLL_INTERVAL_S", "0.5", "poll_interval_s", 0.5),
    ("CODITECT_RETRY_BACKOFF_S", "0.1", "retry_backoff_s", 0.1),
    ("CODITECT_RETRY_BACKOFF_MAX_S", "5", "retry_backoff_max_s", 5),
    ("CODITECT_EMBEDDED_WORKERS", "3", "embedded_workers", 3),
    ("CODITECT_LLM_TIMEOUT_S", "9", "llm_timeout_s", 9),
    ("CODITECT_LLM_MAX_TOKENS", "2048", "llm_max_tokens", 2048),
    ("CODITECT_ANTHROPIC_BASE_URL", "http://127.0.0.1:9/", "anthropic_base_url", "http://127.0.0.1:9/"),
    ("CODITECT_OPENAI_BASE_URL", "http://127.0.0.1:8/v1", "openai_base_url", "http://127.0.0.1:8/v1"),
    ("CODITECT_SCRIPT_OUTPUT_LIMIT_BYTES", "4096", "script_output_limit_bytes", 4096),
    ("CODITECT_AGENTS_FILE", "agents.toml", "agents_file", Path("agents.toml")),
    ("CODITECT_WORKER_NAME", "w1", "worker_name", "w1"),
    ("CODITECT_REDIS_TLS_CA_FILE", "/etc/ca.pem", "redis_tls_ca_file", Path("/etc/ca.pem")),
    ("CODITECT_HEALTH_CHECK_INTERVAL_S", "30", "health_check_interval_s", 30),
    ("CODITECT_LOG_FORMAT", "json", "log_format", "json"),
    ("CODITECT_LIMITS_FILE", "limits.toml", "limits_file", Path("limits.toml")),
    ("CODITECT_RATE_LIMIT_HORIZON_S", "2.5", "rate_limit_horizon_s", 2.5),
    ("CODITECT_PRICES_FILE", "prices.json", "prices_file", Path("prices.json")),
    ("CODITECT_METRICS_PORT", "9464", "metrics_port", 9464),
]
# Read from their own variable names; tested separately below.
SECRET_FIELDS = {"anthropic_api_key", "openai_api_key", "dashboard_token"}
TEXT_TYPES = (str, Path, str | None, Path | None)


@pytest.mark.parametrize(("variable", "value", "attribute", "expected"), ENV_CASES)
def test_variable_is_read_from_the_environment(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, attribute: str, expected: Any
) -> None:
    assert getattr(load(), attribute) != expected  # the default differs, so the variable is what counts
    monkeypatch.setenv(variable, value)

    assert getattr(load(), attribute) == expected


@pytest.mark.parametrize("name", sorted(set(Settings.model_fields) - SECRET_FIELDS))
def test_every_setting_is_read_from_its_coditect_variable(monkeypatch: pytest.MonkeyPatch, name: str) -> None:
    # Covers settings added after the table above: a text value is either taken as is (text and path
    # settings) or rejected naming the field (numbers, flags, choices); both prove the variable is read.
    monkeypatch.setenv(f"CODITECT_{name.upper()}", "not-a-number")

    if Settings.model_fields[name].annotation in TEXT_TYPES:
        assert str(getattr(load(), name)) == "not-a-number"
    else:
        with pytest.raises(ValidationError) as exc_info:
            load()
        assert [error["loc"][0] for error in exc_info.value.errors()] == [name]


def test_redis_url_switches_off_embedded_mode(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODITECT_REDIS_URL", "redis://localhost:6379/0")

    assert not load().embedded


def test_dotenv_file_in_the_working_directory_is_read() -> None:
    Path(".env").write_text(
        "CODITECT_QUEUE_NAME=from-dotenv\n"
        "CODITECT_MAX_JOBS=3\n"
        "CODITECT_USE_DIRECT_LLM=false\n"
        f"ANTHROPIC_API_KEY={SECRET}\n"
        "UNRELATED_VARIABLE=ignored\n",
        encoding="utf-8",
    )

    settings = Settings()

    assert settings.queue_name == "from-dotenv"
    assert settings.max_jobs == 3
    assert settings.use_direct_llm is False
    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == SECRET
    assert settings.provider == "anthropic"


def test_environment_overrides_dotenv(monkeypatch: pytest.MonkeyPatch) -> None:
    Path(".env").write_text("CODITECT_QUEUE_NAME=from-dotenv\nCODITECT_MAX_TRIES=9\n", encoding="utf-8")
    monkeypatch.setenv("CODITECT_QUEUE_NAME", "from-env")

    settings = Settings()

    assert settings.queue_name == "from-env"
    assert settings.max_tries == 9


def test_invalid_value_in_dotenv_names_the_field() -> None:
    Path(".env").write_text("CODITECT_MAX_TRIES=zero\n", encoding="utf-8")

    with pytest.raises(ValidationError) as exc_info:
        Settings()

    assert [error["loc"] for error in exc_info.value.errors()] == [("max_tries",)]


def test_anthropic_key_is_a_secret_that_never_appears(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)

    settings = load()

    assert isinstance(settings.anthropic_api_key, SecretStr)
    assert settings.anthropic_api_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in str(settings)
    assert SECRET not in settings.model_dump_json()
    assert SECRET not in str(settings.model_dump())


def test_anthropic_key_also_accepted_with_the_coditect_prefix(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODITECT_ANTHROPIC_API_KEY", SECRET)

    settings = load()

    assert settings.anthropic_api_key is not None
    assert settings.anthropic_api_key.get_secret_value() == SECRET


@pytest.mark.parametrize("variable", ["OPENAI_API_KEY", "CODITECT_OPENAI_API_KEY"])
def test_openai_key_is_a_secret_too(monkeypatch: pytest.MonkeyPatch, variable: str) -> None:
    monkeypatch.setenv(variable, SECRET)

    settings = load()

    assert settings.openai_api_key is not None
    assert settings.openai_api_key.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in settings.model_dump_json()


def test_the_dashboard_token_is_a_secret_too(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODITECT_DASHBOARD_TOKEN", SECRET)

    settings = load()

    assert settings.dashboard_token is not None
    assert settings.dashboard_token.get_secret_value() == SECRET
    assert SECRET not in repr(settings)
    assert SECRET not in settings.model_dump_json()
    assert SECRET in settings_secrets(settings)  # so logs mask it


def test_provider_defaults_to_offline_without_a_key(settings: Settings) -> None:
    assert settings.provider == "offline"


def test_provider_defaults_to_anthropic_with_a_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)

    assert load().provider == "anthropic"


def test_an_openai_key_alone_does_not_change_the_default(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENAI_API_KEY", SECRET)

    assert load().provider == "offline"


@pytest.mark.parametrize("explicit", ["offline", "openai", "anthropic"])
def test_explicit_provider_wins_over_the_key_rule(monkeypatch: pytest.MonkeyPatch, explicit: str) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", SECRET)
    monkeypatch.setenv("CODITECT_LLM_PROVIDER", explicit)

    assert load().provider == explicit


def test_an_empty_anthropic_key_counts_as_no_key(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ANTHROPIC_API_KEY", "")

    assert load().provider == "offline"


@pytest.mark.parametrize(
    ("variable", "value", "field"),
    [
        ("CODITECT_MAX_JOBS", "0", "max_jobs"),
        ("CODITECT_MAX_JOBS", "many", "max_jobs"),
        ("CODITECT_LLM_PROVIDER", "foo", "llm_provider"),
        ("CODITECT_OFFLINE_LATENCY_S", "-1", "offline_latency_s"),
        ("CODITECT_JOB_TIMEOUT_S", "0", "job_timeout_s"),
        ("CODITECT_MAX_TRIES", "0", "max_tries"),
        ("CODITECT_USE_DIRECT_LLM", "perhaps", "use_direct_llm"),
        ("CODITECT_QUEUE_NAME", "", "queue_name"),
        ("CODITECT_LOG_FORMAT", "xml", "log_format"),
        ("CODITECT_RATE_LIMIT_HORIZON_S", "-1", "rate_limit_horizon_s"),
        ("CODITECT_METRICS_PORT", "70000", "metrics_port"),
    ],
)
def test_invalid_value_raises_naming_the_field(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, field: str
) -> None:
    monkeypatch.setenv(variable, value)

    with pytest.raises(ValidationError) as exc_info:
        load()

    assert [error["loc"] for error in exc_info.value.errors()] == [(field,)]
    assert field in str(exc_info.value)


def test_unknown_coditect_variable_is_ignored(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("CODITECT_NOT_A_SETTING", "x")

    assert not hasattr(load(), "not_a_setting")
