"""The load generator, run as its own process: ``python -m bench.load SCENARIO ...``.

Prints one JSON object with what it measured. The same code drives sessiond
and the bare server (one wire protocol); python-socketio gets the same steps
through its own client.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import time
import uuid
from typing import Any

import aiohttp
import jwt
import orjson

SECRET_DEFAULT = "bench-secret-0123456789-0123456789-abcdef"


def token(secret: str) -> str:
    now = int(time.time())
    return jwt.encode({"sub": "bench", "exp": now + 3600, "roles": ["user"]}, secret, "HS256")


async def ws_handshake(
    http: aiohttp.ClientSession, base: str, session_id: str, tok: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(
        f"{base}/v1/ws?session_id={session_id}&connection_id=c-{uuid.uuid4().hex[:16]}"
    )
    await ws.receive_str(timeout=30)  # welcome
    await ws.send_str(orjson.dumps({"type": "auth", "token": tok}).decode())
    while True:
        frame = orjson.loads(await ws.receive_str(timeout=30))
        if frame.get("state") == "PROCESSING_READY":
            return ws


class SioConn:
    """A python-socketio client walked through the same handshake."""

    def __init__(self) -> None:
        import socketio

        self.client = socketio.AsyncClient(reconnection=False)
        self.live = asyncio.Event()
        self.welcome = asyncio.Event()
        self.events: asyncio.Queue[dict[str, Any]] = asyncio.Queue()

        @self.client.on("welcome")
        async def _welcome(data: Any) -> None:
            self.welcome.set()

        @self.client.on("state")
        async def _state(data: dict[str, Any]) -> None:
            if data.get("state") == "PROCESSING_READY":
                self.live.set()

        @self.client.on("event")
        async def _event(data: dict[str, Any]) -> None:
            self.events.put_nowait(data)

    async def open(self, base: str, session_id: str, tok: str) -> None:
        await self.client.connect(
            f"{base}?session_id={session_id}", transports=["websocket"], wait_timeout=30
        )
        await asyncio.wait_for(self.welcome.wait(), 30)
        await self.client.emit("auth", {"token": tok})
        await asyncio.wait_for(self.live.wait(), 30)

    async def close(self) -> None:
        await self.client.disconnect()


async def handshakes(args: argparse.Namespace) -> dict[str, Any]:
    tok = token(args.secret)
    done = 0
    latencies: list[float] = []
    deadline = time.perf_counter() + args.duration
    async with aiohttp.ClientSession(
        connector=aiohttp.TCPConnector(limit=0, force_close=False)
    ) as http:

        async def one_client() -> None:
            nonlocal done
            while time.perf_counter() < deadline:
                session_id = "hs-" + uuid.uuid4().hex[:20]
                t0 = time.perf_counter()
                if args.kind == "socketio":
                    conn = SioConn()
                    await conn.open(args.url, session_id, tok)
                    await conn.close()
                else:
                    ws = await ws_handshake(http, args.url, session_id, tok)
                    await ws.close()
                latencies.append(time.perf_counter() - t0)
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*(one_client() for _ in range(args.clients)))
        elapsed = time.perf_counter() - started
    latencies.sort()
    return {
        "handshakes": done,
        "seconds": elapsed,
        "rate": done / elapsed,
        "p50_ms": 1000 * latencies[len(latencies) // 2] if latencies else None,
        "p99_ms": 1000 * latencies[int(len(latencies) * 0.99)] if latencies else None,
    }


async def delivery(args: argparse.Namespace) -> dict[str, Any]:
    """One live socket; producers POST events on its session; all acknowledged."""
    tok = token(args.secret)
    session_id = "dl-" + uuid.uuid4().hex[:20]
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
    received: list[int] = []
    acknowledged: list[int] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sio: SioConn | None = None
        ws: aiohttp.ClientWebSocketResponse | None = None
        if args.kind == "socketio":
            sio = SioConn()
            await sio.open(args.url, session_id, tok)
        else:
            ws = await ws_handshake(http, args.url, session_id, tok)
        per_producer = args.events // args.producers
        total = per_producer * args.producers

        async def produce(n: int) -> None:
            body = orjson.dumps({"role": "user", "content": f"p{n}"})
            for _ in range(per_producer):
                async with http.post(
                    f"{args.url}/v1/sessions/{session_id}/messages", data=body, headers=headers
                ) as r:
                    assert r.status in (201, 202), await r.text()
                    acknowledged.append((await r.json())["position"])

        async def consume() -> None:
            while len([p for p in received if p > 0]) < total:
                if sio is not None:
                    event = await asyncio.wait_for(sio.events.get(), 30)
                else:
                    assert ws is not None
                    frame = orjson.loads(await ws.receive_str(timeout=30))
                    if frame.get("type") != "event":
                        continue
                    event = frame["event"]
                if event.get("type") in ("MessageRecorded", "TaskProgressed"):
                    received.append(event["position"])

        consumer = asyncio.create_task(consume())
        started = time.perf_counter()
        await asyncio.gather(*(produce(n) for n in range(args.producers)))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(consumer, 60)
        elapsed = time.perf_counter() - started
        if sio is not None:
            await sio.close()
        if ws is not None:
            await ws.close()
    lost = len(set(acknowledged) - set(received))
    return {
        "events": len(received),
        "seconds": elapsed,
        "rate": len(received) / elapsed,
        "lost": lost,
    }


async def latency(args: argparse.Namespace) -> dict[str, Any]:
    """A socket on node A; messages posted to node B at a fixed rate; the time
    from sending each POST to its event arriving on A's socket."""
    tok = token(args.secret)
    session_id = "lat-" + uuid.uuid4().hex[:20]
    headers = {"Authorization": f"Bearer {tok}", "Content-Type": "application/json"}
    sent: dict[str, float] = {}
    delays: list[float] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        ws = await ws_handshake(http, args.url, session_id, tok)
        total = int(args.rate * args.duration)

        async def produce() -> None:
            interval = 1.0 / args.rate
            start = time.perf_counter()
            posts = []
            for i in range(total):
                delay = start + i * interval - time.perf_counter()
                if delay > 0:
                    await asyncio.sleep(delay)
                message_id = f"l{i}"
                sent[message_id] = time.perf_counter()
                body = orjson.dumps({"role": "user", "content": "x", "message_id": message_id})
                posts.append(
                    asyncio.create_task(
                        http.post(f"{args.url_b}/v1/sessions/{session_id}/messages", data=body,
                                  headers=headers)
                    )
                )  # fmt: skip
            for response in await asyncio.gather(*posts):
                response.release()

        async def consume() -> None:
            while len(delays) < total:
                frame = orjson.loads(await ws.receive_str(timeout=30))
                if frame.get("type") != "event":
                    continue
                message_id = frame["event"]["data"].get("message_id")
                if message_id in sent:
                    delays.append(time.perf_counter() - sent[message_id])

        await asyncio.gather(produce(), consume())
        await ws.close()
    delays.sort()
    return {
        "events": len(delays),
        "p50_ms": 1000 * delays[len(delays) // 2],
        "p99_ms": 1000 * delays[int(len(delays) * 0.99)],
    }


async def idle(args: argparse.Namespace) -> dict[str, Any]:
    """Open N sockets to PROCESSING_READY, report, then hold them until killed."""
    tok = token(args.secret)
    conns: list[Any] = []
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0)) as http:
        sem = asyncio.Semaphore(50)

        async def one(i: int) -> None:
            async with sem:
                if args.kind == "socketio":
                    c = SioConn()
                    await c.open(args.url, f"idle-{i}", tok)
                    conns.append(c)
                else:
                    conns.append(await ws_handshake(http, args.url, f"idle-{i}", tok))

        await asyncio.gather(*(one(i) for i in range(args.sockets)))
        sys.stdout.write(orjson.dumps({"open": len(conns)}).decode() + "\n")
        sys.stdout.flush()
        await asyncio.sleep(3600)
    return {}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("scenario", choices=["handshakes", "delivery", "idle", "latency"])
    parser.add_argument("--url-b", help="latency: the node that producers post to")
    parser.add_argument("--rate", type=float, default=500.0)
    parser.add_argument("--url", required=True)
    parser.add_argument("--kind", choices=["ws", "socketio"], default="ws")
    parser.add_argument("--clients", type=int, default=40)
    parser.add_argument("--duration", type=float, default=5.0)
    parser.add_argument("--producers", type=int, default=16)
    parser.add_argument("--events", type=int, default=2000)
    parser.add_argument("--sockets", type=int, default=500)
    parser.add_argument("--secret", default=SECRET_DEFAULT)
    args = parser.parse_args()
    scenario = {
        "handshakes": handshakes,
        "delivery": delivery,
        "idle": idle,
        "latency": latency,
    }[args.scenario]
    result = asyncio.run(scenario(args))
    print(orjson.dumps(result).decode())


if __name__ == "__main__":
    main()
