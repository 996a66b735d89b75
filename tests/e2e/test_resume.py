"""Resume without loss: ``after=N`` gives exactly the positions
after N, the backlog/live seam drops and repeats nothing while producers
write during the handshake, and a slow consumer is closed with 4408 and
resumes with ``after`` losing nothing."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api
from tests.e2e.wsclient import (
    WsClient,
    call,
    eventually,
    open_socket,
    post_messages,
    report_progress,
)


async def new_session(api: Api, session_id: str) -> None:
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": session_id})
    assert status == 201, body


def assert_dense(positions: list[int], first: int, last: int) -> None:
    """Every position from ``first`` to ``last``, once each, in order."""
    assert positions == list(range(first, last + 1)), (
        f"dropped {sorted(set(range(first, last + 1)) - set(positions))}, "
        f"repeated {sorted(p for p in set(positions) if positions.count(p) > 1)}, "
        f"out of order: {positions != sorted(positions)}"
    )


async def test_a_socket_with_after_n_gets_exactly_the_positions_after_n_then_live_ones(
    store_url: str, serve: Callable[..., Any]
) -> None:
    api: Api = await serve(store_url)
    await new_session(api, "resume-1")
    await post_messages(api.http, api.base_url, "resume-1", 11, "before")  # positions 2..12

    sock = await open_socket(api.http, api.base_url, "resume-1", connection_id="r1", after=7)
    ready = sock.frames[-1]
    assert ready["state"] == "PROCESSING_READY"
    # The backlog ends with the socket's own attach, recorded at 13.
    assert ready["position"] == 13
    assert_dense(sock.positions, 8, 13)
    assert sock.events[-1]["type"] == "ConnectionAttached"
    assert sock.events[-1]["data"]["connection_id"] == "r1"

    # Live from here.
    acked = await post_messages(api.http, api.base_url, "resume-1", 5, "after")
    await sock.until_position(acked[-1])
    await sock.close()
    assert_dense(sock.positions, 8, acked[-1])
    kinds = {e["position"]: e["type"] for e in sock.events}
    assert all(kinds[p] == "MessageRecorded" for p in acked)


async def test_after_zero_and_no_after_both_mean_everything_from_position_one(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "resume-2")
    acked = await post_messages(api.http, api.base_url, "resume-2", 3, "m")
    zero = await open_socket(api.http, api.base_url, "resume-2", connection_id="z", after=0)
    await zero.close()
    absent = await open_socket(api.http, api.base_url, "resume-2", connection_id="a")
    await absent.close()
    # Each sees the whole history, its own attach included; the second also
    # sees the first one's attach and detach.
    assert_dense(zero.positions, 1, acked[-1] + 1)
    assert_dense(absent.positions, 1, acked[-1] + 3)


async def test_a_reconnect_with_the_last_position_seen_continues_without_gap_or_repeat(
    serve: Callable[..., Any],
) -> None:
    api: Api = await serve("memory://")
    await new_session(api, "resume-3")
    first = await open_socket(api.http, api.base_url, "resume-3", connection_id="tab-1")
    await post_messages(api.http, api.base_url, "resume-3", 4, "one")
    head = (await api.call("GET", "/v1/sessions/resume-3"))[1]["position"]
    await first.until_position(head)
    await first.close()
    seen = first.positions[-1]

    # Recorded while no socket watched: the detach of tab-1 and more messages.
    missed = await post_messages(api.http, api.base_url, "resume-3", 4, "two")
    second = await open_socket(
        api.http, api.base_url, "resume-3", connection_id="tab-2", after=seen
    )
    await second.until_position(missed[-1])
    await second.close()
    assert_dense(first.positions + second.positions, 1, second.positions[-1])


@pytest.mark.parametrize("producers", [4])
async def test_the_backlog_live_seam_drops_and_repeats_nothing_while_producers_keep_writing(
    store_url: str, serve: Callable[..., Any], producers: int
) -> None:
    """THE seam test: producers post progress and messages before, during and
    after the socket's handshake; the socket must see 1..last exactly once."""
    api: Api = await serve(store_url)
    await new_session(api, "seam-1")
    http, base = api.http, api.base_url

    async def messages(tag: str) -> list[int]:
        return await post_messages(http, base, "seam-1", 25, tag)

    async def worker(task_id: str) -> list[int]:
        return await report_progress(http, base, "seam-1", task_id, 20)

    started = asyncio.Event()
    acked: list[int] = []

    async def producer(n: int) -> None:
        started.set()
        for round_ in range(2):
            if n % 2:
                acked.extend(await messages(f"p{n}-{round_}"))
            else:
                acked.extend(await worker(f"task-{n}-{round_}"))

    tasks = [asyncio.create_task(producer(n)) for n in range(producers)]
    await started.wait()
    await asyncio.sleep(0)  # let the first requests go out before the upgrade
    sock = await open_socket(http, base, "seam-1", connection_id="seam-watcher", after=0)
    live_from = sock.frames[-1]["position"]
    await asyncio.gather(*tasks)

    status, view = await api.call("GET", "/v1/sessions/seam-1")
    assert status == 200
    last = view["position"]
    assert max(acked) <= last
    await sock.until_position(last)
    await sock.close()

    positions = sock.positions
    assert positions == list(range(1, last + 1)), "a position was dropped or repeated"
    assert set(acked) <= set(positions)
    # Producers really wrote on both sides of the seam.
    assert 1 < live_from < max(acked), (live_from, max(acked))
    # And the socket saw the same events the log holds.
    status, body = await api.call("GET", f"/v1/sessions/seam-1/events?after={live_from}&limit=50")
    by_position = {e["position"]: e for e in sock.events}
    for event in body["events"]:
        assert by_position[event["position"]] == event


async def test_many_sockets_connecting_mid_stream_each_see_every_position_once(
    serve: Callable[..., Any], sqlite_url: str
) -> None:
    api: Api = await serve(sqlite_url, max_connections_per_session=8)
    await new_session(api, "seam-2")
    http, base = api.http, api.base_url
    producing = asyncio.gather(
        *(post_messages(http, base, "seam-2", 30, f"p{n}") for n in range(3)),
        report_progress(http, base, "seam-2", "job", 30),
    )
    sockets: list[WsClient] = []
    for n in range(6):
        sockets.append(await open_socket(http, base, "seam-2", connection_id=f"w{n}", after=n * 3))
        await asyncio.sleep(0)
    await producing
    last = (await api.call("GET", "/v1/sessions/seam-2"))[1]["position"]
    for n, sock in enumerate(sockets):
        await sock.until_position(last)
        await sock.close()
        assert_dense(sock.positions, n * 3 + 1, sock.positions[-1])
        assert sock.positions[-1] >= last


def big(n: int) -> str:
    return f"{n:08d}" + "x" * (128 * 1024)


def tiny_receive_buffer(info: tuple[Any, ...]) -> socket.socket:
    """A client socket whose kernel receive buffer is small, so a client that
    stops reading backs up into the server quickly (not after tens of MiB)."""
    family, kind, proto, _, _ = info
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 8192)
    return sock


@pytest.fixture
async def slow_http() -> AsyncIterator[aiohttp.ClientSession]:
    connector = aiohttp.TCPConnector(socket_factory=tiny_receive_buffer)
    async with aiohttp.ClientSession(connector=connector) as http:
        yield http


async def test_a_slow_consumer_is_closed_with_4408_and_resumes_from_after_without_gap(
    serve: Callable[..., Any], slow_http: aiohttp.ClientSession
) -> None:
    api: Api = await serve("memory://", send_queue_limit=5, heartbeat=120.0)
    await new_session(api, "slow-1")
    http, base = api.http, api.base_url
    sock = await open_socket(slow_http, base, "slow-1", connection_id="slow-reader", max_msg_size=0)

    # The client reads nothing while four producers post 100 large messages.
    acked = await asyncio.gather(
        *(post_messages(http, base, "slow-1", 25, f"p{n}", content=big(n)) for n in range(4))
    )
    last = max(max(a) for a in acked)

    # When it reads again it finds what the server managed to send, then 4408.
    code = await sock.until_closed()
    assert code == 4408
    closing = sock.frames[-1]
    assert closing["type"] == "state"
    assert (closing["state"], closing["code"], closing["reason"]) == (
        "CLOSED",
        4408,
        "slow_consumer",
    )
    seen = sock.positions
    assert seen, "the slow consumer received nothing at all"
    assert_dense(seen, 1, seen[-1])
    assert seen[-1] < last, "the consumer was not behind; the test proves nothing"

    async def closed() -> dict[str, Any] | None:
        status, view = await call(http, "GET", f"{base}/v1/connections/slow-reader")
        assert status == 200, view
        return view if view["state"] == "CLOSED" else None

    view = await eventually(closed, "CLOSED of the slow consumer")
    assert (view["close_code"], view["close_reason"]) == (4408, "slow_consumer")

    # Resuming with after = the last position seen delivers the rest, no gap.
    again = await open_socket(http, base, "slow-1", connection_id="slow-again", after=seen[-1])
    await again.until_position(last)
    await again.close()
    assert_dense(seen + again.positions, 1, again.positions[-1])
    received = {
        e["data"]["content"][:8]
        for e in sock.events + again.events
        if e["type"] == "MessageRecorded"
    }
    assert received == {f"{n:08d}" for n in range(4)}
    assert sum(e["type"] == "MessageRecorded" for e in sock.events + again.events) == 100


async def test_a_client_that_stops_reading_altogether_is_closed_as_slow_consumer(
    serve: Callable[..., Any], slow_http: aiohttp.ClientSession
) -> None:
    api: Api = await serve("memory://", send_queue_limit=5, heartbeat=120.0)
    await new_session(api, "stalled-1")
    http, base = api.http, api.base_url
    sock = await open_socket(slow_http, base, "stalled-1", connection_id="stalled")
    try:
        await asyncio.gather(
            *(post_messages(http, base, "stalled-1", 25, f"p{n}", content=big(n)) for n in range(4))
        )

        async def closed() -> dict[str, Any] | None:
            _, view = await call(http, "GET", f"{base}/v1/connections/stalled")
            return view if view["state"] == "CLOSED" else None

        # The client still reads nothing; the server must give up on it by itself.
        deadline = asyncio.get_running_loop().time() + 5
        view = None
        while view is None and asyncio.get_running_loop().time() < deadline:
            view = await closed()
            await asyncio.sleep(0.1)
        assert view is not None, "the stalled socket was never closed"
        assert (view["close_code"], view["close_reason"]) == (4408, "slow_consumer")
    finally:
        # Read again so the server can finish the socket and shut down promptly.
        with contextlib.suppress(TimeoutError, aiohttp.ClientError):
            await sock.until_closed()


async def test_a_superseded_socket_whose_client_stopped_reading_does_not_outlive_its_detach(
    serve: Callable[..., Any], slow_http: aiohttp.ClientSession
) -> None:
    """The detach that supersedes a socket is queued behind the events before
    it; a client that stopped reading never lets the socket get there (its
    queue is not full, so it is no slow consumer yet, and the pings are far
    off): the socket stayed open, the connection recorded live, while the
    session's record said it was gone. Its end starts once the detach has
    waited out the close patience."""
    # A queue that takes far more than the kernel's buffers hold, so the
    # client is stuck long before it would be a slow consumer.
    api: Api = await serve("memory://", heartbeat=120.0, send_queue_bytes=256 * 1024 * 1024)
    await new_session(api, "stuck-1")
    http, base = api.http, api.base_url
    stuck = await open_socket(slow_http, base, "stuck-1", connection_id="stuck", max_msg_size=0)
    # The client reads nothing from here on; the node's writes to it back up
    # past the kernel's buffers (a few MiB each way on loopback).
    await asyncio.gather(
        *(post_messages(http, base, "stuck-1", 20, f"p{n}", content=big(n)) for n in range(8))
    )
    newer = await open_socket(http, base, "stuck-1", connection_id="newer")

    async def closed() -> dict[str, Any] | None:
        status, view = await call(http, "GET", f"{base}/v1/connections/stuck")
        assert status == 200, view
        return view if view["state"] == "CLOSED" else None

    view = await eventually(closed, "the stuck socket's CLOSED", limit=30.0)
    assert (view["close_code"], view["close_reason"]) == (4409, "superseded")
    await newer.close()
    await stuck.close()
