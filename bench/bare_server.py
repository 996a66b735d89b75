"""The bare limit: sessiond's wire protocol on aiohttp, recording nothing.

welcome -> auth (token verified) -> AUTHENTICATED -> SERVICES_READY ->
PROCESSING_READY; ``message`` frames and POSTed messages, tasks and progress
are broadcast as ``event`` frames to every socket of the session, numbered by
a per-session position counter. No store, no lifecycle machine, no
projection: what any aiohttp WebSocket server has to do, and nothing more.

    python -m bench.bare_server --port P      (SESSIOND_SECRET signs the tokens)
"""

from __future__ import annotations

import argparse
import asyncio
import os
import time
from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any

import jwt
import orjson
from aiohttp import WSMsgType, web

from service.runtime import eventloop
from service.runtime.settings import Settings

SECRET = os.environ.get("SESSIOND_SECRET", "bench-secret-0123456789-0123456789-abcdef")
# The listen backlog sessiond serves with by default: the peers are compared
# under the same.
BACKLOG = Settings.listen_backlog


Handler = Callable[[web.Request], Awaitable[web.Response]]


class Tokens:
    """HS256 verification, each token remembered until it expires (as sessiond does)."""

    def __init__(self, secret: str) -> None:
        self.secret = secret
        self.verified: dict[str, float] = {}

    def ok(self, tok: object) -> bool:
        if not isinstance(tok, str):
            return False
        expires = self.verified.get(tok)
        if expires is not None and time.time() < expires:
            return True
        try:
            claims = jwt.decode(tok, self.secret, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            return False
        if len(self.verified) >= 4096:
            self.verified.pop(next(iter(self.verified)))
        self.verified[tok] = float(claims["exp"])
        return True


# A row recorded before its step is announced: (stream, position, body).
Row = tuple[str, int, bytes]
# Awaited with a step's rows; returns once they are durable (bench/floor_server.py).
Record = Callable[..., Awaitable[None]]


def make_app(secret: str = SECRET, record: Record | None = None) -> web.Application:
    """The bare server; with ``record``, every step's rows are handed to it and
    awaited before the step is announced (the durable floor), and nothing else
    changes but the attach events sessiond also records and sends."""
    # One outbound queue per socket, drained by its own task: frames to one
    # socket are written one at a time, in order (as sessiond's driver does).
    rooms: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)
    positions: dict[str, int] = defaultdict(int)
    versions: dict[str, int] = defaultdict(int)  # each connection's recorded steps
    tokens = Tokens(secret)

    def step(stream: str, body: bytes) -> Row:
        versions[stream] += 1
        return (stream, versions[stream], body)

    def event(session_id: str, kind: str, data: Any) -> tuple[Row, bytes]:
        """The session's next event: its row, and its ``event`` frame."""
        positions[session_id] += 1
        position = positions[session_id]
        body = orjson.dumps(
            {"session_id": session_id, "position": position, "type": kind, "at": "", "data": data}
        )
        return ("session:" + session_id, position, body), b'{"type":"event","event":' + body + b"}"

    def broadcast(session_id: str, frame: bytes) -> None:
        for outbound in tuple(rooms.get(session_id, ())):
            outbound.put_nowait(frame)

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        session_id = request.query["session_id"]
        connection_id = request.query.get("connection_id", "c")
        stream = "connection:" + connection_id
        if record is not None and stream in versions:
            # Looked up before the upgrade, nothing recorded (as sessiond does).
            raise web.HTTPConflict(text="connection_id_taken")
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
        if record is not None:
            # Commit 1: CONNECTING and ACCEPTED, once the upgrade completed.
            await record(step(stream, b"CONNECTING"), step(stream, welcome))
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
                    attached: list[tuple[Row, bytes]] = []
                    if record is not None:
                        # As sessiond's attach: the session's events too.
                        kinds = ["ConnectionAttached"]
                        if session_id not in positions:
                            kinds.insert(0, "SessionCreated")
                        attached = [
                            event(session_id, kind, {"connection_id": connection_id})
                            for kind in kinds
                        ]
                    live = state(
                        "PROCESSING_READY", session_id=session_id, position=positions[session_id]
                    )
                    if record is not None:
                        # Commit 2: AUTHENTICATED, SERVICES_READY (with the
                        # attach) and PROCESSING_READY, whose position is
                        # where the backlog (here the attach's events) ends.
                        await record(
                            step(stream, authenticated),
                            step(stream, ready),
                            *(row for row, _ in attached),
                            step(stream, live),
                        )
                    outbound.put_nowait(authenticated)
                    outbound.put_nowait(ready)
                    for _, sent in attached:
                        outbound.put_nowait(sent)
                    outbound.put_nowait(live)
                    # Live from here: later events reach this socket after
                    # PROCESSING_READY; the attach's went to the others.
                    for other in tuple(rooms.get(session_id, ())):
                        for _, sent in attached:
                            other.put_nowait(sent)
                    rooms[session_id].add(outbound)
                elif frame.get("type") == "message":
                    row, sent = event(
                        session_id, "MessageRecorded", {"content": frame.get("content")}
                    )
                    if record is not None:
                        await record(row)
                    broadcast(session_id, sent)
        finally:
            room = rooms.get(session_id)
            if room is not None:
                room.discard(outbound)
                if not room:
                    del rooms[session_id]
            sending.cancel()
            if record is not None:
                await record(step(stream, b"CLOSED"))  # commit 3
        return ws

    def post(kind: str, status: int) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization", "")
            if not tokens.ok(header.removeprefix("Bearer ")):
                raise web.HTTPUnauthorized()
            session_id = request.match_info["session_id"]
            row, frame = event(session_id, kind, orjson.loads(await request.read()))
            if record is not None:
                await record(row)
            broadcast(session_id, frame)
            return web.Response(
                body=orjson.dumps({"position": row[1], **request.match_info}),
                status=status,
                content_type="application/json",
            )

        return handler

    app = web.Application()
    app.router.add_get("/v1/ws", websocket)
    add_write_routes(app, post)
    return app


def add_write_routes(app: web.Application, post: Any) -> None:
    """The HTTP writes the benchmark drives, the same on every peer server."""
    app.router.add_post("/v1/sessions/{session_id}/messages", post("MessageRecorded", 201))
    app.router.add_post("/v1/sessions/{session_id}/tasks", post("TaskStarted", 201))
    app.router.add_post(
        "/v1/sessions/{session_id}/tasks/{task_id}/progress", post("TaskProgressed", 202)
    )


def run_peer(app: web.Application, port: int) -> None:
    """Serve ``app`` as every peer of the bench is served: on 127.0.0.1,
    with sessiond's listen backlog, on the event loop sessiond would serve on
    here (uvloop where installed, or what SESSIOND_EVENT_LOOP names), and no
    access log: the peers and sessiond are compared on the same."""
    web.run_app(
        app,
        host="127.0.0.1",
        port=port,
        print=None,
        access_log=None,
        backlog=BACKLOG,
        loop=eventloop.loop_factory(Settings.from_env().event_loop)(),
    )


def serve(make: Any, prog: str) -> None:
    parser = argparse.ArgumentParser(prog=prog)
    parser.add_argument("--port", type=int, required=True)
    run_peer(make(), parser.parse_args().port)


if __name__ == "__main__":
    serve(make_app, "python -m bench.bare_server")
