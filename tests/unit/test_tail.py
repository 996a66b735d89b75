"""The pieces of ``sessiond tail`` that need no server: the event-stream
parser and the progress bars (tests/e2e/test_tail.py runs the whole command)."""

from __future__ import annotations

import io
from typing import Any

from rich.console import Console

from service.cli.tail import TaskBars, default_url
from service.client.stream import Comment, EventStreamParser, Message


def parse(text: str) -> list[Message | Comment]:
    parser = EventStreamParser()
    found = [parser.line(line) for line in text.split("\n")]
    return [item for item in found if item is not None]


def test_the_parser_reads_messages_comments_and_ids_as_the_format_says() -> None:
    stream = (
        ": session s after 0\n\n"
        'id: 1\nevent: SessionCreated\ndata: {"a": 1}\n\n'
        ": ping\n\n"
        "id:2\nevent:MessageRecorded\ndata: first\ndata:  second\nretry: 10\nunknown: x\n\n"
        "data: no id, no event\n\n"
        "id: 3\n\n"  # no data: nothing is dispatched
        ": end session_ended\n"
    )
    assert parse(stream) == [
        Comment("session s after 0"),
        Message("SessionCreated", '{"a": 1}', "1"),
        Comment("ping"),
        Message("MessageRecorded", "first\n second", "2"),
        Message("message", "no id, no event", "2"),
        Comment("end session_ended"),
    ]


def event(position: int, kind: str, **data: Any) -> dict[str, Any]:
    at = "2026-12-01T00:00:00.000000Z"
    return {"session_id": "s", "position": position, "type": kind, "at": at, "data": data}


def test_a_terminal_gets_a_bar_per_running_task_and_a_finished_task_loses_it() -> None:
    console = Console(file=io.StringIO(), force_terminal=True, width=100)
    bars = TaskBars(console)
    assert bars.progress is not None
    bars.show(event(2, "TaskStarted", task_id="t-1", name="export", total=100))
    bars.show(event(3, "TaskStarted", task_id="t-2", name="index", total=None))
    bars.show(event(4, "TaskProgressed", task_id="t-1", done=40, total=None))
    bars.show(event(5, "TaskProgressed", task_id="t-3", done=2, total=5))  # started before --after
    bars.show(event(6, "MessageRecorded", content="hi"))
    shown = {t.description: (t.completed, t.total) for t in bars.progress.tasks}
    assert shown == {
        "export (t-1)": (40, 100),
        "index (t-2)": (0, None),
        "t-3": (2, 5),
    }
    bars.show(event(7, "TaskCompleted", task_id="t-1", result=None))
    bars.show(event(8, "TaskFailed", task_id="t-2", error="no"))
    assert [t.description for t in bars.progress.tasks] == ["t-3"]


def test_no_bars_when_the_output_is_not_a_terminal() -> None:
    bars = TaskBars(Console(file=io.StringIO()))
    assert bars.progress is None
    bars.show(event(2, "TaskStarted", task_id="t-1", name="export", total=100))


def test_the_default_url_is_sessiond_url_else_where_serve_listens() -> None:
    assert default_url({}) == "http://127.0.0.1:8080"
    assert default_url({"SESSIOND_PORT": "9000", "SESSIOND_HOST": "0.0.0.0"}) == (
        "http://127.0.0.1:9000"
    )
    assert default_url({"SESSIOND_HOST": "::1"}) == "http://[::1]:8080"
    assert default_url({"SESSIOND_URL": "https://sessiond.example"}) == "https://sessiond.example"
