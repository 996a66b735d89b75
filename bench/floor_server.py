"""The durable floor: the bare server plus the least that "recorded durably
before announced" costs, and nothing else sessiond does.

It is :mod:`bench.bare_server`'s wire protocol with one addition: before a
step is announced, a row for it is committed to a SQLite file (WAL,
``synchronous=FULL``: the same durability as sessiond) by one group-commit
thread, and the handler waits for that commit. The commits mirror what the
contract and sessiond's ADRs allow a handshake (CONNECTING before the upgrade;
ACCEPTED after it; AUTHENTICATED with SERVICES_READY; PROCESSING_READY after
the backlog; CLOSED) and a delivered event (one row, acknowledged once
durable). A row is the frame's JSON: no aggregates, no lifecycle machine, no
projection, no validation beyond the bare server's.

What it leaves out is everything sessiond adds beyond the durable write, so
its rate is a ceiling on any server of this design (aiohttp, one Python
process, a durable acknowledgement per step) on the machine that runs it, and
``sessiond / floor`` is the share of the remaining gap that is sessiond's own.

    python -m bench.floor_server --store FILE --port P
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sqlite3
import threading
from collections import defaultdict
from typing import Any

import orjson
from aiohttp import WSMsgType, web

from bench.bare_server import SECRET, Handler, Tokens, add_write_routes

_STOP = object()
Row = tuple[str, int, bytes]


class GroupCommit:
    """One thread that commits every row waiting, in one transaction, then
    resolves each waiter on the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[tuple[list[Row], asyncio.Future[None]]] = []
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="floor-writer", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(_STOP)
        self.thread.join()

    async def record(self, *rows: Row) -> None:
        assert self.loop is not None
        future: asyncio.Future[None] = self.loop.create_future()
        # One hand-over per event-loop turn, as sessiond's writer does.
        self.pending.append((list(rows), future))
        if len(self.pending) == 1:
            self.loop.call_soon(self._flush)
        await future

    def _flush(self) -> None:
        items, self.pending = self.pending, []
        self.queue.put(items)

    def _run(self) -> None:
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, stream TEXT NOT NULL,"
            " position INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (stream, position))"
        )
        assert self.loop is not None
        while True:
            got = self.queue.get()
            if got is _STOP:
                break
            batch = list(got)
            while True:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self.queue.put(_STOP)
                    break
                batch.extend(more)
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO log (stream, position, body) VALUES (?, ?, ?)",
                [row for rows, _ in batch for row in rows],
            )
            db.execute("COMMIT")
            self.loop.call_soon_threadsafe(_resolve, [future for _, future in batch])
        db.close()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def make_app(store: str, secret: str = SECRET) -> web.Application:
    rooms: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)
    positions: dict[str, int] = defaultdict(int)
    versions: dict[str, int] = defaultdict(int)
    tokens = Tokens(secret)
    log = GroupCommit(store)

    def step(stream: str, body: bytes) -> Row:
        versions[stream] += 1
        return (stream, versions[stream], body)

    def event(session_id: str, kind: str, data: Any) -> tuple[int, bytes, bytes]:
        positions[session_id] += 1
        position = positions[session_id]
        body = orjson.dumps(
            {"session_id": session_id, "position": position, "type": kind, "at": "", "data": data}
        )
        return position, body, b'{"type":"event","event":' + body + b"}"

    def broadcast(session_id: str, frame: bytes) -> None:
        for outbound in tuple(rooms.get(session_id, ())):
            outbound.put_nowait(frame)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        session_id = request.query["session_id"]
        connection_id = request.query.get("connection_id", "c")
        stream = "connection:" + connection_id
        if stream in versions:
            raise web.HTTPConflict(text="connection_id_taken")
        await log.record(step(stream, b"CONNECTING"))
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=1 << 20)
        await ws.prepare(request)
        outbound: asyncio.Queue[bytes] = asyncio.Queue()

        async def sender() -> None:
            while True:
                await ws.send_frame(await outbound.get(), WSMsgType.TEXT)

        def state(name: str, **extra: Any) -> bytes:
            return orjson.dumps(
                {"type": "state", "connection_id": connection_id, "state": name, **extra}
            )

        sending = asyncio.create_task(sender())
        welcome = orjson.dumps(
            {"type": "welcome", "connection_id": connection_id, "state": "ACCEPTED"}
        )
        await log.record(step(stream, welcome))
        outbound.put_nowait(welcome)
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = orjson.loads(msg.data)
                if frame.get("type") == "auth":
                    if not tokens.ok(frame.get("token")):
                        await ws.close(code=4401, message=b"unauthenticated")
                        break
                    authenticated = state("AUTHENTICATED")
                    ready = state("SERVICES_READY", session_id=session_id)
                    attached: list[Row] = []
                    frames: list[bytes] = []
                    kinds = ["ConnectionAttached"]
                    if session_id not in positions:
                        kinds.insert(0, "SessionCreated")
                    for kind in kinds:
                        position, body, sent = event(
                            session_id, kind, {"connection_id": connection_id}
                        )
                        attached.append(("session:" + session_id, position, body))
                        frames.append(sent)
                    await log.record(step(stream, authenticated), step(stream, ready), *attached)
                    outbound.put_nowait(authenticated)
                    outbound.put_nowait(ready)
                    rooms[session_id].add(outbound)
                    for sent in frames:
                        broadcast(session_id, sent)
                    live = state(
                        "PROCESSING_READY", session_id=session_id, position=positions[session_id]
                    )
                    await log.record(step(stream, live))
                    outbound.put_nowait(live)
                elif frame.get("type") == "message":
                    position, body, sent = event(
                        session_id, "MessageRecorded", {"content": frame.get("content")}
                    )
                    await log.record(("session:" + session_id, position, body))
                    broadcast(session_id, sent)
        finally:
            room = rooms.get(session_id)
            if room is not None:
                room.discard(outbound)
                if not room:
                    del rooms[session_id]
            sending.cancel()
            await log.record(step(stream, b"CLOSED"))
        return ws

    def post(kind: str, status: int) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization", "")
            if not tokens.ok(header.removeprefix("Bearer ")):
                raise web.HTTPUnauthorized()
            session_id = request.match_info["session_id"]
            position, body, frame = event(session_id, kind, orjson.loads(await request.read()))
            await log.record(("session:" + session_id, position, body))
            broadcast(session_id, frame)
            return web.Response(
                body=orjson.dumps({"position": position, **request.match_info}),
                status=status,
                content_type="application/json",
            )

        return handler

    async def started(app: web.Application) -> None:
        log.start(asyncio.get_running_loop())

    async def stopped(app: web.Application) -> None:
        log.stop()

    app = web.Application()
    app.router.add_get("/v1/ws", websocket)
    add_write_routes(app, post)
    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server")
    parser.add_argument("--store", required=True, help="the SQLite file to record into")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(args.store), host="127.0.0.1", port=args.port, print=None, access_log=None)


if __name__ == "__main__":
    main()
