"""``GET /v1/ws``: the upgrade, and one socket's life around it.

Before the upgrade: the query (the one schema), the origin, whether the
node is draining, the store's health and the budgets, and a proposed
connection ID looked up (one already recorded, or held by a socket of this
node, is refused 409). Nothing is recorded before the upgrade: a refused
upgrade is no connection. After it: CONNECTING and ACCEPTED recorded
together, the connection's two tasks (service/edge/ws.py), and whatever way
it ends, its CLOSED recorded
(docs/adr/0037-record-a-handshake-in-three-commits.md).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time

from aiohttp import WebSocketError, web

from domain.errors import ConnectionIdTaken, DomainError
from domain.ids import new_connection_id
from service.application import commands
from service.application.auth import AuthError, bearer_token
from service.application.writer import StoreUnavailable
from service.edge import access
from service.edge.budgets import admit_socket
from service.edge.context import (
    HEALTH,
    SETTINGS,
    SIGNER,
    SOCKETS,
    WRITER,
)
from service.edge.contract import operation
from service.edge.cors import origin_allowed
from service.edge.errors import ApiError
from service.edge.protocol import ConnectionProtocol, Limits
from service.edge.schema import SchemaError, SocketQuery, decode_query
from service.edge.ws import LiveConnection, SocketResponse, finished

log = logging.getLogger("sessiond.ws")

routes = web.RouteTableDef()


def _peer_close_facts(ws: web.WebSocketResponse) -> tuple[int | None, bool, int | None]:
    """What aiohttp knows of a close the server did not decide: the close
    code, whether pongs stopped, and the code aiohttp itself sent when the
    WebSocket layer refused a frame (1002, 1007, 1009: then its close code
    reads 1006, as it could not wait for the client's reply)."""
    exc = ws.exception()
    layer_error = exc.code if isinstance(exc, WebSocketError) else None
    if layer_error is None and isinstance(ws, SocketResponse):
        layer_error = ws.refused
    return ws.close_code, isinstance(exc, asyncio.TimeoutError), layer_error


def _header_token(request: web.Request) -> str | None:
    """The upgrade's bearer token; None when it names none (no header, or
    one of another scheme, such as the Basic credentials a browser sends by
    itself to a proxy that asked for them): the socket then waits for its
    ``auth`` frame."""
    header = request.headers.get("Authorization")
    if header is None or header.partition(" ")[0].lower() != "bearer":
        return None
    try:
        return bearer_token(header)
    except AuthError:
        return ""  # present but malformed: refused with 4401 after the upgrade


@routes.get("/v1/ws")
@operation(
    summary="Open a WebSocket (the protocol is in /v1/asyncapi.json)",
    query=SocketQuery,
    answers={101: None},
    errors=(
        "invalid_id",
        "forbidden_origin",
        "connection_id_taken",
        "upgrade_required",
        "rate_limited",
        "unavailable",
    ),
    auth=False,
)
async def websocket(request: web.Request) -> web.StreamResponse:
    opened_at = time.monotonic()
    settings = request.app[SETTINGS]
    try:
        asked = decode_query(request.query, SocketQuery)
    except SchemaError as e:
        raise ApiError(e.code, e.message) from None
    if not origin_allowed(request, settings.cors_origins):
        raise ApiError(
            "forbidden_origin", f"origin {request.headers.get('Origin')!r} is not allowed"
        )
    # aiohttp refuses a message of ``max_msg_size`` bytes or more; the
    # contract allows frames up to the limit, the limit included.
    ws = SocketResponse(
        heartbeat=settings.heartbeat, max_msg_size=settings.max_frame_bytes + 1, autoping=True
    )
    # A cheap look at the upgrade header (aiohttp's can_prepare() runs the
    # whole handshake check, which prepare() then runs again); a request that
    # claims an upgrade but is otherwise malformed fails in prepare() and is
    # recorded CLOSED upgrade_failed.
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError("upgrade_required", "this endpoint speaks WebSocket only", status=426)
    health = request.app[HEALTH]
    if health.draining:  # refused before anything is recorded, like a store down
        raise ApiError("unavailable", "the node is draining; connect again, to another node")
    if not health.up:
        raise ApiError("unavailable", "the store is down; try again later")
    header_token = _header_token(request)
    admission = await admit_socket(request, header_token, asked.session_id)
    protocol = ConnectionProtocol(
        connection_id=asked.connection_id or new_connection_id(),
        session_id=asked.session_id,
        after=asked.after,
        node=settings.node_id,
        verify=request.app[SIGNER].verify,
        limits=Limits(
            auth_timeout=settings.auth_timeout,
            bad_frames_per_minute=settings.bad_frames_per_minute,
            max_connections_per_session=settings.max_connections_per_session,
            token_warning=settings.token_warning,
        ),
        wall_offset=time.time() - asyncio.get_running_loop().time(),
        admission=admission,
        proposed=asked.connection_id is not None,
    )
    facts = access.about(request)
    if facts is not None:
        facts.connection_id = protocol.connection_id
        facts.session_id = protocol.session_id
    conn = LiveConnection(request, ws, protocol, opened_at=opened_at)
    ws.last_word = conn.layer_closing
    registry = request.app[SOCKETS]
    try:
        # A proposed ID held by a socket of this node (its CONNECTING may be
        # in flight), then by the store, is taken; a generated one is new and
        # time-ordered. Two nodes racing for one new ID both pass; the store's
        # key refuses the second's CONNECTING after its upgrade.
        if protocol.proposed and protocol.connection_id in registry.sockets:
            raise ConnectionIdTaken(_taken(protocol.connection_id))
        registry.add(conn)
        if protocol.proposed and await request.app[WRITER].execute(
            commands.connection_recorded(protocol.connection_id)
        ):
            raise ConnectionIdTaken(_taken(protocol.connection_id))
    except BaseException as e:
        registry.remove(conn)
        admission.release()  # nothing recorded: nothing charged
        if isinstance(e, DomainError):
            raise ApiError(e.code, e.message) from None
        if isinstance(e, StoreUnavailable):
            raise ApiError("unavailable", str(e)) from None
        raise

    log.info(
        "connection opened",
        extra={
            "connection_id": conn.connection_id,
            "session_id": protocol.session_id,
            "after": protocol.after,
        },
    )
    try:
        try:
            await ws.prepare(request)
        except Exception:
            await conn.run(protocol.upgrade_failed())
            raise
        if facts is not None:
            facts.sent = 101
        loop = asyncio.get_running_loop()
        driver = asyncio.ensure_future(conn.run(protocol.upgraded(header_token, loop.time())))
        receiver = conn.receiver = asyncio.ensure_future(conn.receive_loop())
        try:
            await finished(receiver)
            if conn._ending is not None:
                await asyncio.shield(conn._ending)
        finally:
            receiver.cancel()
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await driver
        code, timed_out, layer_error = _peer_close_facts(ws)
        await conn.run(
            protocol.socket_closed(
                code, timed_out=timed_out, layer_error=layer_error, said=conn.said
            )
        )
        return ws
    finally:
        if protocol.ending is None:
            # aiohttp cancels this handler when the transport goes away (a
            # missed pong, a dropped client): still record why it ended.
            code, timed_out, layer_error = (
                _peer_close_facts(ws) if ws.prepared else (None, False, None)
            )
            await conn.run(
                protocol.socket_closed(
                    code, timed_out=timed_out, layer_error=layer_error, said=conn.said
                )
            )
        _closed(conn)
        if facts is not None and protocol.principal is not None:
            facts.user = protocol.principal.user_id
        admission.ended()
        if conn.subscription is not None:
            conn.subscription.close()
        registry.remove(conn)
        conn.finished.set()
        conn.release()


def _taken(connection_id: str) -> str:
    return f"connection ID {connection_id!r} is already recorded"


def _closed(conn: LiveConnection) -> None:
    ending = conn.protocol.ending
    if ending is None:
        return
    code, reason = ending
    conn.metrics.ws_closed(code, reason)
    conn.log_end()
