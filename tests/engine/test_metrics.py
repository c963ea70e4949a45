"""WorkerMetrics: what the engine reports, scraped over HTTP from its own /metrics endpoint."""

from __future__ import annotations

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from coditect.engine.metrics import WorkerMetrics
from coditect.models import ExecutionResult, ExecutionStatus, TokenUsage


def result(status: ExecutionStatus, **fields: object) -> ExecutionResult:
    defaults: dict[str, object] = {"task_id": "t1", "agent": "writer", "mode": "llm", "duration_s": 0.4}
    return ExecutionResult.model_validate({"status": status, **defaults, **fields})


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    """Every sample of a scrape by name and sorted labels."""
    return {
        (sample.name, tuple(sorted(sample.labels.items()))): sample.value
        for family in text_string_to_metric_families(text)
        for sample in family.samples
    }


def scrape(metrics: WorkerMetrics) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    with metrics.serve(0, host="127.0.0.1") as server:
        response = httpx.get(f"http://127.0.0.1:{server.port}/metrics", timeout=5)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    return samples(response.text)


def labels(**values: str) -> tuple[tuple[str, str], ...]:
    return tuple(sorted(values.items()))


def test_finished_tasks_count_status_tokens_cost_and_duration() -> None:
    metrics = WorkerMetrics()
    usage = TokenUsage(input_tokens=100, output_tokens=20, cache_read_tokens=1000, cache_write_tokens=5)
    claude = {"provider": "anthropic", "model": "claude-sonnet-4-5"}

    metrics.task_finished(result(ExecutionStatus.SUCCESS, usage=usage, cost_usd=0.0123, **claude))
    metrics.task_finished(
        result(ExecutionStatus.SUCCESS, usage=usage, cost_usd=0.0100, duration_s=3.0, **claude)
    )
    metrics.task_finished(result(ExecutionStatus.TIMEOUT, agent="coder", duration_s=60.0))
    metrics.task_finished(result(ExecutionStatus.FAILED, usage=usage, provider="openai", model="llama"))

    got = scrape(metrics)

    tasks = labels(status="success", agent="writer", **claude)
    assert got[("coditect_tasks_total", tasks)] == 2
    assert got[("coditect_tasks_total", labels(status="timeout", agent="coder", provider="", model=""))] == 1
    for kind, count in (("input", 200), ("output", 40), ("cache_read", 2000), ("cache_write", 10)):
        assert got[("coditect_tokens_total", labels(kind=kind, **claude))] == count
    assert got[("coditect_cost_usd_total", labels(**claude))] == pytest.approx(0.0223)
    assert got[("coditect_tasks_unpriced_total", labels(provider="openai", model="llama"))] == 1
    assert ("coditect_tasks_unpriced_total", labels(provider="", model="")) not in got  # no tokens, no cost
    writer = labels(agent="writer", status="success")
    assert got[("coditect_task_duration_seconds_count", writer)] == 2
    assert got[("coditect_task_duration_seconds_sum", writer)] == pytest.approx(3.4)
    assert (
        got[("coditect_task_duration_seconds_bucket", labels(agent="writer", status="success", le="0.5"))]
        == 1
    )
    assert (
        got[("coditect_task_duration_seconds_bucket", labels(agent="writer", status="success", le="5.0"))]
        == 2
    )


def test_retries_gauges_and_rate_limit_waits() -> None:
    metrics = WorkerMetrics()
    claude = labels(provider="anthropic", model="claude-sonnet-4-5")

    metrics.task_retried("writer")
    metrics.task_retried("writer")
    metrics.set_queue_depth(42)
    metrics.set_in_flight(7)
    metrics.set_in_flight(5)
    metrics.rate_limit_wait("anthropic", "claude-sonnet-4-5", 0.25)
    metrics.rate_limit_wait("anthropic", "claude-sonnet-4-5", 1.5)
    metrics.rate_limit_deferred("anthropic", "claude-sonnet-4-5", 12.0)

    got = scrape(metrics)

    assert got[("coditect_task_retries_total", labels(agent="writer"))] == 2
    assert got[("coditect_queue_depth", ())] == 42
    assert got[("coditect_tasks_in_flight", ())] == 5
    assert got[("coditect_rate_limit_wait_seconds_total", claude)] == 1.75
    assert got[("coditect_rate_limit_deferrals_total", claude)] == 1
    assert got[("coditect_rate_limit_deferred_seconds_total", claude)] == 12.0


def test_each_instance_has_its_own_registry() -> None:
    first, second = WorkerMetrics(), WorkerMetrics()

    first.task_retried("writer")

    assert samples(first.render().decode())[("coditect_task_retries_total", labels(agent="writer"))] == 1
    assert ("coditect_task_retries_total", labels(agent="writer")) not in samples(second.render().decode())
    assert b"python_gc" not in first.render()  # the process collectors live in the global registry only


def test_a_closed_server_frees_its_port() -> None:
    metrics = WorkerMetrics()
    server = metrics.serve(0, host="127.0.0.1")
    url = f"http://127.0.0.1:{server.port}/metrics"
    assert httpx.get(url, timeout=5).status_code == 200

    server.close()

    with pytest.raises(httpx.ConnectError):
        httpx.get(url, timeout=5)
    metrics.serve(server.port, host="127.0.0.1").close()  # the port can be bound again
