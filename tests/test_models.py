"""The task, agent and result models: the JSON contract that crosses every boundary."""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta
from typing import Any

import pytest
from pydantic import ValidationError

from coditect.models import (
    MAX_PROMPT_CHARS,
    TASK_ID_PATTERN,
    AgentConfig,
    AgentTask,
    ExecutionResult,
    ExecutionStatus,
    TokenUsage,
)

CONTRACT_RESULT_KEYS = {
    "task_id",
    "status",
    "output",
    "error",
    "agent",
    "mode",
    "provider",
    "model",
    "usage",
    "cost_usd",
    "attempts",
    "started_at",
    "finished_at",
    "duration_s",
    "worker",
}


def error_locs(exc_info: pytest.ExceptionInfo[ValidationError]) -> list[tuple[str | int, ...]]:
    return [tuple(error["loc"]) for error in exc_info.value.errors()]


# --- JSON round trips -------------------------------------------------------------------------


def test_token_usage_round_trips_and_totals() -> None:
    usage = TokenUsage(input_tokens=12, output_tokens=30)

    assert TokenUsage.model_validate_json(usage.model_dump_json()) == usage
    assert usage.total_tokens == 42


def test_agent_task_round_trips_with_every_field() -> None:
    task = AgentTask(
        id="t1.a:b-c_d",
        title="Summarise the ADR",
        description="Keep it short.\nTwo paragraphs.",
        agent="writer",
        depends_on=["t0", "setup"],
        timeout_s=12.5,
        metadata={"owner": "docs", "priority": 3, "weight": 0.5, "urgent": True, "ticket": None},
    )

    again = AgentTask.model_validate_json(task.model_dump_json())

    assert again == task
    # Union members keep their JSON type: True stays a bool, 3 an int, 0.5 a float.
    assert type(again.metadata["urgent"]) is bool
    assert type(again.metadata["priority"]) is int
    assert type(again.metadata["weight"]) is float


def test_execution_result_round_trips_with_datetimes_and_usage() -> None:
    started = datetime(2024, 5, 17, 9, 30, 1, 123456, tzinfo=UTC)
    result = ExecutionResult(
        task_id="t1",
        status=ExecutionStatus.SUCCESS,
        output="done",
        agent="writer",
        mode="llm",
        provider="offline",
        model="offline-1",
        usage=TokenUsage(input_tokens=7, output_tokens=9),
        attempts=2,
        started_at=started,
        finished_at=started + timedelta(seconds=1, microseconds=500),
        duration_s=1.0005,
        worker="host:123",
        retryable=False,
    )

    again = ExecutionResult.model_validate_json(result.model_dump_json())

    assert again == result
    assert again.started_at == started
    assert again.started_at is not None
    assert again.started_at.utcoffset() == timedelta(0)
    assert again.usage == TokenUsage(input_tokens=7, output_tokens=9)
    assert again.status is ExecutionStatus.SUCCESS
    assert again.succeeded


def test_the_retry_hint_stays_in_process_and_out_of_the_json() -> None:
    result = ExecutionResult(
        task_id="t2", status="failed", error="api (HTTP 429): rate limited", retryable=True, retry_after_s=3
    )

    data = result.to_json_dict()
    again = ExecutionResult.model_validate_json(result.model_dump_json())

    assert "retryable" not in data
    assert "retry_after_s" not in data
    assert again == result.model_copy(update={"retryable": False, "retry_after_s": None})
    assert not again.succeeded


def test_result_json_has_the_contract_keys_and_lower_case_status() -> None:
    data = ExecutionResult(task_id="t1", status=ExecutionStatus.TIMEOUT).to_json_dict()

    assert set(data) == CONTRACT_RESULT_KEYS
    assert set(data["usage"]) == {
        "input_tokens",
        "output_tokens",
        "cache_read_tokens",
        "cache_write_tokens",
    }
    assert data["cost_usd"] is None
    assert data["status"] == "timeout"


def test_usage_adds_up_field_by_field() -> None:
    first = TokenUsage(input_tokens=10, output_tokens=2, cache_read_tokens=100, cache_write_tokens=5)
    second = TokenUsage(input_tokens=1, output_tokens=3, cache_write_tokens=7)

    total = first + second

    assert total == TokenUsage(input_tokens=11, output_tokens=5, cache_read_tokens=100, cache_write_tokens=12)
    assert total.total_tokens == 128


# --- ExecutionStatus ----------------------------------------------------------------------------


def test_status_values_are_the_lower_case_contract_strings() -> None:
    assert [status.value for status in ExecutionStatus] == [
        "pending",
        "queued",
        "running",
        "success",
        "failed",
        "timeout",
        "cancelled",
    ]
    assert ExecutionStatus("success") is ExecutionStatus.SUCCESS
    assert f"{ExecutionStatus.CANCELLED}" == "cancelled"


@pytest.mark.parametrize(
    ("status", "final"),
    [
        ("pending", False),
        ("queued", False),
        ("running", False),
        ("success", True),
        ("failed", True),
        ("timeout", True),
        ("cancelled", True),
    ],
)
def test_is_final(status: str, final: bool) -> None:
    assert ExecutionStatus(status).is_final is final


def test_result_rejects_an_unknown_or_upper_case_status() -> None:
    for bad in ("SUCCESS", "done"):
        with pytest.raises(ValidationError) as exc_info:
            ExecutionResult(task_id="t1", status=bad)
        assert error_locs(exc_info) == [("status",)]


# --- AgentTask defaults and prompt -----------------------------------------------------------------


def test_default_id_is_generated_valid_and_unique() -> None:
    ids = {AgentTask(title="x").id for _ in range(500)}

    assert len(ids) == 500
    assert all(re.fullmatch(TASK_ID_PATTERN, task_id) for task_id in ids)


def test_defaults() -> None:
    task = AgentTask(title="Hello")

    assert task.agent == "default"
    assert task.description == ""
    assert task.depends_on == []
    assert task.timeout_s is None
    assert task.metadata == {}


def test_prompt_is_title_then_description() -> None:
    assert AgentTask(title="Title", description="Body").prompt == "Title\n\nBody"


def test_prompt_is_the_title_alone_without_description() -> None:
    assert AgentTask(title="Only a title").prompt == "Only a title"


def test_title_whitespace_is_stripped() -> None:
    assert AgentTask(title="  padded  ").title == "padded"


# --- invalid input names the field ----------------------------------------------------------


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({}, "title", id="missing-title"),
        pytest.param({"title": ""}, "title", id="empty-title"),
        pytest.param({"title": "   \n\t "}, "title", id="whitespace-title"),
        pytest.param({"title": "x" * 501}, "title", id="long-title"),
        pytest.param({"title": "t", "id": "has space"}, "id", id="id-space"),
        pytest.param({"title": "t", "id": "a/b"}, "id", id="id-slash"),
        pytest.param({"title": "t", "id": "x" * 129}, "id", id="id-too-long"),
        pytest.param({"title": "t", "agent": "a/b"}, "agent", id="agent-slash"),
        pytest.param({"title": "t", "agent": ".."}, "agent", id="agent-dotdot"),
        pytest.param({"title": "t", "agent": "../etc"}, "agent", id="agent-traversal"),
        pytest.param({"title": "t", "description": "d" * (MAX_PROMPT_CHARS + 1)}, "description", id="desc"),
        pytest.param({"title": "t", "api_key": "sk-secret"}, "api_key", id="extra-api-key"),
        pytest.param({"title": "t", "timeout_s": -1}, "timeout_s", id="negative-timeout"),
        pytest.param({"title": "t", "timeout_s": 0}, "timeout_s", id="zero-timeout"),
        pytest.param({"title": "t", "depends_on": ["ok", "not ok"]}, "depends_on", id="bad-dependency"),
    ],
)
def test_invalid_task_names_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        AgentTask.model_validate(payload)

    assert [loc[0] for loc in error_locs(exc_info)] == [field]


def test_description_at_the_limit_is_accepted() -> None:
    assert len(AgentTask(title="t", description="d" * MAX_PROMPT_CHARS).description) == MAX_PROMPT_CHARS


def test_extra_field_is_reported_as_forbidden() -> None:
    with pytest.raises(ValidationError) as exc_info:
        AgentTask.model_validate_json('{"title": "t", "api_key": "sk-secret"}')

    assert exc_info.value.errors()[0]["type"] == "extra_forbidden"


def test_token_usage_rejects_negative_counts() -> None:
    with pytest.raises(ValidationError) as exc_info:
        TokenUsage(input_tokens=-1)

    assert error_locs(exc_info) == [("input_tokens",)]


# --- AgentConfig ------------------------------------------------------------------------------------


def test_agent_config_defaults() -> None:
    config = AgentConfig(name="writer")

    assert config.mode == "llm"
    assert config.provider is None
    assert config.endpoint is None
    assert config.script is None


@pytest.mark.parametrize(
    ("payload", "field"),
    [
        pytest.param({"name": "a", "script": "../x.py"}, "script", id="script-traversal"),
        pytest.param({"name": "a", "script": "x.sh"}, "script", id="script-not-py"),
        pytest.param({"name": "a/b"}, "name", id="name-slash"),
        pytest.param({"name": "a", "mode": "shell"}, "mode", id="mode"),
        pytest.param({"name": "a", "provider": "foo"}, "provider", id="provider"),
        pytest.param({"name": "a", "endpoint": "not a url"}, "endpoint", id="endpoint"),
        pytest.param({"name": "a", "max_tokens": 0}, "max_tokens", id="max-tokens"),
        pytest.param({"name": "a", "api_key": "sk"}, "api_key", id="extra"),
    ],
)
def test_invalid_agent_config_names_the_field(payload: dict[str, Any], field: str) -> None:
    with pytest.raises(ValidationError) as exc_info:
        AgentConfig.model_validate(payload)

    assert [loc[0] for loc in error_locs(exc_info)] == [field]


def test_agent_config_accepts_a_plain_script_name() -> None:
    assert AgentConfig(name="a", script="tool_name.py").script == "tool_name.py"
