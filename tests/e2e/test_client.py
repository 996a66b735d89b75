"""The Python client (service.client.SessionClient) against real servers: it
iterates a session's events in order, exposes its state and connection ID,
sends messages, survives a server killed and restarted on the same store in
the middle of a stream without yielding a position twice or skipping one,
keeps going across its token's expiry with a token provider, and stops with
ClientRefused (4401/4403) or Superseded (4409)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import aiohttp
import jwt
import pytest

from service.client import ClientRefused, SessionClient, Superseded
from service.edge.context import SOCKETS
from tests.conftest import Api, ServerProcess
from tests.e2e.wsclient import (
    GUARD,
    SIGNER,
    call,
    eventually,
    open_socket,
    post_messages,
    report_progress,
)


class Consumer:
    """A SessionClient iterated by a background task into a list."""

    def __init__(self, client: SessionClient) -> None:
        self.client = client
        self.events: list[dict[str, Any]] = []
        self.task = asyncio.create_task(self._consume())

    async def _consume(self) -> None:
        async for event in self.client:
            self.events.append(event)

    @property
    def positions(self) -> list[int]:
        return [e["position"] for e in self.events]

    async def until_position(self, position: int) -> None:
        async def reached() -> bool:
            if self.task.done():
                self.task.result()  # surface the client's exception
                raise AssertionError(f"the client stopped at {self.positions[-1:]}")
            return bool(self.events) and self.events[-1]["position"] >= position

        await eventually(reached, f"position {position} through the client")

    async def stop(self) -> None:
        await self.client.close()
        self.task.cancel()
        with contextlib.suppress(asyncio.CancelledError):
            await self.task


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


async def refusal(client: SessionClient) -> ClientRefused:
    """What the client stops with when iterated: ClientRefused, in time."""
    with pytest.raises(ClientRefused) as refused:
        async with asyncio.timeout(GUARD):
            async for _ in client:
                pass
    return refused.value


def token(user: str = "alice") -> str:
    return SIGNER.mint(user, ["user"])


def exp_of(token: str) -> int:
    return int(jwt.decode(token, options={"verify_signature": False})["exp"])


async def head_position(http: aiohttp.ClientSession, base_url: str, session_id: str) -> int:
    status, view = await call(http, "GET", f"{base_url}/v1/sessions/{session_id}")
    assert status == 200, view
    return int(view["position"])


async def test_the_client_iterates_a_running_tasks_events_in_order_and_exposes_its_state(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "cli-1"})
    assert status == 201
    client = SessionClient(api.base_url, "cli-1", token(), connection_prefix="py-tab")
    assert client.state == "CLOSED"
    async with client:
        consumer = Consumer(client)
        await asyncio.wait_for(client.wait_live(), GUARD)
        assert client.state == "PROCESSING_READY"
        assert client.connection_id is not None
        assert client.connection_id.startswith("py-tab")

        status, view = await api.call("GET", f"/v1/connections/{client.connection_id}")
        assert status == 200, view
        assert (view["state"], view["session_id"], view["user_id"]) == (
            "PROCESSING_READY",
            "cli-1",
            "alice",
        )

        acked = await report_progress(api.http, api.base_url, "cli-1", "job", 5)
        await consumer.until_position(acked[-1])
        await consumer.stop()

    assert consumer.positions == list(range(1, acked[-1] + 1))
    by_position = {e["position"]: e for e in consumer.events}
    assert [by_position[p]["type"] for p in acked] == (
        ["TaskStarted"] + ["TaskProgressed"] * 5 + ["TaskCompleted"]
    )
    assert [by_position[p]["data"]["done"] for p in acked[1:-1]] == [1, 2, 3, 4, 5]
    assert client.last_position == acked[-1]
    assert client.reconnects == 0
    assert client.state == "CLOSED"


async def test_send_message_round_trips_as_an_event_to_the_sender(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    async with SessionClient(api.base_url, "cli-2", token()) as client:
        consumer = Consumer(client)
        message_id = await asyncio.wait_for(client.send_message("hello there"), GUARD)
        again = await asyncio.wait_for(
            client.send_message("hello there", message_id=message_id), GUARD
        )
        assert again == message_id
        mine: list[dict[str, Any]] = []

        async def arrived() -> bool:
            mine[:] = [e for e in consumer.events if e["type"] == "MessageRecorded"]
            return bool(mine)

        await eventually(arrived, "the message as an event")
        last = await head_position(api.http, api.base_url, "cli-2")
        await consumer.until_position(last)
        await consumer.stop()

    [event] = [e for e in consumer.events if e["type"] == "MessageRecorded"]
    assert event["data"]["message_id"] == message_id
    assert event["data"]["content"] == "hello there"
    assert event["data"]["role"] == "user"
    assert event["data"]["connection_id"] == client.connection_id
    assert consumer.positions == list(range(1, last + 1))
    # The session was created by the client's first connection, as alice's.
    _, view = await api.call("GET", "/v1/sessions/cli-2")
    assert (view["owner"], view["message_count"]) == ("alice", 1)


async def test_a_client_started_with_after_yields_only_later_positions(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "cli-3"})
    assert status == 201
    acked = await post_messages(api.http, api.base_url, "cli-3", 6, "m")
    async with SessionClient(api.base_url, "cli-3", token(), after=4) as client:
        consumer = Consumer(client)
        more = await post_messages(api.http, api.base_url, "cli-3", 2, "n")
        await consumer.until_position(more[-1])
        await consumer.stop()
    # 5 and 6 from the backlog, the client's own attach, then the new messages.
    assert consumer.positions == list(range(5, consumer.positions[-1] + 1))
    assert consumer.positions[-1] >= more[-1]
    assert set(acked[3:]) <= set(consumer.positions)
    assert consumer.events[0]["data"]["content"] == "m-3"


async def test_another_users_session_raises_client_refused_with_4403(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    status, _ = await api.call("POST", "/v1/sessions", user="bob", json={"session_id": "bobs"})
    assert status == 201
    async with SessionClient(api.base_url, "bobs", token("alice")) as client:
        refused = await refusal(client)
    assert refused.code == 4403
    assert "forbidden" in refused.reason
    assert client.close_code == 4403
    assert client.reconnects == 0


async def test_an_upgrade_refused_for_good_raises_client_refused_and_ends_waiting(
    serve: Callable[..., Any],
) -> None:
    """An upgrade the server refuses before it happens (here 400 invalid_id)
    is not retried forever as a dropped connection: ClientRefused with the
    status. A task waiting for the socket to be live is told, not left
    waiting forever."""
    api: Api = await serve("memory://")
    async with SessionClient(api.base_url, "not an id", token("alice")) as client:
        waiting = asyncio.create_task(client.send_message("never sent"))
        refused = await refusal(client)
        assert refused.code == 400
        assert client.reconnects == 0
        with pytest.raises(ConnectionError):
            async with asyncio.timeout(GUARD):
                await waiting


async def test_a_bad_token_raises_client_refused_with_4401(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    async with SessionClient(api.base_url, "cli-4", "not-a-token") as client:
        refused = await refusal(client)
    assert refused.code == 4401
    assert client.reconnects == 0


async def test_being_superseded_by_a_newer_connection_raises_superseded(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    async with SessionClient(api.base_url, "cli-5", token()) as client:
        consumer = Consumer(client)
        await asyncio.wait_for(client.wait_live(), GUARD)
        newer = await open_socket(api.http, api.base_url, "cli-5", connection_id="newer-tab")
        with pytest.raises(Superseded):
            await asyncio.wait_for(consumer.task, GUARD)
        await newer.close()
    status, view = await api.call("GET", f"/v1/connections/{client.connection_id}")
    assert status == 200, view
    assert (view["state"], view["close_code"]) == ("CLOSED", 4409)


async def start_on_port(store_url: str, port: int, log: Path) -> ServerProcess:
    server = ServerProcess(store_url, port=port)
    await asyncio.to_thread(server.start, log)
    return server


async def test_the_client_yields_every_position_once_across_server_restarts(
    server_process: Callable[..., ServerProcess],
    sqlite_url: str,
    tmp_path: Path,
    http: aiohttp.ClientSession,
) -> None:
    first = await asyncio.to_thread(server_process, sqlite_url)
    base = first.base_url
    status, _ = await call(http, "POST", f"{base}/v1/sessions", json={"session_id": "restart-1"})
    assert status == 201
    restarted: list[ServerProcess] = []
    client = SessionClient(base, "restart-1", token(), max_backoff=0.5)
    try:
        async with client:
            consumer = Consumer(client)
            acked = await post_messages(http, base, "restart-1", 10, "before")
            acked += await report_progress(http, base, "restart-1", "job-1", 5)
            await consumer.until_position(acked[-1])

            # kill -9 in the middle of the stream, then a new process on the same store and port.
            await asyncio.to_thread(first.kill)
            restarted.append(await start_on_port(sqlite_url, first.port, tmp_path / "second.log"))
            acked += await post_messages(http, base, "restart-1", 10, "after-kill")
            await consumer.until_position(acked[-1])

            # A graceful stop (1001) and another restart.
            assert await asyncio.to_thread(restarted[0].terminate) == 0
            restarted.append(await start_on_port(sqlite_url, first.port, tmp_path / "third.log"))
            acked += await report_progress(http, base, "restart-1", "job-2", 5)
            last = await head_position(http, base, "restart-1")
            await consumer.until_position(last)
            await consumer.stop()
        status, body = await call(http, "GET", f"{base}/v1/sessions/restart-1/events?limit=1000")
        assert status == 200, body
    finally:
        for server in restarted:
            server.stop()

    # Everything up to the last position seen, which is at least the head read
    # after the last write (the client's own reattach may come after it).
    assert consumer.positions == list(range(1, consumer.positions[-1] + 1)), (
        "a position was skipped or repeated"
    )
    assert consumer.positions[-1] >= last
    assert set(acked) <= set(consumer.positions)
    assert client.reconnects >= 2
    assert [e["position"] for e in body["events"]] == list(range(1, len(body["events"]) + 1))
    assert body["events"][: len(consumer.events)] == consumer.events
    # The killed process's connection was recorded lost by the next start,
    # the terminated one's as a server shutdown.
    detached = [e["data"] for e in body["events"] if e["type"] == "ConnectionDetached"]
    assert [d["reason"] for d in detached[:2]] == ["lost", "server_shutdown"]


async def test_max_attempts_counts_failures_in_a_row_not_reconnects_over_a_lifetime(
    serve: Callable[..., Any],
) -> None:
    """A client allowed 2 failed attempts in a row survives any number of
    server-side closes it recovers from (here: four 1001 shutdown closes)."""
    api: Api = await serve("memory://")
    sockets = api.server.app[SOCKETS]  # type: ignore[attr-defined]
    async with SessionClient(api.base_url, "cli-6", token(), max_attempts=2) as client:
        consumer = Consumer(client)
        for round_ in range(4):
            await asyncio.wait_for(client.wait_live(), GUARD)
            live_as = client.connection_id
            acked = await post_messages(api.http, api.base_url, "cli-6", 2, f"r{round_}")
            await consumer.until_position(acked[-1])
            await sockets.close_all(1001, "server_shutdown", grace=GUARD)

            async def moved_on(before: str | None = live_as) -> bool:
                if consumer.task.done():
                    consumer.task.result()
                return client.connection_id != before and client.state == "PROCESSING_READY"

            await eventually(moved_on, f"a new live connection after round {round_}")
        last = await head_position(api.http, api.base_url, "cli-6")
        await consumer.until_position(last)
        await consumer.stop()
    assert consumer.positions == list(range(1, consumer.positions[-1] + 1))
    assert client.reconnects == 4
    assert client.failures == 0


# --- tokens that expire -------------------------------------------------------------------

SHORT = 3  # seconds a short-lived token lives


async def connection_types(api: Api, connection_id: str | None) -> list[str]:
    status, body = await api.call(
        "GET", f"/v1/connections/{connection_id}/events", user="auditor-1", roles=("auditor",)
    )
    assert status == 200, body
    return [e["type"] for e in body["events"]]


async def test_with_a_token_provider_the_client_reconnects_after_expiry_yielding_each_position_once(
    serve: Callable[..., Any],
) -> None:
    """No warnings (SESSIOND_TOKEN_WARNING=0): each socket lives until its
    token expires; the client asks its (async) provider again and resumes."""
    api: Api = await serve("memory://", token_warning=0)
    asked: list[str] = []

    async def provider() -> str:
        asked.append(SIGNER.mint("alice", ["user"], ttl=SHORT))
        return asked[-1]

    async with SessionClient(api.base_url, "cli-exp", provider, max_attempts=3) as client:
        consumer = Consumer(client)
        await asyncio.wait_for(client.wait_live(), GUARD)
        first_connection = client.connection_id
        acked = await post_messages(api.http, api.base_url, "cli-exp", 5, "before")
        await consumer.until_position(acked[-1])

        async def reconnected() -> bool:
            if consumer.task.done():
                consumer.task.result()
            return client.connection_id != first_connection and client.state == "PROCESSING_READY"

        await eventually(reconnected, "a connection with a new token")
        acked += await post_messages(api.http, api.base_url, "cli-exp", 5, "after")
        last = await head_position(api.http, api.base_url, "cli-exp")
        await consumer.until_position(last)
        await consumer.stop()

    assert consumer.positions == list(range(1, consumer.positions[-1] + 1))
    assert set(acked) <= set(consumer.positions)
    assert len(asked) >= 2 and client.reconnects >= 1
    status, view = await api.call("GET", f"/v1/connections/{first_connection}")
    assert status == 200, view
    assert (view["close_code"], view["close_reason"]) == (4401, "token_expired")


async def test_with_a_token_provider_the_client_refreshes_on_token_expiring_and_keeps_its_socket(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    asked: list[str] = []

    def provider() -> str:
        # Warned a quarter of its life ahead: time enough to answer.
        asked.append(SIGNER.mint("alice", ["user"], ttl=SHORT + 2))
        return asked[-1]

    async with SessionClient(api.base_url, "cli-refresh", provider) as client:
        consumer = Consumer(client)
        await asyncio.wait_for(client.wait_live(), GUARD)
        connection_id = client.connection_id

        async def refreshed_twice() -> bool:
            # The second refresh is asked for after the first refreshed token
            # was warned about, which is after the first token expired.
            if consumer.task.done():
                consumer.task.result()
            return len(asked) >= 3 and client.token_exp == exp_of(asked[2])

        await eventually(refreshed_twice, "two refreshes on one socket")
        acked = await post_messages(api.http, api.base_url, "cli-refresh", 3, "later")
        await consumer.until_position(acked[-1])
        types = await connection_types(api, connection_id)
        await consumer.stop()

    assert client.connection_id == connection_id and client.reconnects == 0
    assert consumer.positions == list(range(1, consumer.positions[-1] + 1))
    # The walk, then refreshes only: the socket was live all along.
    assert types[-1] == "TokenRefreshed" and types.count("TokenRefreshed") >= 2
    assert types[: types.index("TokenRefreshed")] == [
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "SERVICES_READY",
        "PROCESSING_READY",
    ]
    assert set(types[types.index("TokenRefreshed") :]) == {"TokenRefreshed"}


async def test_a_fixed_token_that_expired_stops_the_client_with_client_refused_after_one_retry(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://", token_warning=0)
    token = SIGNER.mint("alice", ["user"], ttl=SHORT)
    async with SessionClient(api.base_url, "cli-fixed", token) as client:
        refused = await refusal(client)
    assert refused.code == 4401
    assert "expired" in refused.reason and refused.reason != "token_expired"
    assert client.reconnects == 1
