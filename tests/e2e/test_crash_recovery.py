"""Crash recovery: a server process killed with -9 while sockets
are open; the next start records each connection it left open as CLOSED
``lost``, detaches it from its session, and nothing acknowledged before the
kill is missing."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import ServerProcess
from tests.e2e.wsclient import GUARD, all_events, call, open_socket, post_messages, report_progress


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


@pytest.fixture(params=["sqlite", "postgres"])
def disk_store(request: pytest.FixtureRequest) -> str:
    if request.param == "sqlite":
        return str(request.getfixturevalue("sqlite_url"))
    return str(request.getfixturevalue("postgres_url"))


async def test_connections_left_open_by_a_killed_server_are_recorded_lost_on_the_next_start(
    disk_store: str,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    env = {"SESSIOND_MAX_CONNECTIONS_PER_SESSION": "2", "SESSIOND_NODE": "node-crash"}
    first = await asyncio.to_thread(server_process, disk_store, **env)
    base = first.base_url
    tabs = [
        await open_socket(http, base, "crash-1", connection_id="tab-1"),
        await open_socket(http, base, "crash-1", connection_id="tab-2"),
    ]
    other = await open_socket(http, base, "crash-2", connection_id="other-tab", user="bob")
    # One more socket that never authenticates: left in ACCEPTED by the kill.
    half = await http.ws_connect(f"{base}/v1/ws?session_id=crash-1&connection_id=half-open")
    welcome = await half.receive_json(timeout=GUARD)
    assert welcome["state"] == "ACCEPTED"
    status, view = await call(http, "GET", f"{base}/v1/sessions/crash-1")
    assert (status, view["connections"]) == (200, ["tab-1", "tab-2"])

    acked = await asyncio.gather(
        post_messages(http, base, "crash-1", 15, "a"),
        post_messages(http, base, "crash-1", 15, "b"),
        report_progress(http, base, "crash-1", "job", 8),
    )
    acknowledged = sorted(p for positions in acked for p in positions)
    for tab in tabs:
        await tab.until_position(acknowledged[-1])

    await asyncio.to_thread(first.kill)
    for sock in [*tabs, other]:
        await sock.close()
    await half.close()

    second = ServerProcess(disk_store, port=first.port, **env)
    await asyncio.to_thread(second.start, tmp_path / "after-crash.log")
    try:
        for connection_id, user in (("tab-1", "alice"), ("tab-2", "alice"), ("other-tab", "bob")):
            status, conn = await call(
                http, "GET", f"{base}/v1/connections/{connection_id}", user=user
            )
            assert status == 200, conn
            assert conn["state"] == "CLOSED", conn
            assert (conn["close_code"], conn["close_reason"]) == (1006, "lost")
            assert conn["closed_at"] is not None
            status, body = await call(
                http, "GET", f"{base}/v1/connections/{connection_id}/events", user=user
            )
            assert [e["type"] for e in body["events"]] == [
                "CONNECTING",
                "ACCEPTED",
                "AUTHENTICATED",
                "SERVICES_READY",
                "PROCESSING_READY",
                "CLOSED",
            ]

        status, body = await call(http, "GET", f"{base}/v1/connections/half-open/events")
        assert status == 200, body
        assert [e["type"] for e in body["events"]] == ["CONNECTING", "ACCEPTED", "CLOSED"]
        assert body["events"][-1]["data"]["details"] == {"code": 1006, "reason": "lost"}

        status, view = await call(http, "GET", f"{base}/v1/sessions/crash-1")
        assert status == 200, view
        assert view["connections"] == []
        assert view["message_count"] == 30
        assert [(t["task_id"], t["state"], t["done"]) for t in view["tasks"]] == [
            ("job", "COMPLETED", 8)
        ]
        status, view = await call(http, "GET", f"{base}/v1/sessions/crash-2", user="bob")
        assert view["connections"] == []

        events = await all_events(http, base, "crash-1")
        positions = [e["position"] for e in events]
        assert positions == list(range(1, len(events) + 1)), "positions are not dense"
        assert set(acknowledged) <= set(positions), "an acknowledged event is missing"
        contents = [e["data"]["content"] for e in events if e["type"] == "MessageRecorded"]
        assert sorted(contents) == sorted(
            [f"a-{i}" for i in range(15)] + [f"b-{i}" for i in range(15)]
        )
        lost = [e["data"] for e in events if e["type"] == "ConnectionDetached"]
        assert sorted((d["connection_id"], d["reason"]) for d in lost) == [
            ("tab-1", "lost"),
            ("tab-2", "lost"),
        ]
        assert events[-1]["type"] == "ConnectionDetached"

        # The session carries on: a new socket gets the whole history, then live.
        again = await open_socket(http, base, "crash-1", connection_id="tab-3", after=0)
        more = await post_messages(http, base, "crash-1", 2, "c")
        await again.until_position(more[-1])
        await again.close()
        assert again.positions == list(range(1, more[-1] + 1))
    finally:
        second.stop()


async def test_a_restart_after_a_kill_records_nothing_twice_for_a_second_restart(
    sqlite_url: str,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    first = await asyncio.to_thread(server_process, sqlite_url)
    base = first.base_url
    tab = await open_socket(http, base, "crash-3", connection_id="only-tab")
    await post_messages(http, base, "crash-3", 3, "m")
    await asyncio.to_thread(first.kill)
    await tab.close()

    servers: list[ServerProcess] = []
    try:
        for n in range(2):
            server = ServerProcess(sqlite_url, port=first.port)
            servers.append(server)
            await asyncio.to_thread(server.start, tmp_path / f"restart-{n}.log")
            status, body = await call(http, "GET", f"{base}/v1/connections/only-tab/events")
            assert status == 200, body
            kinds = [e["type"] for e in body["events"]]
            assert kinds.count("CLOSED") == 1, kinds
            await asyncio.to_thread(server.terminate)
        events: list[dict[str, Any]] = []
        server = ServerProcess(sqlite_url, port=first.port)
        servers.append(server)
        await asyncio.to_thread(server.start, tmp_path / "last.log")
        events = await all_events(http, base, "crash-3")
    finally:
        for server in servers:
            server.stop()
    detached = [e for e in events if e["type"] == "ConnectionDetached"]
    assert [d["data"]["reason"] for d in detached] == ["lost"]
    assert [e["position"] for e in events] == list(range(1, len(events) + 1))


async def test_a_restart_under_another_node_name_records_the_killed_runs_sockets_lost_first(
    sqlite_url: str,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
    tmp_path: Path,
) -> None:
    """One serve per SQLite store: whatever the node is called now (the
    default name is the host's, which a re-created container changes), every
    connection the store shows open at start was left by a dead run, and is
    recorded lost before the node serves, not a node timeout later."""
    first = await asyncio.to_thread(server_process, sqlite_url, SESSIOND_NODE="host-before")
    base = first.base_url
    tab = await open_socket(http, base, "renamed-1", connection_id="tab-before")
    await asyncio.to_thread(first.kill)
    await tab.close()

    second = ServerProcess(sqlite_url, port=first.port, SESSIOND_NODE="host-after")
    await asyncio.to_thread(second.start, tmp_path / "renamed.log")
    try:
        status, conn = await call(http, "GET", f"{base}/v1/connections/tab-before")
        assert status == 200, conn
        assert (conn["state"], conn["close_code"], conn["close_reason"], conn["node"]) == (
            "CLOSED",
            1006,
            "lost",
            "host-before",
        )
        status, view = await call(http, "GET", f"{base}/v1/sessions/renamed-1")
        assert (status, view["connections"]) == (200, [])
    finally:
        second.stop()


async def test_after_a_restart_known_ids_are_found_though_the_writer_holds_nothing(
    disk_store: str,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    """A fresh server takes an ID it holds nothing for to be new (ADR 0018):
    for a session and a connection ID recorded before it started, the store
    refuses that guess and the writer answers as if it had read first."""
    first = await asyncio.to_thread(server_process, disk_store, SESSIOND_NODE="node-one")
    sock = await open_socket(http, first.base_url, "known", connection_id="tab-old")
    await post_messages(http, first.base_url, "known", 3, "m")
    await sock.close()
    assert await asyncio.to_thread(first.terminate) == 0

    second = await asyncio.to_thread(server_process, disk_store, SESSIOND_NODE="node-two")
    base = second.base_url
    status, view = await call(http, "POST", f"{base}/v1/sessions", json={"session_id": "known"})
    assert status == 200 and view["owner"] == "alice", view
    status, body = await call(
        http, "POST", f"{base}/v1/sessions", user="bob", json={"session_id": "known"}
    )
    assert (status, body["error"]["code"]) == (409, "session_owned_by_other")
    # The old connection's ID is still taken: 409 before the upgrade.
    with pytest.raises(aiohttp.WSServerHandshakeError) as refused:
        await http.ws_connect(f"{base}/v1/ws?session_id=known&connection_id=tab-old")
    assert refused.value.status == 409
    status, body = await call(http, "GET", f"{base}/v1/connections/tab-old/events")
    assert [e["type"] for e in body["events"]].count("CONNECTING") == 1

    again = await open_socket(http, base, "known", connection_id="tab-new", after=0)
    more = await post_messages(http, base, "known", 1, "n")
    await again.until_position(more[-1])
    await again.close()
    assert again.positions == list(range(1, more[-1] + 1))
    async with http.get(f"{base}/metrics") as r:
        metrics = await r.text()
    guesses = [line for line in metrics.splitlines() if line.startswith("sessiond_writer_wrong")]
    assert guesses and float(guesses[0].split()[-1]) >= 1, metrics[-2000:]
