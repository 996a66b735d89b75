"""The bare limit: the same wire protocol as sessiond, recording nothing.

welcome -> auth (token verified) -> AUTHENTICATED -> SERVICES_READY ->
PROCESSING_READY, message frames and POSTed messages or progress broadcast as
event frames to every socket of the session, with a per-session position
counter. No store, no lifecycle machine, no projection.
"""

from __future__ import annotations

import argparse
import asyncio
import os
from collections import defaultdict
from typing import Any

import jwt
import orjson
from aiohttp import WSMsgType, web

SECRET = os.environ.get("SESSIOND_SECRET", "bench-secret-0123456789-0123456789-abcdef")


def make_app() -> web.Application:
    # One outbound queue per socket, drained by its own task: frames to one
    # socket are written one at a time, in order (as sessiond's driver does).
    rooms: dict[str, set[asyncio.Queue[bytes]]] = defaultdict(set)
    positions: dict[str, int] = defaultdict(int)

    async def broadcast(session_id: str, kind: str, data: dict[str, Any]) -> int:
        positions[session_id] += 1
        position = positions[session_id]
        frame = orjson.dumps(
            {
                "type": "event",
                "event": {
                    "session_id": session_id,
                    "position": position,
                    "type": kind,
                    "at": "",
                    "data": data,
                },
            }
        )
        for queue in tuple(rooms[session_id]):
            queue.put_nowait(frame)
        return position

    async def websocket(request: web.Request) -> web.WebSocketResponse:
        session_id = request.query["session_id"]
        connection_id = request.query.get("connection_id", "c")
        ws = web.WebSocketResponse(heartbeat=20, max_msg_size=1 << 20)
        await ws.prepare(request)
        outbound: asyncio.Queue[bytes] = asyncio.Queue()

        async def sender() -> None:
            while True:
                frame = await outbound.get()
                await ws.send_frame(frame, WSMsgType.TEXT)

        sending = asyncio.create_task(sender())
        await ws.send_str(
            orjson.dumps(
                {"type": "welcome", "connection_id": connection_id, "state": "ACCEPTED"}
            ).decode()
        )
        try:
            async for msg in ws:
                if msg.type != WSMsgType.TEXT:
                    continue
                frame = orjson.loads(msg.data)
                if frame.get("type") == "auth":
                    try:
                        jwt.decode(frame.get("token", ""), SECRET, algorithms=["HS256"])
                    except jwt.InvalidTokenError:
                        await ws.close(code=4401)
                        break
                    for state in ("AUTHENTICATED", "SERVICES_READY"):
                        await ws.send_str(
                            orjson.dumps(
                                {"type": "state", "connection_id": connection_id, "state": state}
                            ).decode()
                        )
                    rooms[session_id].add(outbound)
                    await ws.send_str(
                        orjson.dumps(
                            {
                                "type": "state",
                                "connection_id": connection_id,
                                "state": "PROCESSING_READY",
                                "session_id": session_id,
                                "position": positions[session_id],
                            }
                        ).decode()
                    )
                elif frame.get("type") == "message":
                    await broadcast(
                        session_id, "MessageRecorded", {"content": frame.get("content")}
                    )
        finally:
            rooms[session_id].discard(outbound)
            sending.cancel()
        return ws

    async def post_event(request: web.Request) -> web.Response:
        session_id = request.match_info["session_id"]
        body = orjson.loads(await request.read())
        jwt.decode(request.headers["Authorization"].split(" ", 1)[1], SECRET, algorithms=["HS256"])
        position = await broadcast(session_id, "TaskProgressed", body)
        return web.Response(
            body=orjson.dumps({"position": position}), status=202, content_type="application/json"
        )

    app = web.Application()
    app.router.add_get("/v1/ws", websocket)
    app.router.add_post("/v1/sessions/{session_id}/tasks/{task_id}/progress", post_event)
    app.router.add_post("/v1/sessions/{session_id}/messages", post_event)
    return app


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    web.run_app(make_app(), host="127.0.0.1", port=args.port, print=None, access_log=None)
