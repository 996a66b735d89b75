"""The load generator, run as its own process: ``python -m bench.load SCENARIO ...``.

It never shares an event loop with a server under test. It prints one JSON
object (the last line of its output) with what it measured. The same code
drives sessiond and the bare server (one wire protocol); python-socketio gets
the same steps through its own client.
"""

from __future__ import annotations

import argparse
import asyncio
import itertools
import sys
import time
import uuid
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import aiohttp
import jwt
import orjson

SECRET_DEFAULT = "bench-secret-0123456789-0123456789-abcdef"
FRAME_PATIENCE = 60.0


def token(secret: str, user: str = "bench", role: str = "user") -> str:
    """A token of its own (a distinct ``jti``), as every real client would have.

    Each simulated client is a user of its own, as real clients are: sessiond
    budgets each user (docs/adr/0027-bound-every-caller-by-budgets-and-every-queue-by-bytes.md),
    and 40 clients or 10,000 sockets of one user are not the load measured."""
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + 3600, "roles": [role]}
    claims["jti"] = uuid.uuid4().hex
    return jwt.encode(claims, secret, "HS256")


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


class WsConn:
    """A client of sessiond's wire protocol (and of the bare server's)."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        self.http = http
        self.ws: aiohttp.ClientWebSocketResponse | None = None

    async def open(self, base: str, session_id: str, tok: str) -> None:
        # One deadline for the whole walk: a per-frame timeout alone is reset
        # by every ping, and a handshake that never completes would hang.
        async with asyncio.timeout(FRAME_PATIENCE):
            await self._open(base, session_id, tok)

    async def _open(self, base: str, session_id: str, tok: str) -> None:
        connection_id = "c-" + uuid.uuid4().hex[:16]
        self.ws = ws = await self.http.ws_connect(
            f"{base}/v1/ws?session_id={session_id}&connection_id={connection_id}",
            autoping=True,
        )
        welcome = orjson.loads(await ws.receive_str())
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        await ws.send_str(orjson.dumps({"type": "auth", "token": tok}).decode())
        while True:
            msg = await ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"socket ended before PROCESSING_READY: {msg}")
            frame = orjson.loads(msg.data)
            if frame.get("state") == "PROCESSING_READY":
                return

    async def next_event(self) -> dict[str, Any]:
        async with asyncio.timeout(FRAME_PATIENCE):
            return await self._next_event()

    async def _next_event(self) -> dict[str, Any]:
        assert self.ws is not None
        while True:
            msg = await self.ws.receive()
            if msg.type != aiohttp.WSMsgType.TEXT:
                raise RuntimeError(f"socket ended while waiting for events: {msg}")
            frame = orjson.loads(msg.data)
            if frame.get("type") == "event":
                event: dict[str, Any] = frame["event"]
                return event

    async def close(self) -> None:
        if self.ws is not None:
            await self.ws.close()


class SioConn:
    """A python-socketio client walked through the same handshake."""

    def __init__(self, http: aiohttp.ClientSession) -> None:
        import socketio

        # The shared aiohttp session, as the WebSocket clients have.
        self.client = socketio.AsyncClient(reconnection=False, http_session=http)
        self.live = asyncio.Event()
        self.welcome = asyncio.Event()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        self.client.on("welcome", self._welcome)
        self.client.on("state", self._state)
        self.client.on("event", self._event)

    async def _welcome(self, data: Any) -> None:
        self.welcome.set()

    async def _state(self, data: dict[str, Any]) -> None:
        if data.get("state") == "PROCESSING_READY":
            self.live.set()

    async def _event(self, data: dict[str, Any]) -> None:
        self.events.put_nowait(data)

    async def open(self, base: str, session_id: str, tok: str) -> None:
        await self.client.connect(
            f"{base}?session_id={session_id}", transports=["websocket"], wait_timeout=30
        )
        await asyncio.wait_for(self.welcome.wait(), FRAME_PATIENCE)
        await self.client.emit("auth", {"token": tok})
        await asyncio.wait_for(self.live.wait(), FRAME_PATIENCE)

    async def next_event(self) -> dict[str, Any]:
        return await asyncio.wait_for(self.events.get(), FRAME_PATIENCE)

    async def close(self) -> None:
        await self.client.disconnect()


Conn = WsConn | SioConn


def connector(kind: str, http: aiohttp.ClientSession) -> Callable[[], Conn]:
    return (lambda: SioConn(http)) if kind == "socketio" else (lambda: WsConn(http))


def new_http() -> aiohttp.ClientSession:
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))


# --- (a) full-lifecycle handshakes ---------------------------------------------


async def handshakes(args: argparse.Namespace) -> dict[str, Any]:
    """``clients`` concurrent clients, each in a loop: a new session, connect,
    walk to PROCESSING_READY, close. For ``duration`` seconds, or ``count``
    handshakes in all."""
    done = 0
    latencies: list[float] = []
    async with new_http() as http:
        make = connector(args.kind, http)
        deadline = time.perf_counter() + args.duration

        claimed = 0

        def claim() -> bool:
            nonlocal claimed
            if args.count:
                claimed += 1
                return bool(claimed <= args.count)
            return bool(time.perf_counter() < deadline)

        async def one_client(n: int) -> None:
            nonlocal done
            while claim():
                tok = token(args.secret, f"bench-{n}")
                t0 = time.perf_counter()
                conn = make()
                await conn.open(args.url, "hs-" + uuid.uuid4().hex[:20], tok)
                await conn.close()
                latencies.append(time.perf_counter() - t0)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(n) for n in range(args.clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "handshakes": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "p50_ms": None if p50 is None else 1000 * p50,
        "p99_ms": None if p99 is None else 1000 * p99,
    }


# --- (b) progress events delivered to one socket ---------------------------------


async def delivery(args: argparse.Namespace) -> dict[str, Any]:
    """One live socket; ``producers`` concurrent HTTP clients report progress on
    its session (each waits for its acknowledgement before the next); every
    acknowledged position must arrive on the socket, once. The socket's user
    owns the session; each producer is a worker with a ``service`` token."""
    owner = token(args.secret)
    session_id = "dl-" + uuid.uuid4().hex[:20]
    headers = {"Authorization": f"Bearer {owner}", "Content-Type": "application/json"}
    received: list[int] = []
    acknowledged: list[int] = []
    per_producer = args.events // args.producers
    total = per_producer * args.producers
    async with new_http() as http:
        conn = connector(args.kind, http)()
        await conn.open(args.url, session_id, owner)
        tasks = f"{args.url}/v1/sessions/{session_id}/tasks"
        body = orjson.dumps({"task_id": "t1", "name": "bench", "total": total})
        async with http.post(tasks, data=body, headers=headers) as r:
            if r.status not in (200, 201):
                raise RuntimeError(f"starting the task: {r.status} {await r.text()}")
        progress = f"{tasks}/t1/progress"
        last_arrival = time.perf_counter()

        async def produce(n: int) -> None:
            worker = token(args.secret, f"worker-{n}", "service")
            as_worker = {**headers, "Authorization": f"Bearer {worker}"}
            for i in range(per_producer):
                done = orjson.dumps({"done": n * per_producer + i + 1})
                async with http.post(progress, data=done, headers=as_worker) as r:
                    if r.status not in (200, 201, 202):
                        raise RuntimeError(f"progress refused: {r.status} {await r.text()}")
                    acknowledged.append(int((await r.json(loads=orjson.loads))["position"]))

        async def consume() -> None:
            nonlocal last_arrival
            while len(received) < total:
                event = await conn.next_event()
                if event.get("type") == "TaskProgressed":
                    received.append(int(event["position"]))
                    last_arrival = time.perf_counter()

        consumer = asyncio.create_task(consume())
        started = time.perf_counter()
        await asyncio.gather(*(produce(n) for n in range(args.producers)))
        try:
            await asyncio.wait_for(consumer, FRAME_PATIENCE)
        except (TimeoutError, RuntimeError) as e:
            print(f"delivery stopped early: {e!r}", file=sys.stderr)
        elapsed = last_arrival - started
        await conn.close()
    in_order = all(a < b for a, b in itertools.pairwise(received))
    return {
        "events": len(received),
        "acknowledged": len(acknowledged),
        "seconds": elapsed,
        "rate": len(received) / elapsed if elapsed > 0 else 0.0,
        "lost": len(set(acknowledged) - set(received)),
        "duplicates": len(received) - len(set(received)),
        "in_order": in_order,
    }


# --- (e) idle sockets -----------------------------------------------------------


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open N sockets to PROCESSING_READY, say so, then hold them until killed."""
    conns: list[Conn] = []
    async with new_http() as http:
        make = connector(args.kind, http)
        gate = asyncio.Semaphore(50)
        prefix = "idle-" + uuid.uuid4().hex[:8]

        async def one(i: int) -> None:
            async with gate:
                conn = make()
                await conn.open(args.url, f"{prefix}-{i}", token(args.secret, f"{prefix}-{i}"))
                conns.append(conn)

        await asyncio.gather(*(one(i) for i in range(args.sockets)))
        sys.stdout.write(orjson.dumps({"open": len(conns)}).decode() + "\n")
        sys.stdout.flush()
        await asyncio.sleep(24 * 3600)
    return {}


# --- (f) cross-node delivery latency ----------------------------------------------


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    """A socket on node A (``url``); messages posted to node B (``url_b``) at a
    fixed rate; the time from sending each POST to its event on A's socket."""
    tok = token(args.secret)
    session_id = "lat-" + uuid.uuid4().hex[:20]
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
    sent: dict[str, float] = {}
    delays: list[float] = []
    acked: dict[str, float] = {}
    delivered: dict[str, float] = {}
    failures = 0
    total = int(args.rate * args.duration)
    async with new_http() as http:
        conn = WsConn(http)
        await conn.open(args.url, session_id, tok)
        url_b = f"{args.url_b}/v1/sessions/{session_id}/messages"

        async def post(message_id: str, body: bytes) -> None:
            nonlocal failures
            async with http.post(url_b, data=body, headers=headers) as r:
                if r.status not in (200, 201):
                    failures += 1
                acked[message_id] = time.perf_counter()

        async def produce() -> None:
            interval = 1.0 / args.rate
            start = time.perf_counter()
            posts: list[Awaitable[None]] = []
            for i in range(total):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                message_id = f"l{i}"
                body = orjson.dumps({"role": "user", "content": "x", "message_id": message_id})
                sent[message_id] = time.perf_counter()
                posts.append(asyncio.ensure_future(post(message_id, body)))
            await asyncio.gather(*posts)

        async def consume() -> None:
            while len(delays) < total:
                event = await conn.next_event()
                message_id = event["data"].get("message_id")
                if message_id in sent:
                    delivered[message_id] = time.perf_counter()
                    delays.append(delivered[message_id] - sent[message_id])

        await asyncio.gather(produce(), consume())
        await conn.close()
    delays.sort()
    acks = sorted(acked[m] - sent[m] for m in acked)
    # Negative when A's socket had the event before the client had B's answer.
    after_ack = sorted(delivered[m] - acked[m] for m in delivered if m in acked)
    return {
        "events": len(delays),
        "failures": failures,
        "p50_ms": 1000 * (percentile(delays, 0.5) or 0.0),
        "p99_ms": 1000 * (percentile(delays, 0.99) or 0.0),
        "max_ms": 1000 * delays[-1] if delays else None,
        "ack_p50_ms": 1000 * (percentile(acks, 0.5) or 0.0),
        "ack_p99_ms": 1000 * (percentile(acks, 0.99) or 0.0),
        "after_ack_p50_ms": 1000 * (percentile(after_ack, 0.5) or 0.0),
        "after_ack_p99_ms": 1000 * (percentile(after_ack, 0.99) or 0.0),
    }


SCENARIOS: dict[str, Callable[[argparse.Namespace], Coroutine[Any, Any, dict[str, Any]]]] = {
    "handshakes": handshakes,
    "delivery": delivery,
    "idle": idle,
    "latency": latency,
}


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.load")
    parser.add_argument("scenario", choices=sorted(SCENARIOS))
    parser.add_argument("--url", required=True)
    parser.add_argument("--url-b", help="latency: the node that the messages are posted to")
    parser.add_argument("--kind", choices=["ws", "socketio"], default="ws")
    parser.add_argument("--secret", default=SECRET_DEFAULT)
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--count", type=int, default=0, help="handshakes: stop after this many")
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    result: dict[str, Any] = asyncio.run(SCENARIOS[args.scenario](args))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
