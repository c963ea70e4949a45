"""Reading a batch's events as a waiter does (scan_events: raw XREAD replies, no Event objects)."""

from __future__ import annotations

from coditect.client.events import EventsRead, scan_events


def entry(entry_id: str, **fields: str) -> list[object]:
    return [entry_id.encode(), [part.encode() for pair in fields.items() for part in pair]]


def test_a_read_with_no_event_says_nothing() -> None:
    assert scan_events(None) == EventsRead()
    assert scan_events([]) == EventsRead()


def test_a_read_names_the_tasks_that_ended_and_what_the_batch_said_when_it_finished() -> None:
    reply = [
        [
            b"coditect:events:b",
            [
                entry("1-0", type="task.started", batch="b", task="a"),
                entry("1-1", type="task.succeeded", batch="b", task="a", attempt="1"),
                entry("2-0", type="task.cancelled", batch="b", task="c"),
                entry("2-1", type="task.failed", batch="b"),
                entry(
                    "3-0", type="batch.finished", batch="b", total="3", success="1", cancelled="1", failed="1"
                ),
            ],
        ]
    ]
    assert scan_events(reply) == EventsRead(last="3-0", final_tasks=["a", "c"], ended=3)


def test_a_read_before_the_end_has_no_count() -> None:
    reply = [[b"coditect:events:b", [entry("5-0", type="task.queued", batch="b", task="a")]]]
    assert scan_events(reply) == EventsRead(last="5-0")
