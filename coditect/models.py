"""Task, agent and result models: the JSON that crosses every boundary (CLI, Redis, HTTP)."""

from __future__ import annotations

import uuid
from datetime import datetime
from enum import StrEnum
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, HttpUrl, Strict, model_validator

__all__ = [
    "AgentConfig",
    "AgentTask",
    "Budget",
    "ExecutionMode",
    "ExecutionResult",
    "ExecutionStatus",
    "TokenUsage",
]

# Task ids end up in Redis keys and file names: keep them to a safe alphabet.
TASK_ID_PATTERN = r"^[A-Za-z0-9_.:-]{1,128}$"
# Agent names become script file names (execute_<agent>.py): no path separators, no dots.
AGENT_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}$"
SCRIPT_NAME_PATTERN = r"^[A-Za-z0-9_-]{1,64}\.py$"
MAX_PROMPT_CHARS = 200_000

TaskId = Annotated[str, Field(pattern=TASK_ID_PATTERN)]
AgentName = Annotated[str, Field(pattern=AGENT_NAME_PATTERN)]
ExecutionMode = Literal["llm", "api", "script", "python"]
# A python agent's function: "package.module:function".
ENTRYPOINT_PATTERN = r"^[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*:[A-Za-z_][A-Za-z0-9_]*$"
ProviderName = Literal["offline", "anthropic", "openai"]


def new_task_id() -> str:
    return f"task-{uuid.uuid4().hex[:12]}"


class ExecutionStatus(StrEnum):
    """Where a task is in its life. The last four are final."""

    PENDING = "pending"
    QUEUED = "queued"
    RUNNING = "running"
    SUCCESS = "success"
    FAILED = "failed"
    TIMEOUT = "timeout"
    CANCELLED = "cancelled"

    @property
    def is_final(self) -> bool:
        return self in _FINAL_STATUSES


_FINAL_STATUSES = frozenset(
    {ExecutionStatus.SUCCESS, ExecutionStatus.FAILED, ExecutionStatus.TIMEOUT, ExecutionStatus.CANCELLED}
)


class TokenUsage(BaseModel):
    """Tokens a provider reported for one call (or the sum over calls).

    ``input_tokens`` counts the uncached input only, as Anthropic reports it; the prompt-cache
    reads and writes are counted apart because they are priced apart.
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    input_tokens: int = Field(default=0, ge=0)
    output_tokens: int = Field(default=0, ge=0)
    cache_read_tokens: int = Field(default=0, ge=0)
    cache_write_tokens: int = Field(default=0, ge=0)

    @property
    def total_tokens(self) -> int:
        return self.input_tokens + self.output_tokens + self.cache_read_tokens + self.cache_write_tokens

    def __add__(self, other: TokenUsage) -> TokenUsage:
        # Frozen: a sum with nothing is the other usage itself (a run's first model call, every task).
        if not other.total_tokens:
            return self
        if not self.total_tokens:
            return other
        return TokenUsage(
            input_tokens=self.input_tokens + other.input_tokens,
            output_tokens=self.output_tokens + other.output_tokens,
            cache_read_tokens=self.cache_read_tokens + other.cache_read_tokens,
            cache_write_tokens=self.cache_write_tokens + other.cache_write_tokens,
        )


class AgentTask(BaseModel):
    """One unit of work: which agent should do what."""

    model_config = ConfigDict(extra="forbid", str_strip_whitespace=True)

    id: TaskId = Field(default_factory=new_task_id)
    title: str = Field(min_length=1, max_length=500)
    description: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    agent: AgentName = "default"
    depends_on: list[TaskId] = Field(default_factory=list, max_length=1000)
    # Strict: a number in the JSON, not "10" or true (which lax mode would turn into 10.0 and 1.0).
    timeout_s: Annotated[float, Strict()] | None = Field(default=None, gt=0, le=86_400)
    metadata: dict[str, str | int | float | bool | None] = Field(default_factory=dict, max_length=100)

    @property
    def prompt(self) -> str:
        """The text sent to the agent: the title, then the description when there is one."""
        return f"{self.title}\n\n{self.description}" if self.description else self.title


class Budget(BaseModel):
    """What a batch may spend: US dollars and/or tokens (None: no limit of that kind)."""

    model_config = ConfigDict(extra="forbid", frozen=True, strict=True)

    budget_usd: float | None = Field(default=None, gt=0, allow_inf_nan=False)
    budget_tokens: int | None = Field(default=None, gt=0)

    def fields(self) -> dict[str, float | int]:
        """The batch record's fields for this budget."""
        values = {"budget_usd": self.budget_usd, "budget_tokens": self.budget_tokens}
        return {name: value for name, value in values.items() if value is not None}


class AgentConfig(BaseModel):
    """How an agent runs: its mode, provider, model and prompt, or its endpoint or script."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    name: AgentName
    mode: ExecutionMode = "llm"
    provider: ProviderName | None = None
    model: str | None = Field(default=None, min_length=1, max_length=200)
    system_prompt: str = Field(default="", max_length=MAX_PROMPT_CHARS)
    max_tokens: int | None = Field(
        default=None, ge=1, le=128_000, description="None: CODITECT_LLM_MAX_TOKENS."
    )
    timeout_s: float = Field(default=120.0, gt=0, le=86_400)
    endpoint: HttpUrl | None = None
    script: str | None = Field(default=None, pattern=SCRIPT_NAME_PATTERN)
    entrypoint: str | None = Field(
        default=None, pattern=ENTRYPOINT_PATTERN, description="python mode: package.module:function"
    )

    @model_validator(mode="after")
    def _mode_has_what_it_needs(self) -> AgentConfig:
        if self.mode == "python" and self.entrypoint is None:
            raise ValueError("mode 'python' needs an 'entrypoint' (package.module:function)")
        return self


class ExecutionResult(BaseModel):
    """The outcome of one task. A failure is a result too, never an exception."""

    model_config = ConfigDict(extra="forbid")

    task_id: str
    status: ExecutionStatus
    output: str = ""
    error: str | None = None
    agent: str = ""
    mode: str = ""
    provider: str | None = None
    model: str | None = None
    usage: TokenUsage = Field(default_factory=TokenUsage)
    cost_usd: float | None = Field(default=None, ge=0, description="None: a model without a known price.")
    attempts: int = Field(default=1, ge=0)
    started_at: datetime | None = None
    finished_at: datetime | None = None
    duration_s: float = Field(default=0.0, ge=0)
    worker: str | None = None
    # Set by the executor for transient provider failures and read by the job function in the same
    # process to decide a retry; not part of the result's JSON.
    retryable: bool = Field(default=False, exclude=True)
    retry_after_s: float | None = Field(default=None, ge=0, exclude=True)

    @property
    def succeeded(self) -> bool:
        return self.status is ExecutionStatus.SUCCESS

    def to_json_dict(self) -> dict[str, Any]:
        return self.model_dump(mode="json")
