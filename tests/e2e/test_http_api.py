"""The HTTP API of PROTOCOL.md against a real server on a real socket."""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import sqlite3
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from service.application.auth import TokenSigner
from service.edge.context import READERS, READMODELS, STORE
from tests.conftest import TEST_SECRET, Api
from tests.e2e.wsclient import connection_events, open_live, refused_upgrade

Serve = Callable[..., Any]


def assert_error(body: Any, code: str) -> None:
    """Every non-2xx answer is exactly {"error": {"code", "message"}}."""
    assert isinstance(body, dict), body
    assert set(body) == {"error"}, body
    assert set(body["error"]) == {"code", "message"}, body
    assert body["error"]["code"] == code, body
    assert isinstance(body["error"]["message"], str) and body["error"]["message"], body


async def events(api: Api, session_id: str, **call: Any) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/sessions/{session_id}/events?limit=1000", **call)
    assert status == 200, body
    return list(body["events"])


async def metric(api: Api, name: str, **labels: str) -> float:
    """One sample of /metrics, 0 when absent."""
    status, text = await api.call("GET", "/metrics", user=None)
    assert status == 200
    label_text = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    wanted = f"{name}{{{label_text}}}" if labels else name
    for line in text.splitlines():
        if line.startswith("#"):
            continue
        sample, _, value = line.rpartition(" ")
        if sample == wanted:
            return float(value)
    return 0.0


async def create(api: Api, session_id: str, user: str = "alice", **extra: Any) -> dict[str, Any]:
    status, body = await api.call(
        "POST", "/v1/sessions", user=user, json={"session_id": session_id, **extra}
    )
    assert status == 201, body
    return dict(body)


# --- sessions -----------------------------------------------------------------------


async def test_creating_a_session_answers_201_then_200_with_the_same_session(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url)
    sid = "session-1735095123-abc123"
    status, first = await api.call(
        "POST", "/v1/sessions", json={"session_id": sid, "metadata": {"page": "chat"}}
    )
    assert status == 201, first
    assert first["session_id"] == sid
    assert first["owner"] == "alice"
    assert first["state"] == "ACTIVE"
    assert first["metadata"] == {"page": "chat"}
    assert first["position"] == 1
    status, again = await api.call("POST", "/v1/sessions", json={"session_id": sid})
    assert status == 200, again
    assert again["session_id"] == sid
    assert again["created_at"] == first["created_at"]
    assert [e["type"] for e in await events(api, sid)] == ["SessionCreated"]


async def test_a_session_created_without_an_id_gets_one_that_is_used_everywhere(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    status, body = await api.call("POST", "/v1/sessions", json={})
    assert status == 201, body
    sid = body["session_id"]
    status, view = await api.call("GET", f"/v1/sessions/{sid}")
    assert status == 200 and view["session_id"] == sid
    (created,) = await events(api, sid)
    assert created["session_id"] == sid and created["data"]["session_id"] == sid


async def test_forty_concurrent_creates_of_one_client_id_make_exactly_one_session(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url)
    sid = "sess_mgpresmh_6655kc3b0"
    answers = await asyncio.gather(
        *(api.call("POST", "/v1/sessions", json={"session_id": sid}) for _ in range(40))
    )
    statuses = sorted(status for status, _ in answers)
    assert statuses == [200] * 39 + [201], answers
    assert {body["session_id"] for _, body in answers} == {sid}
    assert {body["created_at"] for _, body in answers} == {answers[0][1]["created_at"]}
    history = await events(api, sid)
    assert [e["type"] for e in history].count("SessionCreated") == 1
    assert [e["position"] for e in history] == list(range(1, len(history) + 1))


async def test_creating_another_users_session_id_is_refused_as_owned_by_other(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    await create(api, "shared-name")
    status, body = await api.call(
        "POST", "/v1/sessions", user="bob", json={"session_id": "shared-name"}
    )
    assert status == 409
    assert_error(body, "session_owned_by_other")
    status, view = await api.call("GET", "/v1/sessions/shared-name")
    assert status == 200, view
    assert view["owner"] == "alice" and view["position"] == 1


async def test_get_session_shows_the_view_and_404_for_an_unknown_one(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    await create(api, "s-get", metadata={"k": "v"})
    status, view = await api.call("GET", "/v1/sessions/s-get")
    assert status == 200, view
    for key in (
        "session_id",
        "owner",
        "state",
        "created_at",
        "updated_at",
        "position",
        "metadata",
        "message_count",
        "tasks",
        "connections",
    ):
        assert key in view, key
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{6}Z", view["created_at"])
    status, body = await api.call("GET", "/v1/sessions/no-such-session")
    assert status == 404
    assert_error(body, "session_not_found")


async def test_a_deleted_session_refuses_writes_and_keeps_its_history_readable(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url)
    await create(api, "s-end")
    status, _ = await api.call(
        "POST", "/v1/sessions/s-end/messages", json={"role": "user", "content": "before"}
    )
    assert status == 201
    status, view = await api.call("DELETE", "/v1/sessions/s-end")
    assert status == 200, view
    assert view["state"] == "ENDED"
    before = await events(api, "s-end")
    status, body = await api.call(
        "POST", "/v1/sessions/s-end/messages", json={"role": "user", "content": "after"}
    )
    assert status == 409
    assert_error(body, "session_ended")
    status, body = await api.call("POST", "/v1/sessions/s-end/tasks", json={"name": "job"})
    assert status == 409
    assert_error(body, "session_ended")
    assert await events(api, "s-end") == before
    assert [e["type"] for e in before] == ["SessionCreated", "MessageRecorded", "SessionEnded"]
    assert before[1]["data"]["content"] == "before"
    status, view = await api.call("GET", "/v1/sessions/s-end")
    assert status == 200 and view["state"] == "ENDED"


async def test_a_retry_of_a_write_recorded_before_the_end_gets_its_first_answer(
    store_url: str, serve: Serve
) -> None:
    """A client that retries a write the session recorded before it ended (its
    answer was lost) gets that write's first answer, not 409 session_ended:
    the write was not refused, and nothing new is recorded (ADR 0050)."""
    api = await serve(store_url)
    await create(api, "s-retry")
    message = {"role": "user", "content": "once", "message_id": "m-once"}
    status, first = await api.call("POST", "/v1/sessions/s-retry/messages", json=message)
    assert status == 201, first
    task = {"task_id": "t-once", "name": "job"}
    status, started = await api.call("POST", "/v1/sessions/s-retry/tasks", json=task)
    assert status == 201, started
    status, _ = await api.call("DELETE", "/v1/sessions/s-retry")
    assert status == 200
    before = await events(api, "s-retry")
    status, again = await api.call("POST", "/v1/sessions/s-retry/messages", json=message)
    assert (status, again["position"]) == (200, first["position"]), again
    status, again = await api.call("POST", "/v1/sessions/s-retry/tasks", json=task)
    assert (status, again["position"]) == (200, started["position"]), again
    # A new write is refused.
    new = {"role": "user", "content": "new", "message_id": "m-new"}
    status, body = await api.call("POST", "/v1/sessions/s-retry/messages", json=new)
    assert status == 409
    assert_error(body, "session_ended")
    assert await events(api, "s-retry") == before


# --- messages and events -----------------------------------------------------------


async def test_a_repeated_message_id_records_nothing_and_answers_the_first_position(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url)
    await create(api, "s-msg")
    message = {"role": "user", "content": "hello", "message_id": "msg-client-0001"}
    status, first = await api.call("POST", "/v1/sessions/s-msg/messages", json=message)
    assert status == 201, first
    assert first == {"position": 2, "message_id": "msg-client-0001"}
    status, again = await api.call("POST", "/v1/sessions/s-msg/messages", json=message)
    assert status == 200, again
    assert again == first
    history = await events(api, "s-msg")
    assert [e["type"] for e in history] == ["SessionCreated", "MessageRecorded"]
    data = history[1]["data"]
    assert data["message_id"] == "msg-client-0001"
    assert data["role"] == "user" and data["content"] == "hello"
    status, view = await api.call("GET", "/v1/sessions/s-msg")
    assert status == 200, view
    assert view["message_count"] == 1


async def test_events_page_with_after_and_limit_and_next_after(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    await create(api, "s-page")
    for i in range(6):
        status, body = await api.call(
            "POST", "/v1/sessions/s-page/messages", json={"role": "user", "content": f"m{i}"}
        )
        assert status == 201 and body["position"] == i + 2
    seen: list[dict[str, Any]] = []
    after = 0
    pages = 0
    while True:
        status, page = await api.call("GET", f"/v1/sessions/s-page/events?after={after}&limit=3")
        assert status == 200, page
        pages += 1
        assert len(page["events"]) <= 3
        if not page["events"]:
            assert page["next_after"] == after
            break
        assert page["next_after"] == page["events"][-1]["position"]
        seen.extend(page["events"])
        after = page["next_after"]
        assert pages < 10, "paging does not end"
    assert [e["position"] for e in seen] == list(range(1, 8))
    assert [e["data"].get("content") for e in seen[1:]] == [f"m{i}" for i in range(6)]
    for event in seen:
        assert set(event) == {"session_id", "position", "type", "at", "data"}
        assert event["session_id"] == "s-page"
    status, page = await api.call("GET", "/v1/sessions/s-page/events?after=5")
    assert status == 200, page
    assert [e["position"] for e in page["events"]] == [6, 7]


async def test_a_connection_and_its_lifecycle_are_readable_over_http(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "s-conn", connection_id="conn-http-1")
    status, view = await api.call("GET", "/v1/connections/conn-http-1")
    assert status == 200, view
    assert view["connection_id"] == "conn-http-1"
    assert view["session_id"] == "s-conn"
    assert view["user_id"] == "alice"
    assert view["state"] == "PROCESSING_READY"
    for key in ("opened_at", "closed_at", "close_code", "close_reason", "node"):
        assert key in view, key
    status, body = await api.call("GET", "/v1/connections/conn-http-1/events")
    assert status == 200, body
    assert [e["type"] for e in body["events"]] == [
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "SERVICES_READY",
        "PROCESSING_READY",
    ]
    assert {e["connection_id"] for e in body["events"]} == {"conn-http-1"}
    await client.close()
    status, body = await api.call("GET", "/v1/connections/no-such-conn")
    assert status == 404
    assert_error(body, "connection_not_found")
    status, body = await api.call("GET", "/v1/connections/no-such-conn/events")
    assert status == 404
    assert_error(body, "connection_not_found")


# --- operations ------------------------------------------------------------------------


async def test_healthz_answers_ok_when_the_store_answers(store_url: str, serve: Serve) -> None:
    api = await serve(store_url)
    status, body = await api.call("GET", "/healthz", user=None)
    assert status == 200, body
    assert body["status"] == "ok"


async def test_metrics_count_connections_by_state_events_and_errors_by_code(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    appended_before = await metric(api, "sessiond_events_appended_total")
    await create(api, "s-metrics")
    assert await metric(api, "sessiond_events_appended_total") == appended_before + 1
    status, _ = await api.call("GET", "/v1/sessions/nope-nope")
    assert status == 404
    assert await metric(api, "sessiond_http_errors_total", code="session_not_found") == 1
    client = await open_live(api, "s-metrics")
    assert await metric(api, "sessiond_connections", state="PROCESSING_READY") == 1
    assert await metric(api, "sessiond_connections", state="ACCEPTED") == 0
    await client.send({"type": "nonsense", "ref": "r1"})
    await client.until_type("error")
    assert await metric(api, "sessiond_ws_errors_total", code="unknown_type") == 1
    await client.close()
    status, text = await api.call("GET", "/metrics", user=None)
    assert status == 200, text
    assert "# TYPE sessiond_connections gauge" in text
    assert "# TYPE sessiond_events_appended_total counter" in text


# --- authentication and authorisation ---------------------------------------------------


def expired_token() -> str:
    now = int(time.time())
    return jwt.encode(
        {"sub": "alice", "iat": now - 120, "exp": now - 60, "roles": ["user"]},
        TEST_SECRET,
        algorithm="HS256",
    )


def signed(claims: dict[str, Any]) -> str:
    """A token signed with the server's key, with ``claims`` as they are (an
    ``exp`` ten minutes ahead unless they name one)."""
    return jwt.encode({"exp": int(time.time()) + 600, **claims}, TEST_SECRET, algorithm="HS256")


@pytest.mark.parametrize(
    "authorization",
    [
        None,
        "Bearer",
        "Basic YWxpY2U6c2VjcmV0",
        "Bearer not-a-jwt",
        "EXPIRED",
        "BAD_SIGNATURE",
        "UNSIGNED",
        "ROLE:admin",
        "ROLE:Auditor",
        "ROLE:",
        "STRING_EXP",
    ],
    ids=[
        "missing",
        "empty",
        "basic",
        "garbage",
        "expired",
        "bad-signature",
        "alg-none",
        "unknown-role",
        "miscapitalised-role",
        "no-role",
        "string-exp",
    ],
)
async def test_a_request_without_a_valid_token_is_401_unauthenticated(
    serve: Serve, sqlite_url: str, authorization: str | None
) -> None:
    api = await serve(sqlite_url)
    await create(api, "s-auth")
    if authorization == "EXPIRED":
        authorization = "Bearer " + expired_token()
    elif authorization == "BAD_SIGNATURE":
        authorization = "Bearer " + TokenSigner("another-secret-of-enough-length-42").mint("alice")
    elif authorization == "UNSIGNED":
        authorization = "Bearer " + jwt.encode(
            {"sub": "alice", "exp": int(time.time()) + 60}, key=None, algorithm="none"
        )
    elif authorization is not None and authorization.startswith("ROLE:"):
        roles = [r for r in authorization.removeprefix("ROLE:").split(",") if r]
        authorization = "Bearer " + signed({"sub": "alice", "roles": roles})
    elif authorization == "STRING_EXP":
        authorization = "Bearer " + signed({"sub": "alice", "exp": str(int(time.time()) + 600)})
    headers = {} if authorization is None else {"Authorization": authorization}
    for method, path, body in [
        ("GET", "/v1/sessions/s-auth", None),
        ("GET", "/v1/sessions/s-auth/events", None),
        ("POST", "/v1/sessions", {"session_id": "s-auth-2"}),
        ("POST", "/v1/sessions/s-auth/messages", {"role": "user", "content": "x"}),
        ("DELETE", "/v1/sessions/s-auth", None),
    ]:
        status, answer = await api.call(method, path, user=None, headers=headers, json=body)
        assert status == 401, (method, path, answer)
        assert_error(answer, "unauthenticated")
    assert [e["type"] for e in await events(api, "s-auth")] == ["SessionCreated"]


async def test_a_token_whose_subject_no_index_can_hold_is_401_and_hurts_nobody(
    serve: Serve, store_url: str
) -> None:
    """A subject is the owner column of the sessions table, indexed for the
    list: one of thousands of bytes (PostgreSQL's index rows hold 2704)
    stalled the sessions projection for every user, whose lists then left
    out what they had just created. Refused at the token, 401."""
    api = await serve(store_url)
    long_sub = os.urandom(2500).hex()
    headers = {"Authorization": "Bearer " + signed({"sub": long_sub})}
    status, answer = await api.call(
        "POST", "/v1/sessions", user=None, headers=headers, json={"session_id": "s-long"}
    )
    assert status == 401, answer
    assert_error(answer, "unauthenticated")
    await create(api, "s-after-long")
    status, listing = await api.call("GET", "/v1/sessions")
    assert status == 200, listing
    assert [s["session_id"] for s in listing["sessions"]] == ["s-after-long"]
    # A subject of a sensible length (an e-mail address, a URI) is a user.
    headers = {"Authorization": "Bearer " + signed({"sub": "u" * 1024})}
    status, answer = await api.call(
        "POST", "/v1/sessions", user=None, headers=headers, json={"session_id": "s-kilo"}
    )
    assert status == 201, answer


async def test_another_users_session_is_403_forbidden_for_reads_and_writes(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    await create(api, "s-alice")
    for method, path, body in [
        ("GET", "/v1/sessions/s-alice", None),
        ("GET", "/v1/sessions/s-alice/events", None),
        ("GET", "/v1/sessions/s-alice/state?at=1", None),
        ("POST", "/v1/sessions/s-alice/messages", {"role": "user", "content": "x"}),
        ("POST", "/v1/sessions/s-alice/tasks", {"name": "job"}),
        ("DELETE", "/v1/sessions/s-alice", None),
    ]:
        status, answer = await api.call(method, path, user="bob", json=body)
        assert status == 403, (method, path, answer)
        assert_error(answer, "forbidden")
    assert [e["type"] for e in await events(api, "s-alice")] == ["SessionCreated"]


async def test_an_auditor_reads_everything_and_every_write_is_403(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    client = await open_live(api, "s-audited", connection_id="conn-audited")
    await client.close()
    auditor: dict[str, Any] = {"user": "carol", "roles": ("auditor",)}
    # The server records CLOSED (and the session's detach) once it has seen the
    # close; wait for that, so the history taken below is complete.
    for _ in range(200):
        if (await connection_events(api, "conn-audited"))[-1]["type"] == "CLOSED":
            break
        await asyncio.sleep(0.05)
    status, view = await api.call("GET", "/v1/sessions/s-audited", **auditor)
    assert status == 200 and view["owner"] == "alice"
    history = await events(api, "s-audited", **auditor)
    assert history[0]["type"] == "SessionCreated"
    status, view = await api.call("GET", "/v1/connections/conn-audited", **auditor)
    assert status == 200, view
    status, _ = await api.call("GET", "/v1/connections/conn-audited/events", **auditor)
    assert status == 200
    status, listing = await api.call("GET", "/v1/sessions", **auditor)
    assert status == 200 and "s-audited" in [s["session_id"] for s in listing["sessions"]]
    position = history[-1]["position"]
    for method, path, body in [
        ("POST", "/v1/sessions", {"session_id": "s-auditor-own"}),
        ("POST", "/v1/sessions/s-audited/messages", {"role": "user", "content": "x"}),
        ("POST", "/v1/sessions/s-audited/tasks", {"name": "job"}),
        ("DELETE", "/v1/sessions/s-audited", None),
    ]:
        status, answer = await api.call(method, path, json=body, **auditor)
        assert status == 403, (method, path, answer)
        assert_error(answer, "forbidden")
    after = await events(api, "s-audited")
    assert after[-1]["position"] == position
    status, _ = await api.call("GET", "/v1/sessions/s-auditor-own", **auditor)
    assert status == 404


async def test_the_service_role_may_post_to_any_session(serve: Serve, sqlite_url: str) -> None:
    api = await serve(sqlite_url)
    await create(api, "s-worker")
    worker: dict[str, Any] = {"user": "worker-7", "roles": ("service",)}
    status, body = await api.call(
        "POST",
        "/v1/sessions/s-worker/messages",
        json={"role": "assistant", "content": "done thinking"},
        **worker,
    )
    assert status == 201, body
    status, task = await api.call(
        "POST", "/v1/sessions/s-worker/tasks", json={"task_id": "t-1", "name": "crawl"}, **worker
    )
    assert status == 201, task
    status, progress = await api.call(
        "POST", "/v1/sessions/s-worker/tasks/t-1/progress", json={"done": 1, "total": 2}, **worker
    )
    assert status == 202, progress
    # Writing to it does not make it the service's: creating it is 409.
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-worker"}, **worker)
    assert (status, body["error"]["code"]) == (409, "session_owned_by_other"), body
    status, view = await api.call("GET", "/v1/sessions/s-worker")
    assert status == 200, view
    assert view["owner"] == "alice"
    assert [e["type"] for e in await events(api, "s-worker")] == [
        "SessionCreated",
        "MessageRecorded",
        "TaskStarted",
        "TaskProgressed",
    ]


async def test_only_its_owner_ends_a_session_a_service_token_of_another_user_is_403(
    serve: Serve, sqlite_url: str
) -> None:
    """A service writes to any session (tasks, progress, messages) but ending
    one is its owner's alone: nothing in the contract gives it to a service."""
    api = await serve(sqlite_url)
    await create(api, "s-owned")
    worker: dict[str, Any] = {"user": "worker-7", "roles": ("service",)}
    worker_and_user: dict[str, Any] = {"user": "worker-8", "roles": ("user", "service")}
    for who in (worker, worker_and_user):
        status, answer = await api.call("DELETE", "/v1/sessions/s-owned", **who)
        assert status == 403, (who, answer)
        assert_error(answer, "forbidden")
    status, view = await api.call("GET", "/v1/sessions/s-owned")
    assert (status, view["state"]) == (200, "ACTIVE"), view
    assert [e["type"] for e in await events(api, "s-owned")] == ["SessionCreated"]

    # A session the service created is its own to end; the owner ends theirs.
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-its"}, **worker)
    assert status == 201, body
    status, view = await api.call("DELETE", "/v1/sessions/s-its", **worker)
    assert (status, view["state"]) == (200, "ENDED"), view
    status, view = await api.call("DELETE", "/v1/sessions/s-owned")
    assert (status, view["state"]) == (200, "ENDED"), view


# --- bad input: never a 500, never recorded ---------------------------------------------


SESSIONS = "/v1/sessions"
MESSAGES = "/v1/sessions/s-bad/messages"


def raw(data: bytes, content_type: str = "application/json") -> dict[str, Any]:
    return {"data": data, "headers": {"Content-Type": content_type}}


def body(value: Any) -> dict[str, Any]:
    return {"json": value}


def message(**fields: Any) -> dict[str, Any]:
    return {"json": {"role": "user", "content": "x", **fields}}


BAD_REQUESTS: list[tuple[str, str, dict[str, Any], int, str]] = [
    # (method, path, request kwargs, status, code)
    ("POST", SESSIONS, raw(b"{not json"), 400, "invalid_json"),
    ("POST", MESSAGES, raw(b'{"role": "user", "content": "x"'), 400, "invalid_json"),
    ("POST", SESSIONS, body(["a", "list"]), 400, "invalid_body"),
    ("POST", SESSIONS, body({"metadata": "not an object"}), 400, "invalid_body"),
    ("POST", SESSIONS, body({"session_id": "s-new", "colour": "red"}), 400, "invalid_body"),
    ("POST", MESSAGES, body({"role": "user"}), 400, "invalid_body"),
    ("POST", MESSAGES, message(content=7), 400, "invalid_body"),
    ("POST", MESSAGES, message(role="wizard"), 400, "invalid_body"),
    ("POST", MESSAGES, message(tokens="3"), 400, "invalid_body"),
    ("POST", MESSAGES, message(tokens=True), 400, "invalid_body"),
    ("POST", MESSAGES, message(extra=1), 400, "invalid_body"),
    ("POST", MESSAGES, message(metadata=[1]), 400, "invalid_body"),
    (
        "POST",
        "/v1/sessions/s-bad/tasks",
        body({"name": "job", "total": "ten"}),
        400,
        "invalid_body",
    ),
    ("POST", SESSIONS, body({"session_id": "has space"}), 400, "invalid_id"),
    ("POST", SESSIONS, body({"session_id": ""}), 400, "invalid_id"),
    ("POST", SESSIONS, body({"session_id": "x" * 129}), 400, "invalid_id"),
    ("POST", SESSIONS, body({"session_id": "sess/slash"}), 400, "invalid_id"),
    ("POST", SESSIONS, body({"session_id": "séance"}), 400, "invalid_id"),
    ("POST", MESSAGES, message(message_id="m 1"), 400, "invalid_id"),
    # An ID of another JSON type is no ID either.
    ("POST", SESSIONS, body({"session_id": 42}), 400, "invalid_id"),
    ("POST", SESSIONS, body({"session_id": True}), 400, "invalid_id"),
    ("POST", SESSIONS, body({"session_id": ["s-1"]}), 400, "invalid_id"),
    ("POST", MESSAGES, message(message_id=7), 400, "invalid_id"),
    ("POST", "/v1/sessions/s-bad/tasks", body({"name": "job", "task_id": {}}), 400, "invalid_id"),
    # An escaped lone surrogate: a whole JSON body, with a string that is no text.
    ("POST", SESSIONS, raw(b'{"session_id": "\\ud800"}'), 400, "invalid_id"),
    ("POST", MESSAGES, raw(b'{"role": "user", "content": "\\ud800"}'), 400, "invalid_body"),
    ("GET", "/v1/sessions/bad%20id", {}, 400, "invalid_id"),
    ("GET", "/v1/sessions/" + "y" * 129, {}, 400, "invalid_id"),
    ("POST", "/v1/sessions/bad%24id/messages", message(), 400, "invalid_id"),
    ("GET", "/v1/connections/bad%21id", {}, 400, "invalid_id"),
    # An empty ID in a path is outside 1 to 128 characters like any other.
    ("POST", "/v1/sessions//messages", message(), 400, "invalid_id"),
    ("GET", "/v1/sessions/", {}, 400, "invalid_id"),
    ("GET", "/v1/sessions//events", {}, 400, "invalid_id"),
    ("DELETE", "/v1/sessions/", {}, 400, "invalid_id"),
    ("POST", "/v1/sessions/s-bad/tasks//progress", body({"done": 1}), 400, "invalid_id"),
    ("GET", "/v1/connections/", {}, 400, "invalid_id"),
    ("GET", "/v1/connections//events", {}, 400, "invalid_id"),
    ("DELETE", "/v1/connections/", {}, 400, "invalid_id"),
    (
        "POST",
        SESSIONS,
        raw(b"session_id=s", "application/x-www-form-urlencoded"),
        415,
        "unsupported_media_type",
    ),
    ("POST", MESSAGES, raw(b"hello", "text/plain"), 415, "unsupported_media_type"),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status", "code"),
    BAD_REQUESTS,
    ids=[f"{code}-{i}" for i, (_, _, _, _, code) in enumerate(BAD_REQUESTS)],
)
async def test_bad_input_is_refused_with_its_code_and_records_nothing(
    serve: Serve,
    sqlite_url: str,
    method: str,
    path: str,
    kwargs: dict[str, Any],
    status: int,
    code: str,
) -> None:
    api = await serve(sqlite_url)
    await create(api, "s-bad")
    appended = await metric(api, "sessiond_events_appended_total")
    answer_status, body = await api.call(method, path, **kwargs)
    assert answer_status == status, body
    assert_error(body, code)
    assert await metric(api, "sessiond_events_appended_total") == appended
    assert await metric(api, "sessiond_http_errors_total", code=code) == 1
    assert await metric(api, "sessiond_http_errors_total", code="internal") == 0
    assert [e["type"] for e in await events(api, "s-bad")] == ["SessionCreated"]
    _, listing = await api.call("GET", "/v1/sessions")
    assert [s["session_id"] for s in listing["sessions"]] == ["s-bad"]


async def test_a_body_larger_than_the_limit_is_413_too_large_and_records_nothing(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url, max_body_bytes=2048)
    await create(api, "s-big")
    status, body = await api.call(
        "POST", "/v1/sessions/s-big/messages", json={"role": "user", "content": "x" * 4000}
    )
    assert status == 413, body
    assert_error(body, "too_large")
    status, body = await api.call(
        "POST", "/v1/sessions", json={"session_id": "s-big-2", "metadata": {"blob": "y" * 4000}}
    )
    assert status == 413, body
    assert_error(body, "too_large")
    assert [e["type"] for e in await events(api, "s-big")] == ["SessionCreated"]
    status, _ = await api.call("GET", "/v1/sessions/s-big-2")
    assert status == 404
    status, ok = await api.call(
        "POST", "/v1/sessions/s-big/messages", json={"role": "user", "content": "small"}
    )
    assert status == 201, ok


async def test_unknown_paths_and_methods_answer_in_the_error_shape(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    status, body = await api.call("GET", "/v1/nothing-here")
    assert status == 404
    assert_error(body, "not_found")
    status, body = await api.call("PUT", "/v1/sessions")
    assert status == 405
    assert_error(body, "method_not_allowed")
    status, body = await api.call("GET", "/v1/sessions/s/events?after=minus-one")
    assert status == 400
    assert_error(body, "invalid_query")


# --- CORS and origins ---------------------------------------------------------------------


def preflight(api: Api, request_headers: str) -> Any:
    """A page on http://localhost:3000 asking whether it may POST a session
    with ``request_headers`` (the answer, as a context manager)."""
    return api.http.options(
        api.url("/v1/sessions"),
        headers={
            "Origin": "http://localhost:3000",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": request_headers,
        },
    )


async def test_a_preflight_from_an_allowed_origin_gets_the_cors_headers(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url, cors_origins=("http://localhost:3000",))
    async with preflight(api, "authorization, content-type") as r:
        assert r.status in (200, 204), await r.text()
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        assert "POST" in r.headers["Access-Control-Allow-Methods"]
        allowed_headers = r.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed_headers and "content-type" in allowed_headers
    status, _ = await api.call(
        "POST",
        "/v1/sessions",
        json={"session_id": "s-cors"},
        headers={"Origin": "http://localhost:3000"},
    )
    assert status == 201
    async with api.http.get(
        api.url("/v1/sessions/s-cors"),
        headers={"Origin": "http://localhost:3000", **api.auth()},
    ) as r:
        assert r.status == 200
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"


async def test_a_preflight_allows_the_trace_headers_the_service_reads(
    serve: Serve, sqlite_url: str
) -> None:
    """An HTTP request's span is a child of its W3C ``traceparent``
    (docs/operations.md): a page traced by OpenTelemetry sends it, with
    ``tracestate``, on every fetch, and a preflight that did not allow them
    stopped every such page's call before it was made."""
    api = await serve(sqlite_url, cors_origins=("http://localhost:3000",))
    async with preflight(api, "authorization,content-type,traceparent,tracestate") as r:
        assert r.status == 204, await r.text()
        allowed = {h.strip().lower() for h in r.headers["Access-Control-Allow-Headers"].split(",")}
        assert {"authorization", "content-type", "traceparent", "tracestate"} <= allowed


async def test_an_error_answer_to_an_allowed_origin_carries_the_cors_headers(
    serve: Serve, sqlite_url: str
) -> None:
    """A page on another origin can read why it was refused, not just that it was."""
    api = await serve(sqlite_url, cors_origins=("http://localhost:3000",))
    async with api.http.get(
        api.url("/v1/sessions/no-such-session"),
        headers={"Origin": "http://localhost:3000", **api.auth()},
    ) as r:
        assert r.status == 404
        assert r.headers["Access-Control-Allow-Origin"] == "http://localhost:3000"
        # Retry-After (on a 429 or a 503) is not CORS-safelisted: exposed.
        assert r.headers["Access-Control-Expose-Headers"] == "Retry-After"
        assert_error(await r.json(), "session_not_found")
    async with api.http.get(
        api.url("/v1/sessions/no-such-session"), headers={"Origin": "http://evil.example"}
    ) as r:
        assert r.status == 401
        assert "Access-Control-Allow-Origin" not in r.headers


async def test_every_answer_varies_by_origin_whatever_its_origin(
    serve: Serve, sqlite_url: str
) -> None:
    """Whether an answer carries Access-Control-Allow-Origin depends on the
    request's Origin, so every answer says ``Vary: Origin``: one made for a
    request without an Origin (the service's own page) or from an origin not
    listed, kept by the browser's cache, must not be handed to a listed
    page, which could not read it."""
    api = await serve(sqlite_url, cors_origins=("http://localhost:3000",))
    await create(api, "s-vary")
    for origin in (None, "http://evil.example", "http://localhost:3000"):
        headers = api.auth() if origin is None else {"Origin": origin, **api.auth()}
        for path in ("/v1/sessions/s-vary", "/v1/sessions/no-such", "/v1/openapi.json"):
            async with api.http.get(api.url(path), headers=headers) as r:
                vary = {v.strip().lower() for v in r.headers.get("Vary", "").split(",")}
                assert "origin" in vary, (origin, path, r.headers)
                allowed = r.headers.get("Access-Control-Allow-Origin")
                assert allowed == (origin if origin == "http://localhost:3000" else None)


async def test_a_preflight_from_an_origin_not_listed_gets_no_cors_headers(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url, cors_origins=("http://localhost:3000",))
    async with api.http.options(
        api.url("/v1/sessions"),
        headers={"Origin": "http://evil.example", "Access-Control-Request-Method": "POST"},
    ) as r:
        assert r.status == 403
        assert "Access-Control-Allow-Origin" not in r.headers
        assert_error(await r.json(), "forbidden_origin")


async def raw_request(api: Api, head: bytes) -> bytes:
    """Send a request's head as raw bytes (headers a client library would not
    send) and return the start of the answer."""
    host, port = api.base_url.split("//", 1)[1].split(":")
    reader, writer = await asyncio.open_connection(host, int(port))
    try:
        writer.write(head)
        await writer.drain()
        return await asyncio.wait_for(reader.read(2000), 10)
    finally:
        writer.close()


async def test_a_non_utf8_byte_in_the_authorization_header_is_401_not_500(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    answer = await raw_request(
        api,
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: 0\r\n"
        b"Authorization: Bearer abc\xff\xfedef\r\n\r\n",
    )
    assert answer.startswith(b"HTTP/1.1 401"), answer
    assert b'"unauthenticated"' in answer
    assert await metric(api, "sessiond_http_errors_total", code="internal") == 0


async def test_one_request_the_store_could_not_record_fails_alone_among_forty_concurrent_writes(
    serve: Serve, sqlite_url: str
) -> None:
    """JSON nested a few hundred levels deep used to pass the edge and fail
    the writer's whole batch: most of another user's concurrent writes got 503."""
    api = await serve(sqlite_url)
    await create(api, "s-honest")
    await api.call("POST", "/v1/sessions", user="mallory", json={"session_id": "s-mallory"})
    deep = b'{"role": "user", "content": "x", "metadata": ' + b"[" * 300 + b"]" * 300 + b"}"

    async def honest(i: int) -> int:
        status, _ = await api.call(
            "POST",
            "/v1/sessions/s-honest/messages",
            json={"role": "user", "content": f"m{i}", "message_id": f"m-{i}"},
        )
        return status

    async def hostile() -> int:
        status, body = await api.call(
            "POST", "/v1/sessions/s-mallory/messages", user="mallory", **raw(deep)
        )
        assert body["error"]["code"] == "invalid_body", body
        return status

    for _ in range(10):
        statuses = await asyncio.gather(hostile(), *(honest(i) for i in range(40)))
        assert statuses[0] == 400
        assert set(statuses[1:]) <= {200, 201}, statuses
    assert [e["type"] for e in await events(api, "s-mallory", user="mallory")] == ["SessionCreated"]


@pytest.mark.parametrize("after", [str(2**63), str(2**64 + 5), "99999999999999999999999"])
async def test_a_position_beyond_64_bits_is_invalid_query_not_a_store_failure(
    serve: Serve, sqlite_url: str, after: str
) -> None:
    api = await serve(sqlite_url)
    await create(api, "s-after")
    status, body = await api.call("GET", f"/v1/sessions/s-after/events?after={after}")
    assert status == 400, body
    assert_error(body, "invalid_query")
    status, body = await refused_upgrade(api, api.ws_url("s-after", after=after))
    assert status == 400, body
    assert body["error"]["code"] == "invalid_query"
    assert await metric(api, "sessiond_http_errors_total", code="internal") == 0


async def test_a_method_a_path_does_not_take_is_405_saying_which_it_takes(
    serve: Serve, sqlite_url: str
) -> None:
    """Found by Schemathesis: the error shape used to drop aiohttp's Allow."""
    api = await serve(sqlite_url)
    for method, path, allowed in (
        ("TRACE", "/healthz", "GET"),
        ("PUT", "/v1/sessions", "POST"),
        ("PATCH", "/v1/sessions/s-1", "DELETE"),
    ):
        async with api.http.request(method, api.url(path)) as r:
            assert r.status == 405, (method, path)
            assert allowed in r.headers["Allow"], (method, path, r.headers.get("Allow"))
            assert (await r.json())["error"]["code"] == "method_not_allowed"


async def test_a_client_gone_before_its_answer_is_no_error_of_the_nodes(
    caplog: pytest.LogCaptureFixture,
) -> None:
    """An upgrade abandoned mid-way makes aiohttp raise ConnectionResetError in
    the handler (seen under load with thousands of sockets): one INFO line and
    a 499 for the access log, never an ERROR with a traceback or a 500."""
    from aiohttp import web
    from aiohttp.test_utils import TestClient, TestServer

    from service.edge.app import create_app
    from tests.conftest import make_settings

    async def gone(request: web.Request) -> web.StreamResponse:
        raise ConnectionResetError("Connection lost")

    app = create_app(make_settings("memory://"))
    app.router.add_get("/gone", gone)
    async with TestClient(TestServer(app, host="127.0.0.1")) as client:
        with caplog.at_level("INFO"):
            r = await client.get("/gone")
    assert r.status == 499
    assert not [rec for rec in caplog.records if rec.levelname == "ERROR"]
    assert any("client left before its answer" in rec.getMessage() for rec in caplog.records)


async def test_views_read_while_the_tables_are_rebuilt_under_the_node_are_never_wrong(
    serve: Serve, sqlite_url: str, tmp_path: Path
) -> None:
    """``sessiond projections rebuild`` beside a serving node empties the
    tables and refills them batch by batch, while the node's own projector
    still holds the head. A session or connection read meanwhile is answered
    from the log (not 404, not an older view); the session list, which has no
    other source, is 503 ``unavailable`` until the tables have the head."""
    api = await serve(sqlite_url)
    await create(api, "s-rebuilt")
    client = await open_live(api, "s-rebuilt", connection_id="conn-rebuilt")
    status, before = await api.call("GET", "/v1/sessions/s-rebuilt")
    assert status == 200, before
    status, listed = await api.call("GET", "/v1/sessions")
    assert [s["session_id"] for s in listed["sessions"]] == ["s-rebuilt"]
    # This node's projector stops where it is (at the head) ...
    readmodels = api.server.app[READMODELS]  # type: ignore[attr-defined]
    readmodels._stopping.set()
    readmodels._urgent.set()
    readmodels._wake.set()
    readmodels._thread.join(timeout=30)
    # ... and the tables are reset under it, as a rebuild starts.
    with sqlite3.connect(tmp_path / "sessiond.db") as db:
        db.execute("DELETE FROM sessiond_sessions")
        db.execute("DELETE FROM sessiond_connections")
        db.execute("UPDATE sessiond_tracking SET position = 0")
    db.close()
    status, view = await api.call("GET", "/v1/sessions/s-rebuilt")
    assert (status, view) == (200, before)
    status, connection = await api.call("GET", "/v1/connections/conn-rebuilt")
    assert (status, connection["state"]) == (200, "PROCESSING_READY"), connection
    async with api.http.get(api.url("/v1/sessions"), headers=api.auth()) as r:
        assert r.status == 503 and r.headers["Retry-After"] == "1"
        assert (await r.json())["error"]["code"] == "unavailable"
    await client.close()


async def test_the_session_list_is_503_not_stale_while_the_projector_cannot_catch_up(
    serve: Serve, sqlite_url: str
) -> None:
    """A projector that fails (a row its tables refuse, a full disk) or lags
    past the patience of a read leaves the tables behind the head. A single
    view is read from the log then; the list has no other source, so it is
    503 ``unavailable``, never a list without the caller's newest session."""
    api = await serve(sqlite_url)
    await create(api, "s-listed")
    status, listed = await api.call("GET", "/v1/sessions")
    assert [s["session_id"] for s in listed["sessions"]] == ["s-listed"]
    readmodels = api.server.app[READMODELS]  # type: ignore[attr-defined]

    def refuse() -> int:
        raise RuntimeError("the tables refuse this batch")

    readmodels.projector.catch_up = refuse
    await create(api, "s-unlisted")
    for _ in range(200):
        if readmodels.failures:
            break
        await asyncio.sleep(0.02)
    assert readmodels.failures
    status, view = await api.call("GET", "/v1/sessions/s-unlisted")
    assert status == 200, view
    async with api.http.get(api.url("/v1/sessions"), headers=api.auth()) as r:
        body = await r.json()
        assert r.status == 503, body
        assert r.headers["Retry-After"] == "1"
        assert_error(body, "unavailable")


async def test_one_users_long_past_states_leave_everyone_elses_reads_alone(
    serve: Serve, sqlite_url: str
) -> None:
    """A past state (``state?at=N``) folds the session's events up to N: a
    second for a session of a few tens of thousands of events. Many asked
    at once by one user held every thread of the node's reads, and another
    user's plain read waited behind them until it was refused 503
    ``unavailable``, with the store up. Folds run apart, one per user at a
    time; every one of them is still answered."""
    api = await serve(sqlite_url)
    await create(api, "s-long-history")
    await api.call(
        "POST", "/v1/sessions/s-long-history/messages", json={"role": "user", "content": "x"}
    )
    await create(api, "s-bobs", user="bob")
    store = api.server.app[STORE]  # type: ignore[attr-defined]
    fold = store.get_session

    def long_fold(*args: Any, **kwargs: Any) -> Any:
        time.sleep(0.4)  # a session of some 20,000 events
        return fold(*args, **kwargs)

    store.get_session = long_fold
    answered: list[int] = []

    async def past_state() -> tuple[int, Any]:
        answer = await api.call(
            "GET", "/v1/sessions/s-long-history/state?at=1", timeout=aiohttp.ClientTimeout(60)
        )
        answered.append(answer[0])
        return answer

    folds = asyncio.gather(*(past_state() for _ in range(16)))
    await asyncio.sleep(0.2)
    status, page = await api.call("GET", "/v1/sessions/s-bobs/events", user="bob")
    assert status == 200, page
    # Bob's read did not wait its turn behind alice's folds (on the shared
    # read threads it came after a dozen of them).
    assert len(answered) < 4, answered
    answers = await folds
    assert {status for status, _ in answers} == {200}
    assert {view["position"] for _, view in answers} == {1}


async def test_the_node_heartbeats_while_reads_hold_every_read_thread(
    serve: Serve, sqlite_url: str
) -> None:
    """Reads that hold every thread of the node's read pool for longer than
    a node timeout must not stop its heartbeat: other nodes would take it
    for dead and record its live sockets as lost."""
    api = await serve(sqlite_url, node_timeout=0.3)
    store_file = sqlite_url.removeprefix("sqlite:///")

    def last_seen() -> float:
        with contextlib.closing(sqlite3.connect(store_file)) as db:
            row = db.execute(
                "SELECT last_seen FROM sessiond_nodes WHERE node = ?", ["test-node"]
            ).fetchone()
        return float(row[0]) if row else 0.0

    readers = api.server.app[READERS]  # type: ignore[attr-defined]
    release = threading.Event()
    for _ in range(16):
        readers.submit(release.wait, 30)
    try:
        await asyncio.sleep(0.2)
        before = last_seen()
        await asyncio.sleep(0.6)
        assert last_seen() > before
    finally:
        release.set()
