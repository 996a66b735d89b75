"""The peer a Python team would pick instead: python-socketio's AsyncServer
on aiohttp, doing the same handshake and room broadcast, recording nothing."""

from __future__ import annotations

import argparse
import os
from collections import defaultdict
from typing import Any

import jwt
import orjson
import socketio
from aiohttp import web

SECRET = os.environ.get("SESSIOND_SECRET", "bench-secret-0123456789-0123456789-abcdef")


def make_app() -> web.Application:
    sio = socketio.AsyncServer(async_mode="aiohttp", cors_allowed_origins=[])
    app = web.Application()
    sio.attach(app)
    positions: dict[str, int] = defaultdict(int)

    @sio.event
    async def connect(sid: str, environ: dict[str, Any], auth: Any) -> None:
        query = environ.get("QUERY_STRING", "")
        params = dict(p.split("=", 1) for p in query.split("&") if "=" in p)
        await sio.save_session(sid, {"session_id": params.get("session_id", "s")})
        await sio.emit("welcome", {"connection_id": sid, "state": "ACCEPTED"}, to=sid)

    @sio.event
    async def auth(sid: str, data: dict[str, Any]) -> None:
        try:
            jwt.decode(data.get("token", ""), SECRET, algorithms=["HS256"])
        except jwt.InvalidTokenError:
            await sio.disconnect(sid)
            return
        session = await sio.get_session(sid)
        session_id = session["session_id"]
        for state in ("AUTHENTICATED", "SERVICES_READY"):
            await sio.emit("state", {"connection_id": sid, "state": state}, to=sid)
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

    async def post_event(request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        body = orjson.loads(await request.read())
        jwt.decode(request.headers["Authorization"].split(" ", 1)[1], SECRET, algorithms=["HS256"])
        positions[session_id] += 1
        position = positions[session_id]
        event = {
            "session_id": session_id,
            "position": position,
            "type": "TaskProgressed",
            "data": body,
        }
        await sio.emit("event", event, room=session_id)
        return web.Response(
            body=orjson.dumps({"position": position}), status=202, content_type="application/json"
        )

    app.router.add_post("/v1/sessions/{session_id}/tasks/{task_id}/progress", post_event)
    app.router.add_post("/v1/sessions/{session_id}/messages", post_event)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
