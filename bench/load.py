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
# Handshaking clients per source address: under sessiond's default budget of
# 128 upgrades pending per address.
CLIENTS_PER_ADDRESS = 100
# Idle sockets per source address: well within one address's ephemeral ports
# (about 28,000), some of which the sockets of an earlier count still hold
# in TIME_WAIT.
SOCKETS_PER_ADDRESS = 10_000


def token(secret: str, user: str = "bench", role: str = "user") -> str:
    """A token of its own (a distinct ``jti``), as every real client would have.

    Each simulated client (each handshake, each idle socket) is a user of its
    own, as real clients are: sessiond budgets each user
    (docs/adr/0027-bound-every-caller-by-budgets-and-every-queue-by-bytes.md),
    and 40 clients or 10,000 sockets of one user are not the load measured."""
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + 3600, "roles": [role]}
    claims["jti"] = uuid.uuid4().hex
    return jwt.encode(claims, secret, "HS256")


def percentile(sorted_values: list[float], q: float) -> float | None:
    if not sorted_values:
        return None
    return sorted_values[min(len(sorted_values) - 1, int(len(sorted_values) * q))]


TRY_AGAIN_LATER = 1013
# How often one idle socket is tried again after "try again later".
IDLE_RETRIES = 10


class TryAgainLater(RuntimeError):
    """The server said "try again later": 503 before the upgrade, or close 1013."""


def _handshake_frame(msg: aiohttp.WSMessage, waiting_for: str) -> dict[str, Any]:
    """A handshake's next frame, decoded; "try again later" (close 1013: the
    node could not record the step in time) and any other end are raised."""
    if msg.type == aiohttp.WSMsgType.CLOSE and msg.data == TRY_AGAIN_LATER:
        raise TryAgainLater(f"closed 1013 before {waiting_for}: {msg.extra}")
    if msg.type != aiohttp.WSMsgType.TEXT:
        raise RuntimeError(f"socket ended before {waiting_for}: {msg}")
    frame: dict[str, Any] = orjson.loads(msg.data)
    return frame


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
        try:
            self.ws = ws = await self.http.ws_connect(
                f"{base}/v1/ws?session_id={session_id}&connection_id={connection_id}",
                autoping=True,
            )
        except aiohttp.WSServerHandshakeError as e:
            if e.status == 503:
                raise TryAgainLater(f"upgrade refused 503: {e.message}") from e
            raise
        welcome = _handshake_frame(await ws.receive(), "the welcome")
        if welcome.get("type") != "welcome":
            raise RuntimeError(f"expected welcome, got {welcome}")
        await ws.send_str(orjson.dumps({"type": "auth", "token": tok}).decode())
        while True:
            frame = _handshake_frame(await ws.receive(), "PROCESSING_READY")
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


def new_http(local_host: str | None = None) -> aiohttp.ClientSession:
    local = None if local_host is None else (local_host, 0)
    return aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0, local_addr=local))


class Addresses:
    """Client sockets spread over loopback source addresses, ``per`` to each:
    127.0.0.1 for the first ``per``, then 127.0.0.2, and so on (all of
    127.0.0.0/8 is the loopback on Linux).

    Many clients are many addresses, as they are in the field: sessiond
    budgets the upgrades pending per client address (ADR 0027), and one
    source address has only the ephemeral port range (about 28,000 ports)
    to open sockets from."""

    def __init__(self, per: int) -> None:
        self.per = per
        self.sessions: dict[int, aiohttp.ClientSession] = {}

    def http(self, n: int) -> aiohttp.ClientSession:
        group = n // self.per
        if group not in self.sessions:
            self.sessions[group] = new_http(None if group == 0 else f"127.0.0.{group + 1}")
        return self.sessions[group]

    async def close(self) -> None:
        for http in self.sessions.values():
            await http.close()


# --- (a) full-lifecycle handshakes ---------------------------------------------


async def handshakes(args: argparse.Namespace) -> dict[str, Any]:
    """``clients`` concurrent clients, each in a loop: a new session, connect,
    walk to PROCESSING_READY, close. For ``duration`` seconds, or ``count``
    handshakes in all."""
    done = 0
    latencies: list[float] = []
    addresses = Addresses(CLIENTS_PER_ADDRESS)
    try:
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
            make = connector(args.kind, addresses.http(n))
            # A user for each handshake: one client looping as fast as the
            # server answers would be one user creating hundreds of sessions
            # a second, which sessiond's budget of sessions per user refuses
            # (close 4429), as it should; that is not the load measured.
            for i in itertools.count():
                if not claim():
                    break
                tok = token(args.secret, f"bench-{n}-{i}")
                t0 = time.perf_counter()
                conn = make()
                await conn.open(args.url, "hs-" + uuid.uuid4().hex[:20], tok)
                await conn.close()
                latencies.append(time.perf_counter() - t0)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client(n) for n in range(args.clients)))
        elapsed = time.perf_counter() - started
    finally:
        await addresses.close()
    latencies.sort()
    p50, p99 = percentile(latencies, 0.5), percentile(latencies, 0.99)
    return {
        "handshakes": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "p50_ms": None if p50 is None else 1000 * p50,
        "p99_ms": None if p99 is None else 1000 * p99,
    }


# --- (b) progress events delivered to live sockets ---------------------------------


async def delivery(args: argparse.Namespace) -> dict[str, Any]:
    """``sessions`` sessions (1 unless asked), each with one live socket;
    ``producers`` concurrent HTTP clients report progress (each waits for its
    acknowledgement before the next), producer ``n``'s ``i``-th report going to
    session ``(n + i * producers) % sessions``; every acknowledged position
    must arrive on its session's socket, once, in order. Each session's owner
    is a user of its own; each producer is a worker with a ``service`` token."""
    per_producer = args.events // args.producers
    total = per_producer * args.producers
    run = uuid.uuid4().hex[:16]
    owners = [token(args.secret, f"owner-{run}-{s}") for s in range(args.sessions)]
    session_ids = [f"dl-{run}-{s}" for s in range(args.sessions)]
    received: list[list[int]] = [[] for _ in session_ids]
    acknowledged: set[tuple[int, int]] = set()
    arrived = 0
    all_arrived = asyncio.Event()
    async with new_http() as http:
        make = connector(args.kind, http)
        conns = [make() for _ in session_ids]
        gate = asyncio.Semaphore(50)

        async def open_one(s: int) -> None:
            async with gate:
                await conns[s].open(args.url, session_ids[s], owners[s])
                body = orjson.dumps({"task_id": "t1", "name": "bench", "total": total})
                async with http.post(
                    f"{args.url}/v1/sessions/{session_ids[s]}/tasks", data=body,
                    headers={"Authorization": f"Bearer {owners[s]}",
                             "Content-Type": "application/json"},
                ) as r:  # fmt: skip
                    if r.status not in (200, 201):
                        raise RuntimeError(f"starting the task: {r.status} {await r.text()}")

        await asyncio.gather(*(open_one(s) for s in range(args.sessions)))
        last_arrival = time.perf_counter()

        async def produce(n: int) -> None:
            worker = token(args.secret, f"worker-{n}", "service")
            headers = {"Authorization": f"Bearer {worker}", "Content-Type": "application/json"}
            for i in range(per_producer):
                s = (n + i * args.producers) % args.sessions
                progress = f"{args.url}/v1/sessions/{session_ids[s]}/tasks/t1/progress"
                done = orjson.dumps({"done": n * per_producer + i + 1})
                async with http.post(progress, data=done, headers=headers) as r:
                    if r.status not in (200, 201, 202):
                        raise RuntimeError(f"progress refused: {r.status} {await r.text()}")
                    position = int((await r.json(loads=orjson.loads))["position"])
                    acknowledged.add((s, position))

        async def consume(s: int) -> None:
            nonlocal last_arrival, arrived
            while True:
                event = await conns[s].next_event()
                if event.get("type") == "TaskProgressed":
                    received[s].append(int(event["position"]))
                    last_arrival = time.perf_counter()
                    arrived += 1
                    if arrived >= total:
                        all_arrived.set()

        consumers = [asyncio.create_task(consume(s)) for s in range(args.sessions)]
        started = time.perf_counter()
        await asyncio.gather(*(produce(n) for n in range(args.producers)))
        waiting = asyncio.create_task(all_arrived.wait())
        # Everything has arrived, or a socket failed, or patience ran out.
        await asyncio.wait(
            [waiting, *consumers], timeout=FRAME_PATIENCE, return_when=asyncio.FIRST_COMPLETED
        )
        for task in (waiting, *consumers):
            task.cancel()
            if task.done() and not task.cancelled() and task.exception() is not None:
                print(f"delivery stopped early: {task.exception()!r}", file=sys.stderr)
        await asyncio.gather(waiting, *consumers, return_exceptions=True)
        elapsed = last_arrival - started
        await asyncio.gather(*(conn.close() for conn in conns))
    delivered = {(s, p) for s, positions in enumerate(received) for p in positions}
    count = sum(len(positions) for positions in received)
    return {
        "events": count,
        "acknowledged": len(acknowledged),
        "sessions": args.sessions,
        "seconds": elapsed,
        "rate": count / elapsed if elapsed > 0 else 0.0,
        "lost": len(acknowledged - delivered),
        "duplicates": count - len(delivered),
        "in_order": all(a < b for positions in received for a, b in itertools.pairwise(positions)),
    }


# --- (e) idle sockets -----------------------------------------------------------


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open N sockets to PROCESSING_READY, say so, then hold them until killed."""
    conns: list[Conn] = []
    addresses = Addresses(SOCKETS_PER_ADDRESS)
    try:
        gate = asyncio.Semaphore(50)
        prefix = "idle-" + uuid.uuid4().hex[:8]

        retried = 0

        async def one(i: int) -> None:
            nonlocal retried
            async with gate:
                # As a real client does: "try again later" (a 503, or close
                # 1013 while the node's writer is behind) is retried after the
                # pause the contract asks for; it is counted, not hidden.
                for attempt in itertools.count():
                    conn = connector(args.kind, addresses.http(i))()
                    try:
                        await conn.open(
                            args.url, f"{prefix}-{i}", token(args.secret, f"{prefix}-{i}")
                        )
                        break
                    except TryAgainLater:
                        await conn.close()
                        if attempt >= IDLE_RETRIES:
                            raise
                        retried += 1
                        await asyncio.sleep(1.0)
                conns.append(conn)

        await asyncio.gather(*(one(i) for i in range(args.sockets)))
        sys.stdout.write(orjson.dumps({"open": len(conns), "retried": retried}).decode() + "\n")
        sys.stdout.flush()
        await asyncio.sleep(24 * 3600)
    finally:
        await addresses.close()
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
    parser.add_argument("--sessions", type=int, default=1, help="delivery: sessions, a socket each")
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--rate", type=float, default=500.0)
    args = parser.parse_args()
    result: dict[str, Any] = asyncio.run(SCENARIOS[args.scenario](args))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
