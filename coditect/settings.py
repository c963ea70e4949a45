"""Settings from the environment (prefix ``CODITECT_``) and an optional ``.env`` file."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import AliasChoices, Field, SecretStr
from pydantic_settings import BaseSettings, SettingsConfigDict

__all__ = ["Settings"]

ProviderChoice = Literal["offline", "anthropic", "openai"]


class Settings(BaseSettings):
    """Every knob coditect has. Secrets are ``SecretStr``: never printed, never serialised."""

    model_config = SettingsConfigDict(
        env_prefix="CODITECT_", env_file=".env", env_file_encoding="utf-8", extra="ignore"
    )

    # Queue and Redis
    redis_url: str = Field(default="", description="Empty: embedded in-process Redis (fakeredis).")
    redis_tls_ca_file: Path | None = Field(
        default=None, description="CA bundle that signs the rediss:// server."
    )
    queue_name: str = Field(default="coditect:queue", min_length=1, max_length=200)
    max_jobs: int = Field(default=100, ge=1, le=100_000, description="Tasks one worker runs at once.")
    job_timeout_s: float = Field(default=300.0, gt=0, le=86_400, description="Hard limit for one attempt.")
    max_tries: int = Field(default=5, ge=1, le=100, description="Attempts per task, crashes included.")
    keep_result_s: int = Field(default=86_400, ge=1, description="How long results stay readable.")
    poll_interval_s: float = Field(default=0.05, gt=0, le=5, description="Worker and waiter poll interval.")
    retry_backoff_s: float = Field(default=1.0, ge=0, le=300, description="First retry delay; doubles.")
    retry_backoff_max_s: float = Field(default=60.0, ge=0, le=3600)
    lease_s: float = Field(default=10.0, ge=1, le=3600, description="A dead worker's jobs rerun after this.")
    shutdown_grace_s: int = Field(default=10, ge=0, le=3600, description="On SIGTERM, time to finish tasks.")
    health_check_interval_s: int = Field(default=60, ge=1)
    embedded_workers: int = Field(default=1, ge=1, le=64, description="In-process workers in embedded mode.")
    events_max_len: int = Field(
        default=100_000, ge=100, le=100_000_000, description="Events kept per stream (each batch's, and all)."
    )
    max_delegation_depth: int = Field(
        default=3, ge=0, le=20, description="How deep python agents may delegate (children of children...)."
    )
    schedule_file: Path | None = Field(default=None, description="JSON or TOML file of scheduled batches.")

    # LLM providers
    llm_provider: ProviderChoice | None = Field(
        default=None, description="Default: anthropic when ANTHROPIC_API_KEY is set, else offline."
    )
    llm_model: str = Field(default="", description="Empty: the provider's default model.")
    llm_timeout_s: float = Field(default=60.0, gt=0, le=3600, description="One provider request.")
    llm_max_tokens: int = Field(default=1024, ge=1, le=128_000)
    anthropic_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("ANTHROPIC_API_KEY", "CODITECT_ANTHROPIC_API_KEY")
    )
    anthropic_base_url: str | None = Field(default=None, description="Default: the SDK's own.")
    openai_base_url: str = "http://localhost:8000/v1"
    openai_api_key: SecretStr | None = Field(
        default=None, validation_alias=AliasChoices("CODITECT_OPENAI_API_KEY", "OPENAI_API_KEY")
    )
    offline_latency_s: float = Field(default=0.0, ge=0, le=3600)

    # Executor
    use_direct_llm: bool = Field(default=True, description="False: run agents' legacy scripts instead.")
    scripts_dir: Path = Path("scripts")
    script_output_limit_bytes: int = Field(default=1_048_576, ge=1024)
    agents_file: Path | None = Field(default=None, description="JSON or TOML file defining agents.")
    worker_name: str = Field(default="", description="Empty: host:pid.")

    # Logging
    log_format: Literal["text", "json"] = Field(
        default="text", description="json: one JSON object per log line, with the job's fields."
    )

    # Capacity, cost and metrics
    limits_file: Path | None = Field(
        default=None, description="JSON or TOML rate limits per provider and model, shared by all workers."
    )
    rate_limit_horizon_s: float = Field(
        default=5.0,
        ge=0,
        le=300,
        description="Capacity freeing within this is waited for; a longer wait goes back to the queue.",
    )
    prices_file: Path | None = Field(
        default=None, description="JSON or TOML prices per model, added to or overriding the defaults."
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65_535, description="Serve Prometheus metrics from workers on this port."
    )

    # Dashboard
    dashboard_token: SecretStr | None = Field(
        default=None,
        description="Required to serve the dashboard beyond 127.0.0.1; checked on every request when set.",
    )

    @property
    def provider(self) -> ProviderChoice:
        """The provider used when an agent names none."""
        if self.llm_provider is not None:
            return self.llm_provider
        key = self.anthropic_api_key
        return "anthropic" if key is not None and key.get_secret_value() else "offline"

    @property
    def embedded(self) -> bool:
        return not self.redis_url
