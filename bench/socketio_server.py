"""The peer a Python team would pick instead: python-socketio's AsyncServer on
aiohttp, doing the same handshake and room broadcast, recording nothing.

    python -m bench.socketio_server --port P      (SESSIOND_SECRET signs the tokens)
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Awaitable, Callable
from typing import Any
from urllib.parse import parse_qs

import orjson
import socketio
from aiohttp import web

from bench.bare_server import SECRET, Tokens, add_write_routes, serve

Handler = Callable[[web.Request], Awaitable[web.Response]]


def make_app(secret: str = SECRET) -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
    app = web.Application()
    sio.attach(app)
    positions: dict[str, int] = defaultdict(int)
    tokens = Tokens(secret)

    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        query = parse_qs(environ.get("QUERY_STRING", ""))
        session_id = query.get("session_id", ["s"])[0]
        await sio.save_session(sid, {"session_id": session_id})
        await sio.emit("welcome", {"connection_id": sid, "state": "ACCEPTED"}, to=sid)

    async def auth(sid: str, data: dict[str, Any]) -> None:
        if not tokens.ok(data.get("token")):
            await sio.disconnect(sid)
            return
        session_id = (await sio.get_session(sid))["session_id"]
        await sio.emit("state", {"connection_id": sid, "state": "AUTHENTICATED"}, to=sid)
        await sio.emit(
            "state",
            {"connection_id": sid, "state": "SERVICES_READY", "session_id": session_id},
            to=sid,
        )
        await sio.enter_room(sid, session_id)
        await sio.emit(
            "state",
            {
                "connection_id": sid,
                "state": "PROCESSING_READY",
                "session_id": session_id,
                "position": positions[session_id],
            },
            to=sid,
        )

    async def message(sid: str, data: dict[str, Any]) -> None:
        session_id = (await sio.get_session(sid))["session_id"]
        await broadcast(session_id, "MessageRecorded", {"content": data.get("content")})

    sio.on("connect", connect)
    sio.on("auth", auth)
    sio.on("message", message)

    async def broadcast(session_id: str, kind: str, data: dict[str, Any]) -> int:
        positions[session_id] += 1
        position = positions[session_id]
        event = {"session_id": session_id, "position": position, "type": kind, "data": data}
        await sio.emit("event", event, room=session_id)
        return position

    def post(kind: str, status: int) -> Handler:
        async def handler(request: web.Request) -> web.Response:
            header = request.headers.get("Authorization", "")
            if not tokens.ok(header.removeprefix("Bearer ")):
                raise web.HTTPUnauthorized()
            body = orjson.loads(await request.read())
            position = await broadcast(request.match_info["session_id"], kind, body)
            return web.Response(
                body=orjson.dumps({"position": position, **request.match_info}),
                status=status,
                content_type="application/json",
            )

        return handler

    add_write_routes(app, post)
    return app


if __name__ == "__main__":
    serve(make_app, "python -m bench.socketio_server")
