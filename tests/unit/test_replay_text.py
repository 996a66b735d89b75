"""The readable timeline of `sessiond replay`: each session event's line, from
its entry in projections/sessions.py."""

from __future__ import annotations

from typing import Any

import pytest

from projections.sessions import timeline


def event(kind: str, **data: Any) -> dict[str, Any]:
    return {"session_id": "s", "position": 1, "type": kind, "at": "", "data": data}


@pytest.mark.parametrize(
    ("recorded", "shown"),
    [
        (event("TaskStarted", task_id="t", name="job", total=10), "task=t name='job' total=10"),
        (event("TaskStarted", task_id="t", name="job", total=None), "task=t name='job'"),
        (event("TaskProgressed", task_id="t", done=4, total=10, note=None), "task=t done=4/10"),
        (event("TaskProgressed", task_id="t", done=40, total=None, note=None), "task=t done=40"),
        (
            event("TaskProgressed", task_id="t", done=1, total=None, note="warming up"),
            "task=t done=1 note='warming up'",
        ),
    ],
)
def test_a_task_without_a_known_total_is_shown_without_one(
    recorded: dict[str, Any], shown: str
) -> None:
    assert timeline(recorded) == shown
