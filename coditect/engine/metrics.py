"""Prometheus metrics of one worker process, with the official ``prometheus_client``.

``WorkerMetrics`` owns its own registry (no global state: a process or a test may hold several). The
engine tells it what happened; ``serve(port)`` exposes ``/metrics`` over HTTP until ``close()``::

    coditect_tasks_total{status, agent, provider, model}          tasks that ended, by final status
    coditect_task_duration_seconds{agent, status}                 histogram of task durations
    coditect_task_retries_total{agent}                            attempts that will be retried
    coditect_tokens_total{kind, provider, model}                  input, output, cache_read, cache_write
    coditect_cost_usd_total{provider, model}                      what the tasks cost
    coditect_tasks_unpriced_total{provider, model}                tasks whose model has no price
    coditect_queue_depth                                          tasks waiting in the queue
    coditect_tasks_in_flight                                      tasks this worker is running
    coditect_rate_limit_wait_seconds_total{provider, model}       time spent waiting for capacity
    coditect_rate_limit_deferrals_total{provider, model}          tasks sent back to wait for capacity
    coditect_rate_limit_deferred_seconds_total{provider, model}   ... and for how long in all
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest, start_http_server

from coditect.models import ExecutionResult

__all__ = ["DURATION_BUCKETS_S", "MetricsServer", "WorkerMetrics"]

# LLM tasks take from milliseconds (cached, offline) to minutes (long generations).
DURATION_BUCKETS_S = (0.01, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0, 120.0, 300.0, 600.0)
TOKEN_KINDS = ("input", "output", "cache_read", "cache_write")


@dataclass
class MetricsServer:
    """A running ``/metrics`` endpoint; ``close()`` stops it and frees its port."""

    host: str
    port: int
    _server: WSGIServer
    _thread: threading.Thread

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(timeout=5)

    def __enter__(self) -> MetricsServer:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()


class WorkerMetrics:
    """The counters, histograms and gauges of one worker, in a registry of their own."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry or CollectorRegistry()
        r = self.registry
        by_model = ("provider", "model")
        self.tasks = Counter(
            "coditect_tasks", "Tasks that ended, by final status.", ("status", "agent", *by_model), registry=r
        )
        self.task_duration = Histogram(
            "coditect_task_duration_seconds",
            "How long tasks ran.",
            ("agent", "status"),
            buckets=DURATION_BUCKETS_S,
            registry=r,
        )
        self.retries = Counter(
            "coditect_task_retries", "Attempts that will be retried.", ("agent",), registry=r
        )
        self.tokens = Counter("coditect_tokens", "Tokens by kind.", ("kind", *by_model), registry=r)
        self.cost = Counter("coditect_cost_usd", "What the tasks cost, in US dollars.", by_model, registry=r)
        self.unpriced = Counter(
            "coditect_tasks_unpriced", "Tasks whose model has no known price.", by_model, registry=r
        )
        self.queue_depth = Gauge("coditect_queue_depth", "Tasks waiting in the queue.", registry=r)
        self.in_flight = Gauge("coditect_tasks_in_flight", "Tasks this worker is running.", registry=r)
        self.capacity_wait = Counter(
            "coditect_rate_limit_wait_seconds",
            "Time tasks waited for rate-limit capacity.",
            by_model,
            registry=r,
        )
        self.deferrals = Counter(
            "coditect_rate_limit_deferrals",
            "Tasks sent back to the queue to wait for capacity.",
            by_model,
            registry=r,
        )
        self.deferred = Counter(
            "coditect_rate_limit_deferred_seconds",
            "How long deferred tasks were sent away for.",
            by_model,
            registry=r,
        )

    def task_finished(self, result: ExecutionResult) -> None:
        """Count a task that ended (success, failed, timeout or cancelled), its tokens and its cost."""
        provider, model = result.provider or "", result.model or ""
        self.tasks.labels(result.status.value, result.agent, provider, model).inc()
        self.task_duration.labels(result.agent, result.status.value).observe(result.duration_s)
        usage = result.usage
        counts = (usage.input_tokens, usage.output_tokens, usage.cache_read_tokens, usage.cache_write_tokens)
        for kind, count in zip(TOKEN_KINDS, counts, strict=True):
            if count:
                self.tokens.labels(kind, provider, model).inc(count)
        if result.cost_usd is not None:
            self.cost.labels(provider, model).inc(result.cost_usd)
        elif result.usage.total_tokens:
            self.unpriced.labels(provider, model).inc()

    def task_retried(self, agent: str) -> None:
        self.retries.labels(agent).inc()

    def rate_limit_wait(self, provider: str, model: str, seconds: float) -> None:
        """A task waited ``seconds`` for capacity (``call_with_capacity``'s ``on_wait``)."""
        self.capacity_wait.labels(provider, model).inc(max(seconds, 0.0))

    def rate_limit_deferred(self, provider: str, model: str, delay_s: float) -> None:
        """A task went back to the queue for ``delay_s`` (``CapacityDeferred``)."""
        self.deferrals.labels(provider, model).inc()
        self.deferred.labels(provider, model).inc(max(delay_s, 0.0))

    def set_queue_depth(self, depth: int) -> None:
        self.queue_depth.set(depth)

    def set_in_flight(self, count: int) -> None:
        self.in_flight.set(count)

    def render(self) -> bytes:
        """The metrics in Prometheus's text format."""
        return generate_latest(self.registry)

    def serve(self, port: int, host: str = "0.0.0.0") -> MetricsServer:
        """Serve ``/metrics`` on ``host:port`` (0: a free port) from a background thread."""
        server, thread = start_http_server(port, addr=host, registry=self.registry)
        return MetricsServer(host, int(server.server_port), server, thread)
