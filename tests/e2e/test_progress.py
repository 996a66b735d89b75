"""Tasks and progress over HTTP (PROTOCOL.md): each call is one
recorded session event answered with its position, the ``service`` role
reports on any session, and the session view shows each task's progress."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from tests.conftest import Api
from tests.e2e.wsclient import open_socket

WORKER = ("service",)


async def new_session(api: Api, session_id: str, user: str = "alice") -> None:
    status, body = await api.call(
        "POST", "/v1/sessions", user=user, json={"session_id": session_id}
    )
    assert status == 201, body


async def events_of(api: Api, session_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/sessions/{session_id}/events?limit=1000")
    assert status == 200, body
    return list(body["events"])


async def test_a_task_walks_from_started_to_completed_with_one_event_per_call(
    store_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(store_url)
    await new_session(api, "job-1")
    base = "/v1/sessions/job-1/tasks"

    status, started = await api.call(
        "POST", base, json={"task_id": "build", "name": "Build", "total": 4}
    )
    assert status == 201, started
    assert started == {"task_id": "build", "position": 2}

    answered = [started["position"]]
    for done in (1, 2, 3):
        status, body = await api.call(
            "POST", f"{base}/build/progress", json={"done": done, "note": f"step {done}"}
        )
        assert status == 202, body
        answered.append(body["position"])
    status, body = await api.call("POST", f"{base}/build/complete", json={"result": {"ok": True}})
    assert status == 200, body
    answered.append(body["position"])
    assert answered == [2, 3, 4, 5, 6]

    events = await events_of(api, "job-1")
    by_position = {e["position"]: e for e in events}
    assert [by_position[p]["type"] for p in answered] == [
        "TaskStarted",
        "TaskProgressed",
        "TaskProgressed",
        "TaskProgressed",
        "TaskCompleted",
    ]
    assert by_position[2]["data"]["total"] == 4
    assert [by_position[p]["data"]["done"] for p in (3, 4, 5)] == [1, 2, 3]
    assert by_position[6]["data"]["result"] == {"ok": True}
    assert all(by_position[p]["data"]["task_id"] == "build" for p in answered)

    status, view = await api.call("GET", "/v1/sessions/job-1")
    assert status == 200, view
    [task] = view["tasks"]
    assert task["task_id"] == "build"
    assert task["name"] == "Build"
    assert task["state"] == "COMPLETED"
    assert (task["done"], task["total"]) == (4, 4)
    assert view["position"] == 6


async def test_the_session_view_shows_a_running_tasks_done_and_total_after_each_report(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "job-view")
    base = "/v1/sessions/job-view/tasks"
    status, _ = await api.call("POST", base, json={"task_id": "t", "name": "Index"})
    assert status == 201
    status, view = await api.call("GET", "/v1/sessions/job-view")
    assert [(t["state"], t["done"], t["total"]) for t in view["tasks"]] == [("RUNNING", 0, None)]

    for done, total in ((10, 50), (25, None), (60, 80)):
        body: dict[str, Any] = {"done": done}
        if total is not None:
            body["total"] = total
        status, _ = await api.call("POST", f"{base}/t/progress", json=body)
        assert status == 202
        status, view = await api.call("GET", "/v1/sessions/job-view")
        assert status == 200
        [task] = view["tasks"]
        expected_total = 50 if total is None else total
        assert (task["state"], task["done"], task["total"]) == ("RUNNING", done, expected_total)


async def test_a_repeated_task_id_answers_200_with_the_first_position_and_records_nothing(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "job-2")
    first = await api.call("POST", "/v1/sessions/job-2/tasks", json={"task_id": "t1", "name": "A"})
    again = await api.call("POST", "/v1/sessions/job-2/tasks", json={"task_id": "t1", "name": "A"})
    assert first == (201, {"task_id": "t1", "position": 2})
    assert again == (200, {"task_id": "t1", "position": 2})
    assert [e["type"] for e in await events_of(api, "job-2")] == ["SessionCreated", "TaskStarted"]


async def test_a_task_without_a_proposed_id_gets_one_that_progress_can_use(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "job-3")
    status, body = await api.call("POST", "/v1/sessions/job-3/tasks", json={"name": "anon"})
    assert status == 201, body
    task_id = body["task_id"]
    assert isinstance(task_id, str) and task_id
    status, body = await api.call(
        "POST", f"/v1/sessions/job-3/tasks/{task_id}/progress", json={"done": 1}
    )
    assert (status, body) == (202, {"position": 3})


async def test_progress_or_completion_after_a_task_finished_is_409_task_finished(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "job-4")
    base = "/v1/sessions/job-4/tasks"
    for task_id in ("done-ok", "done-bad"):
        status, _ = await api.call("POST", base, json={"task_id": task_id, "name": task_id})
        assert status == 201
    status, _ = await api.call("POST", f"{base}/done-ok/complete", json={})
    assert status == 200
    status, failed = await api.call("POST", f"{base}/done-bad/fail", json={"error": "disk full"})
    assert status == 200, failed
    head = failed["position"]

    for task_id in ("done-ok", "done-bad"):
        for path, body in (
            ("progress", {"done": 1}),
            ("complete", {}),
            ("fail", {"error": "again"}),
        ):
            status, answer = await api.call("POST", f"{base}/{task_id}/{path}", json=body)
            assert status == 409, (task_id, path, answer)
            assert answer["error"]["code"] == "task_finished"

    events = await events_of(api, "job-4")
    assert events[-1]["position"] == head, "a refused call recorded something"
    assert events[-1]["type"] == "TaskFailed"
    assert events[-1]["data"]["error"] == "disk full"
    status, view = await api.call("GET", "/v1/sessions/job-4")
    states = {t["task_id"]: t["state"] for t in view["tasks"]}
    assert states == {"done-ok": "COMPLETED", "done-bad": "FAILED"}


async def test_progress_for_an_unknown_task_is_404_task_not_found(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "job-5")
    for path, body in (
        ("progress", {"done": 1}),
        ("complete", {}),
        ("fail", {"error": "x"}),
    ):
        status, answer = await api.call("POST", f"/v1/sessions/job-5/tasks/nope/{path}", json=body)
        assert status == 404, answer
        assert answer["error"]["code"] == "task_not_found"
    status, answer = await api.call(
        "POST", "/v1/sessions/missing/tasks/nope/progress", json={"done": 1}
    )
    assert status == 404
    assert answer["error"]["code"] == "session_not_found"


async def test_a_worker_with_the_service_role_reports_on_another_users_session(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "alice-job", user="alice")
    base = "/v1/sessions/alice-job/tasks"

    status, body = await api.call(
        "POST", base, user="worker-7", roles=WORKER, json={"task_id": "w", "name": "crunch"}
    )
    assert status == 201, body
    status, body = await api.call(
        "POST", f"{base}/w/progress", user="worker-7", roles=WORKER, json={"done": 3, "total": 9}
    )
    assert status == 202, body
    status, body = await api.call(
        "POST", f"{base}/w/complete", user="worker-7", roles=WORKER, json={}
    )
    assert status == 200, body

    # The session stays alice's; a plain user who is not alice may not report.
    status, view = await api.call("GET", "/v1/sessions/alice-job")
    assert view["owner"] == "alice"
    assert view["tasks"][0]["state"] == "COMPLETED"
    status, body = await api.call(
        "POST", base, user="mallory", json={"task_id": "m", "name": "evil"}
    )
    assert status == 403, body
    assert body["error"]["code"] == "forbidden"
    status, body = await api.call(
        "POST", base, user="audrey", roles=("auditor",), json={"task_id": "a", "name": "x"}
    )
    assert status == 403, body


async def test_bad_progress_bodies_are_400_and_record_nothing(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "job-6")
    status, _ = await api.call(
        "POST", "/v1/sessions/job-6/tasks", json={"task_id": "t", "name": "n"}
    )
    assert status == 201
    for body in ({}, {"done": "half"}, {"done": 1, "extra": True}, {"done": True}):
        status, answer = await api.call("POST", "/v1/sessions/job-6/tasks/t/progress", json=body)
        assert status == 400, (body, answer)
        assert answer["error"]["code"] == "invalid_body"
    status, answer = await api.call("POST", "/v1/sessions/job-6/tasks", json={"task_id": "u"})
    assert status == 400, answer
    assert len(await events_of(api, "job-6")) == 2


async def test_a_socket_sees_every_progress_event_at_the_position_its_call_answered(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "job-live")
    sock = await open_socket(api.http, api.base_url, "job-live", connection_id="watcher")
    base = "/v1/sessions/job-live/tasks"
    answered: dict[int, str] = {}
    status, body = await api.call(
        "POST", base, user="worker", roles=WORKER, json={"task_id": "t", "name": "n", "total": 3}
    )
    answered[body["position"]] = "TaskStarted"
    for done in (1, 2, 3):
        status, body = await api.call(
            "POST", f"{base}/t/progress", user="worker", roles=WORKER, json={"done": done}
        )
        assert status == 202
        answered[body["position"]] = "TaskProgressed"
    status, body = await api.call(
        "POST", f"{base}/t/complete", user="worker", roles=WORKER, json={"result": 42}
    )
    answered[body["position"]] = "TaskCompleted"

    await sock.until_position(max(answered))
    await sock.close()
    seen = {e["position"]: e for e in sock.events}
    assert sock.positions == list(range(1, max(answered) + 1))
    for position, kind in answered.items():
        assert seen[position]["type"] == kind
        assert seen[position]["data"]["task_id"] == "t"
    progressed = [seen[p]["data"]["done"] for p, k in answered.items() if k == "TaskProgressed"]
    assert progressed == [1, 2, 3]
