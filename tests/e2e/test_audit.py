"""Audit: the session listing with cursor pagination, read-your-
writes, paging through a session's history, the session as it stood at any
position, auditors who read everything and write nothing, and the
``replay`` and ``projections`` commands straight from the store."""

from __future__ import annotations

import asyncio
import base64
import json
import os
import sys
from collections.abc import Callable
from typing import Any

import orjson
import pytest

from projections.projector import PROJECTIONS, reset
from service.application.readmodels import open_tables
from service.storage.store import parse_store_url
from tests.conftest import Api
from tests.e2e.wsclient import closed_record, eventually, open_live

AUDITOR = ("auditor",)


async def run_cli(*args: str) -> tuple[int, str, str]:
    """``python -m service ARGS`` as a real process: exit code, stdout, stderr."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "service",
        *args,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
        env=env,
    )
    async with asyncio.timeout(60):
        out, err = await proc.communicate()
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


@pytest.fixture(params=["sqlite", "postgres"])
def disk_store(request: pytest.FixtureRequest) -> str:
    """A store another process can open too (not memory://)."""
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


async def ok(api: Api, method: str, path: str, *, status: int = 200, **kw: Any) -> Any:
    got, body = await api.call(method, path, **kw)
    assert got == status, (method, path, got, body)
    return body


async def busy_session(api: Api, session_id: str, user: str = "alice") -> list[dict[str, Any]]:
    """A session with a bit of everything; returns its view after each write
    (read right after the write that made it: read-your-writes)."""
    snapshots: list[dict[str, Any]] = []
    sid = session_id
    writes: list[tuple[str, str, dict[str, Any], int]] = [
        ("POST", "/v1/sessions", {"session_id": sid, "metadata": {"case": 7}}, 201),
        ("POST", f"/v1/sessions/{sid}/messages", {"role": "user", "content": "hi"}, 201),
        ("POST", f"/v1/sessions/{sid}/tasks", {"task_id": "t", "name": "T", "total": 3}, 201),
        ("POST", f"/v1/sessions/{sid}/tasks/t/progress", {"done": 1, "note": "one"}, 202),
        ("POST", f"/v1/sessions/{sid}/messages", {"role": "assistant", "content": "ok"}, 201),
        ("POST", f"/v1/sessions/{sid}/tasks/t/progress", {"done": 2}, 202),
        ("POST", f"/v1/sessions/{sid}/tasks", {"task_id": "u", "name": "U"}, 201),
        ("POST", f"/v1/sessions/{sid}/tasks/u/fail", {"error": "nope"}, 200),
        ("POST", f"/v1/sessions/{sid}/tasks/t/complete", {"result": [1, 2]}, 200),
        ("DELETE", f"/v1/sessions/{sid}", {}, 200),
    ]
    for method, path, body, status in writes:
        await ok(api, method, path, status=status, user=user, json=body)
        view = await ok(api, "GET", f"/v1/sessions/{sid}", user=user)
        snapshots.append(view)
    return snapshots


async def test_a_get_right_after_each_successful_write_shows_that_write(
    store_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(store_url)
    snapshots = await busy_session(api, "ryw-1")
    assert [s["position"] for s in snapshots] == list(range(1, 11))
    assert [s["message_count"] for s in snapshots] == [0, 1, 1, 1, 2, 2, 2, 2, 2, 2]
    tasks = [{t["task_id"]: (t["state"], t["done"]) for t in s["tasks"]} for s in snapshots]
    assert tasks[2] == {"t": ("RUNNING", 0)}
    assert tasks[3] == {"t": ("RUNNING", 1)}
    assert tasks[7] == {"t": ("RUNNING", 2), "u": ("FAILED", 0)}
    assert tasks[8] == {"t": ("COMPLETED", 3), "u": ("FAILED", 0)}
    assert [s["state"] for s in snapshots] == ["ACTIVE"] * 9 + ["ENDED"]
    assert snapshots[0]["metadata"] == {"case": 7}

    # The listing reads its writes too.
    listed = await ok(api, "GET", "/v1/sessions")
    assert listed["sessions"] == [snapshots[-1]]


async def test_the_state_at_n_is_the_session_as_it_stood_right_after_n(
    store_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(store_url)
    snapshots = await busy_session(api, "at-1")
    for n, expected in enumerate(snapshots, start=1):
        assert await ok(api, "GET", f"/v1/sessions/at-1/state?at={n}") == expected, n
        assert (
            await ok(api, "GET", f"/v1/sessions/at-1/state?at={n}", user="audrey", roles=AUDITOR)
            == expected
        )
    assert await ok(api, "GET", "/v1/sessions/at-1/state") == snapshots[-1]
    assert await ok(api, "GET", "/v1/sessions/at-1/state?at=99") == snapshots[-1]
    status, body = await api.call("GET", "/v1/sessions/at-1/state?at=zero")
    assert status == 400, body
    status, body = await api.call("GET", "/v1/sessions/at-1/state?at=3", user="mallory")
    assert status == 403, body


async def test_the_events_endpoint_pages_through_the_whole_history(
    serve: Callable[..., Any], sqlite_url: str
) -> None:
    api: Api = await serve(sqlite_url)
    await busy_session(api, "pages-1")
    for i in range(25):
        await ok(
            api,
            "POST",
            "/v1/sessions",
            json={"session_id": "pages-2"},
            status=201 if i == 0 else 200,
        )
        await ok(
            api,
            "POST",
            "/v1/sessions/pages-2/messages",
            json={"role": "user", "content": f"{i}"},
            status=201,
        )
    everything = (await ok(api, "GET", "/v1/sessions/pages-2/events?limit=1000"))["events"]
    assert [e["position"] for e in everything] == list(range(1, 27))

    for limit in (1, 4, 7, 26, 100):
        paged: list[dict[str, Any]] = []
        after = 0
        while True:
            page = await ok(api, "GET", f"/v1/sessions/pages-2/events?after={after}&limit={limit}")
            assert len(page["events"]) <= limit
            if not page["events"]:
                assert page["next_after"] == after
                break
            paged += page["events"]
            after = page["next_after"]
            assert after == page["events"][-1]["position"]
        assert paged == everything, limit

    first = everything[1]
    assert set(first) == {"session_id", "position", "type", "at", "data"}
    assert (first["type"], first["data"]["content"], first["data"]["role"]) == (
        "MessageRecorded",
        "0",
        "user",
    )
    for query in ("after=-1", "limit=0", "limit=x", "limit=100000"):
        status, body = await api.call("GET", f"/v1/sessions/pages-2/events?{query}")
        assert status == 400, (query, body)
    status, body = await api.call("GET", "/v1/sessions/nobody/events")
    assert status == 404, body


async def test_the_listing_is_the_callers_sessions_newest_first_across_pages(
    store_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(store_url)
    mine: dict[str, str] = {}
    for i in range(13):
        view = await ok(api, "POST", "/v1/sessions", json={"session_id": f"a-{i:02d}"}, status=201)
        mine[view["session_id"]] = view["created_at"]
        if i % 3 == 0:
            await ok(
                api, "POST", "/v1/sessions", user="bob", json={"session_id": f"b-{i}"}, status=201
            )
    newest_first = sorted(mine, key=lambda s: (mine[s], s), reverse=True)

    for limit in (1, 4, 5, 13, 50):
        seen: list[str] = []
        cursor: str | None = None
        pages = 0
        while True:
            query = f"?limit={limit}" + (f"&cursor={cursor}" if cursor else "")
            page = await ok(api, "GET", "/v1/sessions" + query)
            pages += 1
            assert len(page["sessions"]) <= limit
            seen += [s["session_id"] for s in page["sessions"]]
            cursor = page["next_cursor"]
            if cursor is None:
                break
            assert pages < 50
        assert seen == newest_first, limit
        assert pages == max(1, -(-13 // limit)), limit

    bobs = await ok(api, "GET", "/v1/sessions", user="bob")
    assert [s["session_id"] for s in bobs["sessions"]] == ["b-12", "b-9", "b-6", "b-3", "b-0"]
    assert all(s["owner"] == "bob" for s in bobs["sessions"])
    nobody = await ok(api, "GET", "/v1/sessions", user="nobody")
    assert nobody == {"sessions": [], "next_cursor": None}

    everyone: list[str] = []
    cursor = None
    while True:
        query = "?limit=6" + (f"&cursor={cursor}" if cursor else "")
        page = await ok(api, "GET", "/v1/sessions" + query, user="audrey", roles=AUDITOR)
        everyone += [s["session_id"] for s in page["sessions"]]
        cursor = page["next_cursor"]
        if cursor is None:
            break
    assert sorted(everyone) == sorted([*mine, "b-0", "b-3", "b-6", "b-9", "b-12"])
    assert len(everyone) == len(set(everyone))


async def test_a_bad_cursor_or_limit_is_400(serve: Callable[..., Any]) -> None:
    api: Api = await serve("memory://")
    for query in ("cursor=not-a-cursor", "cursor=W10", "cursor=%%%", "limit=0", "limit=x"):
        status, body = await api.call("GET", f"/v1/sessions?{query}")
        assert status == 400, (query, body)
        assert set(body["error"]) == {"code", "message"}


async def test_an_auditor_reads_everything_and_every_write_is_403(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await busy_session(api, "audited-1")
    await ok(api, "POST", "/v1/sessions", user="bob", json={"session_id": "bobs-1"}, status=201)
    await ok(
        api,
        "POST",
        "/v1/sessions/bobs-1/tasks",
        user="bob",
        json={"task_id": "t", "name": "n"},
        status=201,
    )
    sock_view = await ok(api, "GET", "/v1/sessions/bobs-1", user="bob")

    def audit(method: str, path: str, **kw: Any) -> Any:
        return api.call(method, path, user="audrey", roles=AUDITOR, **kw)

    for path in (
        "/v1/sessions/audited-1",
        "/v1/sessions/audited-1/events",
        "/v1/sessions/audited-1/state?at=2",
        "/v1/sessions/bobs-1",
        "/v1/sessions",
    ):
        status, body = await audit("GET", path)
        assert status == 200, (path, body)
    assert (await audit("GET", "/v1/sessions/bobs-1"))[1] == sock_view

    writes = [
        ("POST", "/v1/sessions", {"session_id": "auditors-own"}),
        ("POST", "/v1/sessions/bobs-1/messages", {"role": "user", "content": "x"}),
        ("POST", "/v1/sessions/bobs-1/tasks", {"task_id": "a", "name": "a"}),
        ("POST", "/v1/sessions/bobs-1/tasks/t/progress", {"done": 1}),
        ("POST", "/v1/sessions/bobs-1/tasks/t/complete", {}),
        ("POST", "/v1/sessions/bobs-1/tasks/t/fail", {"error": "x"}),
        ("DELETE", "/v1/sessions/bobs-1", None),
    ]
    for method, path, body in writes:
        status, answer = await audit(method, path, json=body)
        assert status == 403, (method, path, answer)
        assert answer["error"]["code"] == "forbidden"
    after = await ok(api, "GET", "/v1/sessions/bobs-1", user="bob")
    assert after == sock_view, "an auditor's refused write changed something"
    status, _ = await api.call("GET", "/v1/sessions/auditors-own", user="audrey", roles=AUDITOR)
    assert status == 404


async def test_replay_json_lines_equal_the_events_endpoint(
    disk_store: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(disk_store)
    await busy_session(api, "replay-1")
    events = (await ok(api, "GET", "/v1/sessions/replay-1/events?limit=1000"))["events"]

    code, out, err = await run_cli("replay", "replay-1", "--json", "--store", disk_store)
    assert code == 0, err
    assert [orjson.loads(line) for line in out.splitlines()] == events


async def test_replay_prints_a_timeline_with_each_position_and_stops_at_n(
    sqlite_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(sqlite_url)
    disk_store = sqlite_url
    await busy_session(api, "replay-1")
    events = (await ok(api, "GET", "/v1/sessions/replay-1/events?limit=1000"))["events"]

    code, out, err = await run_cli("replay", "replay-1", "--store", disk_store)
    assert code == 0, err
    lines = out.splitlines()
    assert len(lines) == len(events)
    for line, event in zip(lines, events, strict=True):
        at, position, kind = line.split()[:3]
        assert (at, int(position), kind) == (event["at"], event["position"], event["type"])
    assert "'hi'" in lines[1] and "task=t" in lines[3] and "done=1" in lines[3]

    code, out, err = await run_cli(
        "replay", "replay-1", "--at", "4", "--json", "--store", disk_store
    )
    assert code == 0, err
    assert [orjson.loads(line) for line in out.splitlines()] == events[:4]
    code, out, err = await run_cli("replay", "replay-1", "--at", "4", "--store", disk_store)
    assert code == 0, err
    timeline, _, state = out.partition("# state at position 4:\n")
    assert [int(line.split()[1]) for line in timeline.splitlines()] == [1, 2, 3, 4]
    assert orjson.loads(state) == await ok(api, "GET", "/v1/sessions/replay-1/state?at=4")


async def test_replay_of_an_unknown_session_exits_1_with_a_readable_message(
    sqlite_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(sqlite_url)
    await ok(api, "POST", "/v1/sessions", json={"session_id": "known"}, status=201)
    code, out, err = await run_cli("replay", "unknown-1", "--store", sqlite_url)
    assert code == 1
    assert out == ""
    assert "unknown-1" in err and "Traceback" not in err
    code, out, err = await run_cli("replay", "bad id!", "--store", sqlite_url)
    assert code != 0
    assert "Traceback" not in err and err.strip()


async def test_projections_rebuild_and_status_show_lag_zero(
    disk_store: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(disk_store)
    for n in range(3):
        await busy_session(api, f"proj-{n}")
    before = await ok(api, "GET", "/v1/sessions?limit=10")

    code, out, err = await run_cli(
        "projections", "rebuild", "--store", disk_store, "--batch-size", "7"
    )
    assert code == 0, err
    assert "3 sessions" in out
    assert "100.0%" in err  # the progress bar reached the end

    code, out, err = await run_cli("projections", "status", "--store", disk_store)
    assert code == 0, err
    table = {line.split()[0]: line.split()[1:] for line in out.splitlines()[1:]}
    assert set(table) == {"sessions", "connections"}
    for position, head, lag in table.values():
        assert int(lag) == 0
        assert int(position) == int(head) > 0

    after = await ok(api, "GET", "/v1/sessions?limit=10")
    assert after == before


def read_tables(store: str, sql: str) -> list[tuple[Any, ...]]:
    tables = open_tables(parse_store_url(store))
    try:
        with tables.read() as c:
            c.execute(sql)
            return [tuple(row) for row in c.fetchall()]
    finally:
        tables.close()


def write_tables(store: str, *statements: str) -> None:
    tables = open_tables(parse_store_url(store))
    try:
        with tables.write() as c:
            for statement in statements:
                c.execute(statement)
    finally:
        tables.close()


async def test_projections_rebuild_of_connections_alone_leaves_sessions_as_they_were(
    disk_store: str, serve: Callable[..., Any]
) -> None:
    """Rebuilt while the service serves: the connections' rows come back from
    the log; the sessions' rows and position are never touched. Each table
    gets a mark in a column no read shows (a session row's ``state``, a
    connection row's ``session_id``): a rebuild would write the column again."""
    api: Api = await serve(disk_store)
    for n in range(2):
        await busy_session(api, f"alone-{n}")
    await ok(api, "POST", "/v1/sessions", json={"session_id": "alone-live"}, status=201)
    live = await open_live(api, "alone-live", connection_id="alone-c1")
    gone = await open_live(api, "alone-live", connection_id="alone-c2")
    await gone.close()
    await eventually(
        lambda: closed_record(api, "alone-c2"), "the closed connection in the read model"
    )
    # Read once the close is recorded: its detach moves the session's row.
    sessions = await ok(api, "GET", "/v1/sessions?limit=10")
    connection_views = [
        await ok(api, "GET", f"/v1/connections/{c}") for c in ("alone-c1", "alone-c2")
    ]
    positions = dict(read_tables(disk_store, "SELECT name, position FROM sessiond_tracking"))
    write_tables(
        disk_store,
        "UPDATE sessiond_sessions SET state = 'MARK'",
        "UPDATE sessiond_connections SET session_id = 'MARK'",
    )
    session_rows = read_tables(disk_store, "SELECT * FROM sessiond_sessions ORDER BY session_id")

    code, out, err = await run_cli(
        "projections", "rebuild", "connections", "--store", disk_store, "--batch-size", "7"
    )
    assert code == 0, err
    assert out.startswith("rebuilt connections from position 0 to ")
    assert out.rstrip().endswith(", 2 connections") and "sessions" not in out

    assert read_tables(disk_store, "SELECT * FROM sessiond_sessions ORDER BY session_id") == (
        session_rows
    )
    assert read_tables(disk_store, "SELECT DISTINCT session_id FROM sessiond_connections") == [
        ("alone-live",)
    ]
    code, out, err = await run_cli("projections", "status", "--store", disk_store)
    assert code == 0, err
    table = {line.split()[0]: [int(v) for v in line.split()[1:]] for line in out.splitlines()[1:]}
    assert table["sessions"][0] == positions["sessions"]
    assert table["connections"][0] == positions["connections"] == table["connections"][1]

    # The service kept serving, and serves the same views.
    assert await ok(api, "GET", "/v1/sessions?limit=10") == sessions
    assert [
        await ok(api, "GET", f"/v1/connections/{c}") for c in ("alone-c1", "alone-c2")
    ] == connection_views
    await live.close()

    code, _, err = await run_cli(
        "projections", "rebuild", "sessions", "nope", "--store", disk_store
    )
    assert code == 2
    assert err.strip() == (
        "sessiond: error: no projection named 'nope'; known: sessions, connections"
    )


async def test_replay_at_zero_is_refused_with_a_readable_message(
    sqlite_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(sqlite_url)
    await ok(api, "POST", "/v1/sessions", json={"session_id": "at-zero"}, status=201)
    code, _, err = await run_cli("replay", "at-zero", "--at", "0", "--store", sqlite_url)
    assert code == 2
    assert "--at" in err and "Traceback" not in err


async def test_projections_rebuild_refuses_a_batch_size_of_zero_and_keeps_the_tables(
    sqlite_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(sqlite_url)
    await ok(api, "POST", "/v1/sessions", json={"session_id": "keep-me"}, status=201)
    code, _, err = await run_cli(
        "projections", "rebuild", "--store", sqlite_url, "--batch-size", "0"
    )
    listed = await ok(api, "GET", "/v1/sessions")  # the read model is still whole
    assert [s["session_id"] for s in listed["sessions"]] == ["keep-me"]
    assert code == 2
    assert "batch" in err and "Traceback" not in err


async def test_a_server_repairs_its_read_model_after_a_rebuild_died_half_way(
    sqlite_url: str, serve: Callable[..., Any]
) -> None:
    """`projections rebuild` truncated the tables and was killed before its
    first batch: the running server notices and serves whole views again,
    with no new write to prompt it."""
    api: Api = await serve(sqlite_url)
    snapshots = await busy_session(api, "repair-1")
    tables = open_tables(parse_store_url(sqlite_url))
    try:
        with tables.write() as c:
            tables.lock_positions(c)
            reset(tables, c, PROJECTIONS)
    finally:
        tables.close()

    async def whole_again() -> bool:
        status, view = await api.call("GET", "/v1/sessions/repair-1")
        return status == 200 and view == snapshots[-1]

    await eventually(whole_again, "the session view after the interrupted rebuild")

    # The list has no source but the tables: 503 until they are whole again.
    async def listed_again() -> bool:
        status, listed = await api.call("GET", "/v1/sessions")
        assert status in (200, 503), listed
        return status == 200 and listed["sessions"] == [snapshots[-1]]

    await eventually(listed_again, "the session list after the interrupted rebuild")


async def test_a_tampered_cursor_is_400_on_every_store(
    store_url: str, serve: Callable[..., Any]
) -> None:
    """A cursor is two strings the service wrote: a timestamp and a session
    ID. One that decodes to two other strings (a NUL, which PostgreSQL's
    text cannot hold; a date that is none; an ID outside the ID rule) was
    not handed out: 400 invalid_query, never the store's refusal as 503."""
    api: Api = await serve(store_url)
    await ok(api, "POST", "/v1/sessions", json={"session_id": "kept"}, status=201)
    for created_at, session_id in (
        ("\u0000", "kept"),
        ("2026-11-22T06:37:37.123456Z", "a\u0000b"),
        ("yesterday", "kept"),
        ("2026-11-22T06:37:37.123456Z", "not an id"),
    ):
        raw = json.dumps([created_at, session_id]).encode()
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        status, body = await api.call("GET", f"/v1/sessions?cursor={cursor}")
        assert status == 400, (created_at, session_id, body)
        assert body["error"]["code"] == "invalid_query", body
    listed = await ok(api, "GET", "/v1/sessions")
    assert [s["session_id"] for s in listed["sessions"]] == ["kept"]
