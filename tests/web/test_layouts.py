"""What the pages are built from: the graph layout, the task tree, the charts, the formatting."""

from __future__ import annotations

from datetime import UTC, datetime

from coditect.client.batches import BatchSummary
from coditect.models import AgentTask
from coditect.web.batch_rows import batch_row
from coditect.web.charts import HEIGHT, bar_chart
from coditect.web.formatting import ago, duration, moment, money, token_pair, tokens
from coditect.web.graph import COLUMN_GAP, MAX_NODES, NODE_HEIGHT, NODE_WIDTH, PADDING, ROW_GAP, layout
from coditect.web.reads import Parent
from coditect.web.task_rows import tree_order


def task(task_id: str, *deps: str) -> AgentTask:
    return AgentTask(id=task_id, title=f"title of {task_id}", depends_on=list(deps))


def test_the_graph_puts_each_task_one_column_right_of_its_deepest_dependency() -> None:
    tasks = [task("a"), task("b"), task("c", "a"), task("d", "a", "c"), task("e", "b")]
    graph = layout(tasks, {"a": "success", "c": "running"})
    assert graph is not None
    where = {node.id: (node.x, node.y) for node in graph.nodes}
    column = NODE_WIDTH + COLUMN_GAP
    row = NODE_HEIGHT + ROW_GAP
    assert where == {
        "a": (PADDING, PADDING),
        "b": (PADDING, PADDING + row),
        "c": (PADDING + column, PADDING),
        "e": (PADDING + column, PADDING + row),
        "d": (PADDING + 2 * column, PADDING),
    }
    assert {(edge.source, edge.target) for edge in graph.edges} == {
        ("a", "c"),
        ("a", "d"),
        ("c", "d"),
        ("b", "e"),
    }
    edge = next(edge for edge in graph.edges if (edge.source, edge.target) == ("a", "c"))
    assert edge.path.startswith(f"M{PADDING + NODE_WIDTH} {PADDING + NODE_HEIGHT // 2} C")
    assert edge.path.endswith(f"{PADDING + column} {PADDING + NODE_HEIGHT // 2}")
    assert {node.id: node.status for node in graph.nodes}["c"] == "running"
    assert {node.id: node.status for node in graph.nodes}["e"] == "pending"
    assert (graph.width, graph.height) == (
        2 * PADDING + 3 * NODE_WIDTH + 2 * COLUMN_GAP,
        2 * PADDING + 2 * NODE_HEIGHT + ROW_GAP,
    )


def test_the_graph_labels_long_ids_and_keeps_titles_for_tooltips() -> None:
    graph = layout([task("a-very-long-task-identifier-indeed")], {})
    assert graph is not None
    (node,) = graph.nodes
    assert node.label == "a-very-long-task-id…"
    assert node.title == "title of a-very-long-task-identifier-indeed"


def test_no_graph_when_empty_too_big_or_inconsistent() -> None:
    assert layout([], {}) is None
    assert layout([task(f"t{i}") for i in range(MAX_NODES + 1)], {}) is None
    assert layout([task("a", "missing")], {}) is None


def test_children_come_right_after_their_parent_in_order() -> None:
    order = ["a", "b", "c", "a.1", "b.1", "a.2", "a.1.1", "x.1"]
    parents = {
        "a.1": Parent("a", 1),
        "a.2": Parent("a", 1),
        "b.1": Parent("b", 1),
        "a.1.1": Parent("a.1", 2),
        "x.1": Parent("x", 1),  # its parent is not in the batch: listed as a root
    }
    assert tree_order(order, parents) == ["a", "a.1", "a.1.1", "a.2", "b", "b.1", "c", "x.1"]


def test_a_bar_chart_stacks_kinds_and_scales_to_the_busiest_minute() -> None:
    minutes = [0, 60_000, 120_000]
    chart = bar_chart(minutes, [("succeeded", [2.0, 0.0, 4.0]), ("failed", [2.0, 0.0, 0.0])], unit=" tasks")
    assert chart.top_label == "4 tasks"
    assert (chart.first_label, chart.last_label) == ("00:00", "00:02")
    assert not chart.empty
    assert [(bar.kind, round(bar.height, 1)) for bar in chart.bars] == [
        ("succeeded", 66.0), ("failed", 66.0), ("succeeded", 132.0),
    ]  # fmt: skip
    first, second = chart.bars[0], chart.bars[1]
    assert first.y + first.height == chart.baseline == HEIGHT - 20
    assert second.y + second.height == first.y  # stacked on top
    assert first.tip == "00:00 UTC: 2 tasks succeeded"
    empty = bar_chart(minutes, [("cost", [0.0, 0.0, 0.0])], empty_label="nothing")
    assert empty.bars == []
    assert empty.empty == "nothing"


def test_formatting() -> None:
    assert duration(None) == "-"
    assert duration(0.5) == "0.50 s"
    assert duration(75) == "1m15s"
    assert money(None) == "-"
    assert money(0.00012) == "$0.000120"
    assert money(1234.5) == "$1,234.50"
    assert moment(None) == "-"
    assert moment(datetime(2026, 1, 2, 3, 4, 5, tzinfo=UTC)) == "2026-01-02 03:04:05"
    assert ago(1_000, 4_250) == "3.2 s ago"
    assert ago(5_000, 4_000) == "0.0 s ago"
    assert tokens(0) == "-"
    assert tokens(12345.0) == "12,345"
    assert token_pair(0, 0) == "-"
    assert token_pair(1234, 5) == "1,234 + 5"


def summary(**fields: object) -> BatchSummary:
    values: dict[str, object] = {
        "id": "b-1",
        "name": "n",
        "total": 4,
        "counts": {
            "pending": 0,
            "queued": 0,
            "running": 0,
            "success": 3,
            "failed": 1,
            "timeout": 0,
            "cancelled": 0,
        },
        "created_at": datetime(2026, 1, 1, tzinfo=UTC),
        "finished_at": datetime(2026, 1, 1, 0, 0, 3, tzinfo=UTC),
        "cancelled": None,
        "totals": {"in": 100.0, "out": 20.0, "cost": 0.5, "unpriced": 0.0},
    }
    values.update(fields)
    return BatchSummary(**values)  # type: ignore[arg-type]


def test_a_batch_row() -> None:
    row = batch_row(summary())
    assert (row.state, row.done, row.total, row.duration, row.tokens, row.cost) == (
        "finished", 4, 4, "3.00 s", "120", "$0.500",
    )  # fmt: skip
    assert row.rerunnable
    assert batch_row(summary(totals={"cost": 0.5, "unpriced": 2.0})).cost == "$0.500 + 2 unpriced"
    assert batch_row(summary(totals={"cost": 0.0, "unpriced": 4.0})).cost == "no price"
    running = batch_row(summary(finished_at=None, cancelled="cancelled by user"))
    assert (running.state, running.duration, running.rerunnable) == ("cancelling", "-", False)
    assert batch_row(summary(cancelled="cancelled by user")).state == "cancelled"
    every = {"pending": 0, "queued": 0, "running": 0, "success": 4, "failed": 0, "timeout": 0, "cancelled": 0}
    assert not batch_row(summary(counts=every)).rerunnable
    assert batch_row(summary(fields={"rerun_of": "b-0"})).rerun_of == "b-0"
