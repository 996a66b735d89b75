"""Several nodes on one PostgreSQL act as one service: two real server
processes on one real database, real sockets, real kills."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import pytest
from prometheus_client.parser import text_string_to_metric_families

from service.application.auth import TokenSigner
from service.client import SessionClient
from tests.conftest import TEST_SECRET, ServerProcess, ThrowawayPostgres

pytestmark = pytest.mark.postgres

SIGNER = TokenSigner(TEST_SECRET)


def auth(user: str = "alice") -> dict[str, str]:
    return {"Authorization": "Bearer " + SIGNER.mint(user)}


async def open_live(
    http: aiohttp.ClientSession, base_url: str, session_id: str, connection_id: str
) -> tuple[aiohttp.ClientWebSocketResponse, list[dict[str, Any]]]:
    """A socket walked to PROCESSING_READY; returns it and the events it got."""
    ws = await http.ws_connect(
        f"{base_url}/v1/ws?session_id={session_id}&connection_id={connection_id}"
    )
    welcome = await ws.receive_json(timeout=10)
    assert welcome["type"] == "welcome"
    await ws.send_json({"type": "auth", "token": SIGNER.mint("alice")})
    events: list[dict[str, Any]] = []
    while True:
        frame = await ws.receive_json(timeout=10)
        if frame["type"] == "event":
            events.append(frame["event"])
        elif frame["type"] == "state" and frame["state"] == "PROCESSING_READY":
            return ws, events


async def post_messages(
    http: aiohttp.ClientSession, base_url: str, session_id: str, count: int, tag: str
) -> list[int]:
    positions = []
    for i in range(count):
        async with http.post(
            f"{base_url}/v1/sessions/{session_id}/messages",
            json={"role": "user", "content": f"{tag}-{i}"},
            headers=auth(),
        ) as r:
            assert r.status == 201, await r.text()
            positions.append((await r.json())["position"])
    return positions


async def wait_until(check: Callable[[], Any], what: str, limit: float = 30.0) -> Any:
    """Poll ``check`` until it returns something truthy; fail (not hang) after ``limit``."""
    deadline = time.monotonic() + limit
    while True:
        result = await check()
        if result:
            return result
        if time.monotonic() > deadline:
            pytest.fail(f"gave up waiting for {what}")
        await asyncio.sleep(0.1)


@pytest.fixture
def two_nodes(
    postgres_url: str, server_process: Callable[..., ServerProcess]
) -> tuple[ServerProcess, ServerProcess]:
    a = server_process(postgres_url, SESSIOND_NODE="node-a", SESSIOND_NODE_TIMEOUT="1")
    b = server_process(postgres_url, SESSIOND_NODE="node-b", SESSIOND_NODE_TIMEOUT="1")
    return a, b


async def test_a_socket_on_one_node_receives_what_another_node_records_in_order_without_gaps(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_nodes
    async with aiohttp.ClientSession() as http:
        async with http.post(
            f"{b.base_url}/v1/sessions", json={"session_id": "cross-1"}, headers=auth()
        ) as r:
            assert r.status == 201
        # Producers on node B start before the socket on node A connects, so
        # events land before, during and after its handshake (the seam).
        producers = [
            asyncio.create_task(post_messages(http, b.base_url, "cross-1", 40, f"p{n}"))
            for n in range(3)
        ]
        await asyncio.sleep(0.05)
        ws, events = await open_live(http, a.base_url, "cross-1", "watcher-on-a")
        acknowledged = [p for task in await asyncio.gather(*producers) for p in task]
        last = max(acknowledged)
        while not events or events[-1]["position"] < last:
            frame = await ws.receive_json(timeout=15)
            if frame["type"] == "event":
                events.append(frame["event"])
        await ws.close()
    positions = [e["position"] for e in events]
    assert positions == list(range(1, positions[-1] + 1)), "a position was dropped or repeated"
    assert set(acknowledged) <= set(positions)


async def test_a_reload_on_another_node_supersedes_the_old_socket(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_nodes
    async with aiohttp.ClientSession() as http:
        old, _ = await open_live(http, a.base_url, "reload-1", "tab-on-a")
        new, _ = await open_live(http, b.base_url, "reload-1", "tab-on-b")
        async for _ in old:
            pass
        assert old.close_code == 4409
        async with http.get(f"{b.base_url}/v1/connections/tab-on-a", headers=auth()) as r:
            view = await r.json()
        assert (view["state"], view["close_code"], view["close_reason"], view["node"]) == (
            "CLOSED",
            4409,
            "superseded",
            "node-a",
        )
        async with http.get(f"{a.base_url}/v1/sessions/reload-1", headers=auth()) as r:
            assert (await r.json())["connections"] == ["tab-on-b"]
        await new.close()


async def test_a_peer_records_the_connections_of_a_killed_node_as_lost(
    two_nodes: tuple[ServerProcess, ServerProcess],
) -> None:
    a, b = two_nodes
    async with aiohttp.ClientSession() as http:
        ws, _ = await open_live(http, b.base_url, "orphan-1", "tab-on-b")
        acknowledged = await post_messages(http, a.base_url, "orphan-1", 3, "before-kill")
        b.kill()
        await ws.close()

        async def recorded_lost() -> dict[str, Any] | None:
            async with http.get(f"{a.base_url}/v1/connections/tab-on-b", headers=auth()) as r:
                view = await r.json()
            return view if view["state"] == "CLOSED" else None

        view = await wait_until(recorded_lost, "node-a to record node-b's socket as lost")
        assert (view["close_code"], view["close_reason"], view["node"]) == (1006, "lost", "node-b")
        async with http.get(f"{a.base_url}/v1/sessions/orphan-1", headers=auth()) as r:
            session = await r.json()
        assert session["connections"] == []
        async with http.get(
            f"{a.base_url}/v1/sessions/orphan-1/events?limit=1000", headers=auth()
        ) as r:
            positions = [e["position"] for e in (await r.json())["events"]]
        assert set(acknowledged) <= set(positions)
        assert positions == list(range(1, len(positions) + 1))


async def test_nodes_starting_together_create_the_schema_once(
    postgres_url: str, server_process: Callable[..., ServerProcess]
) -> None:
    nodes = await asyncio.gather(
        *(asyncio.to_thread(server_process, postgres_url, SESSIOND_NODE=f"n{i}") for i in range(3))
    )
    async with aiohttp.ClientSession() as http:
        for node in nodes:
            async with http.get(f"{node.base_url}/healthz") as r:
                assert r.status == 200


async def test_a_postgresql_restart_loses_nothing_acknowledged(
    throwaway_postgres: ThrowawayPostgres, server_process: Callable[..., ServerProcess]
) -> None:
    node = server_process(throwaway_postgres.url, SESSIOND_NODE="solo")
    acknowledged: list[int] = []
    seen: list[int] = []
    async with (
        aiohttp.ClientSession() as http,
        SessionClient(
            node.base_url, "survivor-1", SIGNER.mint("alice"), http=http, max_backoff=0.5
        ) as client,
    ):

        async def consume() -> None:
            async for event in client:
                seen.append(event["position"])

        consumer = asyncio.create_task(consume())
        await client.wait_live()
        acknowledged += await post_messages(http, node.base_url, "survivor-1", 5, "before")

        throwaway_postgres.stop()
        async with http.post(
            f"{node.base_url}/v1/sessions/survivor-1/messages",
            json={"role": "user", "content": "while down"},
            headers=auth(),
        ) as r:
            assert r.status == 503
            assert (await r.json())["error"]["code"] == "unavailable"
        async with http.get(f"{node.base_url}/healthz") as r:
            assert r.status == 503
        throwaway_postgres.start()

        async def accepted_again() -> bool:
            async with http.post(
                f"{node.base_url}/v1/sessions/survivor-1/messages",
                json={"role": "user", "content": "after", "message_id": "after-restart"},
                headers=auth(),
            ) as r:
                if r.status in (200, 201):
                    acknowledged.append((await r.json())["position"])
                    return True
                return False

        await wait_until(accepted_again, "writes to succeed after PostgreSQL is back")
        acknowledged += await post_messages(http, node.base_url, "survivor-1", 5, "after")
        await wait_until(
            lambda: asyncio.sleep(0, result=bool(seen) and seen[-1] >= max(acknowledged)),
            "the client to see every acknowledged event",
        )
        consumer.cancel()
    assert seen == list(range(seen[0], seen[-1] + 1)), "a position was dropped or repeated"
    assert set(acknowledged) <= set(seen)


def test_a_node_name_a_live_node_holds_is_refused_and_freed_when_that_node_dies(
    postgres_url: str, server_process: Callable[..., ServerProcess]
) -> None:
    first = server_process(postgres_url, SESSIOND_NODE="node-twin")
    twin = ServerProcess(postgres_url, SESSIOND_NODE="node-twin")
    with pytest.raises(RuntimeError) as refused:
        twin.start(first.log_path.with_name("twin.log"))  # type: ignore[union-attr]
    assert "a live node already serves under the name 'node-twin'" in str(refused.value)
    assert "Traceback" not in str(refused.value)
    first.kill()
    # kill -9 ends its connection, and with it the lock: the name is free at once.
    again = server_process(postgres_url, SESSIOND_NODE="node-twin")
    again.stop()


UNBUDGETED = {
    "SESSIOND_USER_SOCKETS": "0",
    "SESSIOND_USER_UPGRADES": "100000/1s",
    "SESSIOND_USER_SESSIONS": "100000/1s",
}


async def open_many_then_kill(
    http: aiohttp.ClientSession, node: ServerProcess, count: int
) -> float:
    """``count`` live sockets on ``node``, then kill -9 it; when it was killed."""
    handshakes = asyncio.Semaphore(20)

    async def open_one(n: int) -> aiohttp.ClientWebSocketResponse:
        async with handshakes:
            ws, _ = await open_live(http, node.base_url, f"doomed-{n}", f"tab-{n}-on-b")
            return ws

    sockets = await asyncio.gather(*(open_one(n) for n in range(count)))
    node.kill()
    killed = time.monotonic()
    for ws in sockets:
        await ws.close()
    return killed


def open_on(db: Any, node: str) -> int:
    row = db.execute(
        "SELECT count(*) FROM sessiond_connections WHERE node = %s AND state <> 'CLOSED'", [node]
    ).fetchone()
    return int(row[0])


async def test_a_peer_keeps_its_heartbeat_while_it_records_a_dead_nodes_many_connections(
    postgres_url: str, server_process: Callable[..., ServerProcess]
) -> None:
    """Recording a dead node's connections lost takes a while when it held
    many; the peer doing it must go on heartbeating meanwhile, or every
    other node (one started then, one whose turn comes first) presumes it
    dead too and records its live sockets lost."""
    import psycopg

    a = server_process(postgres_url, SESSIOND_NODE="node-a", SESSIOND_NODE_TIMEOUT="1")
    b = server_process(
        postgres_url, SESSIOND_NODE="node-b", SESSIOND_NODE_TIMEOUT="1", **UNBUDGETED
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        survivor, _ = await open_live(http, a.base_url, "stays-1", "tab-on-a")
        await open_many_then_kill(http, b, 800)
        stalest = 0.0
        with psycopg.connect(postgres_url, autocommit=True) as db:
            deadline = time.monotonic() + 60
            while open_on(db, "node-b"):
                row = db.execute(
                    "SELECT EXTRACT(EPOCH FROM clock_timestamp()) - last_seen "
                    "FROM sessiond_nodes WHERE node = 'node-a'"
                ).fetchone()
                stalest = max(stalest, float(row[0]) if row else float("inf"))
                assert time.monotonic() < deadline, "node-b's connections are still open"
                await asyncio.sleep(0.05)
        assert stalest < 1.0, f"node-a went {stalest:.1f} s without a heartbeat (timeout 1 s)"
        async with http.get(f"{a.base_url}/v1/connections/tab-on-a", headers=auth()) as r:
            assert (await r.json())["state"] == "PROCESSING_READY"
        await survivor.close()


async def test_a_dead_nodes_many_connections_are_recorded_lost_within_the_bound(
    postgres_url: str, server_process: Callable[..., ServerProcess]
) -> None:
    """Within node_timeout x 4/3 of a kill -9 (docs/operations.md), with a
    little over for the commits, however many sockets the dead node held:
    its connections are closed in the writer's batches, not one commit each
    (counted in the commits of the peer that records them, not timed: a busy
    machine stretches any time)."""
    import psycopg

    a = server_process(postgres_url, SESSIOND_NODE="node-a", SESSIOND_NODE_TIMEOUT="1")
    b = server_process(
        postgres_url, SESSIOND_NODE="node-b", SESSIOND_NODE_TIMEOUT="1", **UNBUDGETED
    )
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:

        async def commits_of_a() -> float:
            async with http.get(f"{a.base_url}/metrics") as r:
                text = await r.text()
            for family in text_string_to_metric_families(text):
                if family.name == "sessiond_store_transactions":
                    return sum(sample.value for sample in family.samples)
            raise AssertionError("no sessiond_store_transactions on node-a")

        killed = await open_many_then_kill(http, b, 1500)
        before = await commits_of_a()
        with psycopg.connect(postgres_url, autocommit=True) as db:
            while open_on(db, "node-b"):
                assert time.monotonic() - killed < 60, "node-b's connections are still open"
                await asyncio.sleep(0.05)
        took = time.monotonic() - killed
        commits = await commits_of_a() - before
    # One commit each would be 1,500; batches of up to 256 closes, a few.
    assert commits < 150, f"node-a recorded 1,500 closes in {commits:.0f} commits ({took:.1f} s)"
