"""Server memory stays bounded whatever clients do (docs/PROTOCOL.md v1.1,
"Limits"): sockets that stop reading while large messages are posted are
closed 4408 ``slow_consumer`` before their queues can grow, and the server
process's resident memory stays under a stated bound. The server runs as
its own process (``sessiond serve``), so its RSS is its own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp

from service.application.auth import TokenSigner
from tests.conftest import TEST_SECRET, ServerProcess
from tests.e2e.wsclient import GUARD

MIB = 1024 * 1024
SOCKETS = 4
MESSAGES = 200
MESSAGE_BYTES = 512 * 1024  # 100 MiB posted in each round
PRODUCERS = 4
QUEUE_BYTES = 4 * MIB  # the default send queue, in bytes
# The bound is stated against the same load without sockets. A first round
# posts the messages with no socket open; the node's peak resident size
# after it is what the store path needs for that load (the request bodies in
# flight, the writer's batches, the projector's batches of rows). A second
# round posts as many again with SOCKETS sockets open that stopped reading:
# the peak may rise by at most what they may hold, each its send queue
# (QUEUE_BYTES, its transport's unsent bytes included) and the one event that
# found it empty, with 32 MiB over that for the noise of the store path's
# own peak. Before the byte bound, the stalled sockets' queues held up to
# 1,000 events: all 100 MiB of the round.
GROWTH_BOUND = SOCKETS * (QUEUE_BYTES + MESSAGE_BYTES) + 32 * MIB


def rss(pid: int, field: str = "VmRSS") -> int:
    """A figure of /proc/PID/status, in bytes (VmHWM: the peak resident size)."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    raise AssertionError(f"no {field} in /proc/{pid}/status")


async def test_sockets_that_stop_reading_are_closed_4408_and_the_server_stays_bounded(
    server_process: Callable[..., ServerProcess], sqlite_url: str
) -> None:
    server = server_process(
        sqlite_url,
        SESSIOND_HEARTBEAT="120",
        SESSIOND_MAX_CONNECTIONS_PER_SESSION=str(SOCKETS),
        SESSIOND_SEND_QUEUE_BYTES=str(QUEUE_BYTES),
        # glibc raises its mmap threshold each time it frees a large mapped
        # block, after which it keeps freed large blocks in the heaps of
        # whichever threads used them: RSS then tells how the allocator's
        # heuristics went, not what the server holds. A fixed threshold maps
        # every block of 128 KiB or more on its own and returns it when freed.
        MALLOC_MMAP_THRESHOLD_=str(128 * 1024),
    )
    assert server.proc is not None
    pid = server.proc.pid
    signer = TokenSigner(TEST_SECRET)
    owner = {"Authorization": "Bearer " + signer.mint("alice", ["user"])}
    auditor = {"Authorization": "Bearer " + signer.mint("audit", ["auditor"])}
    base = server.base_url
    content = "m" * MESSAGE_BYTES
    async with aiohttp.ClientSession() as http:

        async def post(n: str) -> None:
            body = {"role": "user", "content": content, "message_id": f"m-{n}"}
            url = f"{base}/v1/sessions/s-big/messages"
            async with http.post(url, json=body, headers=owner) as r:
                assert r.status in (200, 201), await r.text()
            # Read it back, as a client that reads its writes: the view waits
            # for the projector, which therefore never lags more than a few
            # messages. (Its batches, bounded by bytes, are a bound of the
            # projector's own and not what this test is about: see the test
            # of a node that fell behind, below.)
            async with http.get(f"{base}/v1/sessions/s-big", headers=owner) as r:
                assert r.status == 200, await r.text()

        status = await _call(http, "POST", f"{base}/v1/sessions", owner, {"session_id": "s-big"})
        assert status == 201

        async def producers(round_: int, messages: int) -> None:
            async def producer(k: int) -> None:
                for n in range(k, messages, PRODUCERS):
                    await post(f"{round_}-{n}")

            async with asyncio.timeout(120):
                await asyncio.gather(*(producer(k) for k in range(PRODUCERS)))

        await producers(1, MESSAGES)
        before = rss(pid, "VmHWM")

        stalled = []
        for n in range(SOCKETS):
            ws = await http.ws_connect(
                f"{base}/v1/ws?session_id=s-big&connection_id=stalled-{n}&after={MESSAGES + 1}",
                headers=owner,
                autoping=False,
            )
            await _until_live(ws)
            stalled.append(ws)  # never read again
        await producers(2, MESSAGES)

        peak_growth = rss(pid, "VmHWM") - before
        assert peak_growth < GROWTH_BOUND, f"the server's peak grew by {peak_growth / MIB:.0f} MiB"
        for n in range(SOCKETS):
            view = await _closed_view(http, base, f"stalled-{n}", auditor)
            assert (view["close_code"], view["close_reason"]) == (4408, "slow_consumer"), view
        for ws in stalled:
            await ws.close()


async def _call(
    http: aiohttp.ClientSession, method: str, url: str, headers: dict[str, str], body: Any
) -> int:
    async with http.request(method, url, json=body, headers=headers) as r:
        return r.status


async def _until_live(ws: aiohttp.ClientWebSocketResponse) -> None:
    async with asyncio.timeout(GUARD):
        while True:
            frame = await ws.receive_json()
            if frame.get("state") == "PROCESSING_READY":
                return


async def _closed_view(
    http: aiohttp.ClientSession, base: str, connection_id: str, auditor: dict[str, str]
) -> dict[str, Any]:
    """The connection's view once it shows the socket closed."""
    async with asyncio.timeout(GUARD + 10):
        while True:
            url = f"{base}/v1/connections/{connection_id}"
            async with http.get(url, headers=auditor) as r:
                view: dict[str, Any] = await r.json()
            if view.get("state") == "CLOSED":
                return view
            await asyncio.sleep(0.1)


async def test_a_node_that_fell_behind_large_messages_catches_up_in_bounded_pages(
    server_process: Callable[..., ServerProcess], postgres_url: str
) -> None:
    """A node that stopped for a while (a pause, a cut network) catches up
    on what the others recorded meanwhile: its log follower and its
    projector read the log in pages bounded by bytes (SESSIOND_PAGE_BYTES),
    as every other read of events is, not 1,000 or 2,000 rows at a time
    whatever their size (a GiB or two of 1 MiB messages)."""
    import signal

    quiet = {
        # No node takes the paused one for dead, and allocations are
        # returned to the system when freed (see the test above).
        "SESSIOND_NODE_TIMEOUT": "120",
        "MALLOC_MMAP_THRESHOLD_": str(128 * 1024),
    }
    a = server_process(postgres_url, SESSIOND_NODE="node-a", **quiet)
    b = server_process(postgres_url, SESSIOND_NODE="node-b", **quiet)
    assert a.proc is not None
    signer = TokenSigner(TEST_SECRET)
    owner = {"Authorization": "Bearer " + signer.mint("alice", ["user"])}
    service = {"Authorization": "Bearer " + signer.mint("ops", ["service"])}
    content = "m" * (MIB - 1024)
    sessions = [f"s-behind-{k}" for k in range(6)]
    messages_each = 30
    async with aiohttp.ClientSession() as http:
        for session_id in sessions:
            body = {"session_id": session_id}
            assert await _call(http, "POST", f"{b.base_url}/v1/sessions", owner, body) == 201
        before = rss(a.proc.pid, "VmHWM")
        a.proc.send_signal(signal.SIGSTOP)
        try:

            async def producer(session_id: str) -> None:
                for _ in range(messages_each):
                    url = f"{b.base_url}/v1/sessions/{session_id}/messages"
                    body = {"role": "user", "content": content}
                    assert await _call(http, "POST", url, owner, body) == 201

            async with asyncio.timeout(120):
                await asyncio.gather(*(producer(s) for s in sessions))
        finally:
            a.proc.send_signal(signal.SIGCONT)

        async with asyncio.timeout(60):
            while True:
                async with http.get(f"{a.base_url}/v1/node", headers=service) as r:
                    node = await r.json()
                if node["head"] and all(p["lag"] == 0 for p in node["projections"]):
                    break
                await asyncio.sleep(0.2)
        await asyncio.sleep(2)  # the follower's last pages
        peak_growth = rss(a.proc.pid, "VmHWM") - before
    behind = len(sessions) * messages_each
    assert peak_growth < 96 * MIB, (
        f"catching up on {behind} MiB, node-a's peak grew by {peak_growth / MIB:.0f} MiB"
    )
