"""The WebSocket endpoint: one connection's walk through its lifecycle.

    CONNECTING       the upgrade request arrived; recorded before upgrading
    ACCEPTED         upgraded; announced by the ``welcome`` frame
    AUTHENTICATED    a valid token (``auth`` frame or Authorization header)
    SERVICES_READY   attached to its session (created if need be), owner
                     checked, older connections superseded: one commit
    PROCESSING_READY every event after ``after`` sent; live from here on
    CLOSED           however it ended, with its code and reason

Each step is recorded under the connection's one ID *before* it is announced
with a ``state`` frame. Two tasks serve a socket: the receive loop (frames
from the client) and the driver (the lifecycle, then the session's events).
Whichever decides to end the connection records CLOSED, says so in a last
``state`` frame, and closes the socket with the code of PROTOCOL.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
import uuid
from collections import Counter, deque
from typing import Any

import orjson
from aiohttp import WebSocketError, WSCloseCode, WSMsgType, web

from domain.errors import DomainError, InvalidId, InvalidTransition
from domain.ids import check_id, new_connection_id, session_stream
from domain.session import MESSAGE_ROLES
from service.application import commands
from service.application.auth import AuthError, Principal, bearer_token
from service.application.hub import SlowConsumer, Subscription
from service.application.writer import Command, StoreUnavailable
from service.edge.context import HUB, METRICS, READERS, SETTINGS, SIGNER, SOCKETS, STORE, WRITER
from service.edge.cors import origin_allowed
from service.edge.errors import ApiError
from service.storage.wire import dumps

log = logging.getLogger("sessiond.ws")

BACKLOG_PAGE = 500
# How long a server-side close waits on a client that does not read.
CLOSE_PATIENCE = 5.0

CLOSE_NORMAL = 1000
CLOSE_GOING_AWAY = 1001
CLOSE_TOO_LARGE = 1009
CLOSE_PROTOCOL = 4400
CLOSE_UNAUTHENTICATED = 4401
CLOSE_FORBIDDEN = 4403
CLOSE_SLOW_CONSUMER = 4408
CLOSE_SUPERSEDED = 4409


class SocketRegistry:
    """The live sockets of this node, so shutdown can close every one."""

    def __init__(self) -> None:
        self.sockets: dict[str, LiveConnection] = {}

    def add(self, conn: LiveConnection) -> None:
        self.sockets[conn.connection_id] = conn

    def remove(self, conn: LiveConnection) -> None:
        if self.sockets.get(conn.connection_id) is conn:
            del self.sockets[conn.connection_id]

    def count_by_state(self) -> Counter[str]:
        return Counter(c.state for c in self.sockets.values())

    async def close_all(self, code: int, reason: str, grace: float) -> None:
        conns = list(self.sockets.values())
        if not conns:
            return
        await asyncio.gather(*(c.end(code, reason) for c in conns), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.gather(*(c.finished.wait() for c in conns))


class LiveConnection:
    """One socket of this node and where it stands."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        *,
        connection_id: str,
        session_id: str,
        after: int,
    ) -> None:
        self.app = request.app
        self.request = request
        self.ws = ws
        self.connection_id = connection_id
        self.session_id = session_id
        self.after = after
        self.settings = request.app[SETTINGS]
        self.writer = request.app[WRITER]
        self.metrics = request.app[METRICS]
        self.state = "CONNECTING"
        self.principal: Principal | None = None
        self.auth_token: asyncio.Future[str] = asyncio.get_running_loop().create_future()
        self.subscription: Subscription | None = None
        self.closed_recorded = False
        self.close_code: int | None = None
        self.close_reason: str | None = None
        self.finished = asyncio.Event()
        self.bad_frames: deque[float] = deque()
        self.last_sent = after
        self._ending: asyncio.Task[None] | None = None
        self.receiver: asyncio.Task[None] | None = None

    def release(self) -> None:
        """Drop what ties this connection to its own tasks once it is over.

        A cancelled task keeps its CancelledError, whose traceback keeps the
        frames that ran ``self``: with ``self.receiver`` pointing back at the
        task, every finished connection (socket, transport, request, tasks;
        about seventy objects) was a reference cycle only the cyclic garbage
        collector could free, and its collections grew to a fifth of the
        server's CPU under issue 5's handshake load. Without the cycle,
        reference counting frees a connection the moment it ends.
        """
        self.receiver = None
        self._ending = None
        self.subscription = None

    # --- sending ------------------------------------------------------------

    async def send(self, frame: dict[str, Any]) -> None:
        if self.ws.closed:
            return
        with contextlib.suppress(ConnectionError, RuntimeError):
            await self.ws.send_frame(dumps(frame), WSMsgType.TEXT)

    async def send_error(self, code: str, message: str, ref: Any = None) -> None:
        self.metrics.inc("sessiond_ws_errors_total", code=code)
        frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
        if isinstance(ref, str):
            frame["ref"] = ref
        await self.send(frame)

    async def announce(self, **extra: Any) -> None:
        await self.send(
            {"type": "state", "connection_id": self.connection_id, "state": self.state, **extra}
        )

    # --- recording ----------------------------------------------------------

    async def record(self, command: Command[Any]) -> Any:
        return await self.writer.execute(command)

    async def record_closed(self, code: int, reason: str) -> None:
        if self.closed_recorded:
            return
        self.closed_recorded = True
        self.close_code, self.close_reason = code, reason
        try:
            await self.writer.execute(
                commands.close_connection(self.connection_id, code=code, reason=reason)
            )
        except (DomainError, StoreUnavailable) as e:
            log.error(
                "could not record CLOSED",
                extra={"connection_id": self.connection_id, "error": str(e)},
            )
        self.state = "CLOSED"
        self.metrics.inc("sessiond_ws_closes_total", code=str(code), reason=reason)
        log.info(
            "connection closed",
            extra={
                "connection_id": self.connection_id,
                "session_id": self.session_id,
                "code": code,
                "reason": reason,
            },
        )

    async def end(self, code: int, reason: str) -> None:
        """Server-side end: record CLOSED, announce it, close the socket."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end(code, reason))
        await asyncio.shield(self._ending)

    def _overflowed(self) -> None:
        """The hub could not queue another event for this socket (4408)."""
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._end(CLOSE_SLOW_CONSUMER, "slow_consumer"))

    async def _end(self, code: int, reason: str) -> None:
        await self.record_closed(code, reason)
        try:
            # A client that stopped reading cannot take a last frame nor a
            # closing handshake: give it a moment, then drop the transport.
            async with asyncio.timeout(CLOSE_PATIENCE):
                await self.send(
                    {
                        "type": "state",
                        "connection_id": self.connection_id,
                        "state": "CLOSED",
                        "code": code,
                        "reason": reason,
                    }
                )
                await self._stop_receiving()
                with contextlib.suppress(Exception):
                    await self.ws.close(code=code, message=reason.encode()[:120])
        except TimeoutError:
            transport = self.request.transport
            if transport is not None:
                transport.abort()
            await self._stop_receiving()

    async def _stop_receiving(self) -> None:
        """Stop the receive loop before closing.

        aiohttp's ``close()`` waits for the client's close reply only when no
        other task is inside ``receive()``; otherwise it drops the transport
        right after sending the close frame, and clients then report 1006
        instead of our code. With the loop stopped, the closing handshake
        completes and the client sees 4409, 4401, 1001, ...
        """
        receiver = self.receiver
        if receiver is not None and not receiver.done() and receiver is not asyncio.current_task():
            receiver.cancel()
            await _finished(receiver)

    # --- the lifecycle (driver task) ------------------------------------------

    async def drive(self, header_token: str | None) -> None:
        try:
            await self._drive(header_token)
        except asyncio.CancelledError:
            raise
        except StoreUnavailable as e:
            log.warning("store unavailable", extra={"connection_id": self.connection_id})
            await self.end(CLOSE_GOING_AWAY, f"store unavailable: {e}"[:100])
        except Exception:
            log.exception("connection driver failed", extra={"connection_id": self.connection_id})
            await self.end(WSCloseCode.INTERNAL_ERROR, "internal_error")

    async def _drive(self, header_token: str | None) -> None:
        # With a valid token in the upgrade request, nothing is awaited between
        # ACCEPTED, AUTHENTICATED and SERVICES_READY: the three are recorded in
        # one commit (each its own event, all durable before the first frame).
        principal: Principal | None = None
        refusal: AuthError | None = None
        if header_token is not None:
            try:
                principal = self.app[SIGNER].verify(header_token)
            except AuthError as e:
                refusal = e
        steps: list[Command[Any]] = []
        if principal is None:
            self.state = await self.record(commands.accept(self.connection_id))
            await self._welcome()
            if refusal is None:
                try:
                    async with asyncio.timeout(self.settings.auth_timeout):
                        token: object = await self.auth_token
                except TimeoutError:
                    await self.end(CLOSE_UNAUTHENTICATED, "auth_timeout")
                    return
                try:
                    principal = self.app[SIGNER].verify(token)
                except AuthError as e:
                    refusal = e
            if principal is None:
                await self.end(CLOSE_UNAUTHENTICATED, f"unauthenticated: {refusal}"[:100])
                return
        else:
            steps.append(commands.accept(self.connection_id))
        self.principal = principal

        # SERVICES_READY: subscribe first, so nothing recorded from here on is missed.
        self.subscription = self.app[HUB].subscribe(
            self.session_id, self.settings.send_queue_limit, on_overflow=self._overflowed
        )
        steps.append(commands.authenticate(self.connection_id, principal))
        steps.append(
            commands.attach(
                self.connection_id,
                self.session_id,
                principal,
                node=self.settings.node_id,
                max_connections=self.settings.max_connections_per_session,
            )
        )
        outcomes = iter(await self.record(commands.chain(*steps)))
        if len(steps) == 3:
            self.state = _result(next(outcomes))
            await self._welcome()
        self.state = _result(next(outcomes))
        await self.announce(user_id=principal.user_id)
        try:
            superseded, position_before = _result(next(outcomes))
        except commands.Forbidden as e:
            await self.end(CLOSE_FORBIDDEN, f"forbidden: {e.message}"[:100])
            return
        except DomainError as e:
            await self.end(CLOSE_FORBIDDEN, e.code)
            return
        self.state = "SERVICES_READY"
        await self.announce(session_id=self.session_id, superseded=superseded)

        # Backlog: what was recorded before this connection subscribed comes
        # from the store, in pages; the attach commit and everything after it
        # is already waiting in the subscription (the writer publishes before
        # it answers), and any hole there is filled from the store too.
        await self.send_from_store(until=position_before)
        try:
            for event in self.subscription.drain():
                await self.deliver(event, live=True)
        except SlowConsumer:
            await self.end(CLOSE_SLOW_CONSUMER, "slow_consumer")
            return
        if self._ending is not None:
            return

        # PROCESSING_READY, then live.
        self.state = await self.record(commands.go_live(self.connection_id, self.last_sent))
        await self.announce(session_id=self.session_id, position=self.last_sent)
        # Opened and closed are INFO; the steps between are DEBUG (each line
        # costs a share of a handshake's CPU, measured in bench/).
        log.debug(
            "connection live",
            extra={
                "connection_id": self.connection_id,
                "session_id": self.session_id,
                "position": self.last_sent,
            },
        )
        while self._ending is None:
            try:
                event = await self.subscription.get()
            except SlowConsumer:
                await self.end(CLOSE_SLOW_CONSUMER, "slow_consumer")
                return
            await self.deliver(event, live=True)

    async def _welcome(self) -> None:
        await self.send(
            {
                "type": "welcome",
                "connection_id": self.connection_id,
                "session_id": self.session_id,
                "state": self.state,
            }
        )

    async def send_from_store(self, until: int | None) -> None:
        """Send stored events after ``last_sent`` (up to ``until``), in order."""
        store = self.app[STORE]
        loop = asyncio.get_running_loop()
        while self._ending is None:
            limit = BACKLOG_PAGE if until is None else min(BACKLOG_PAGE, until - self.last_sent)
            if limit <= 0:
                return
            read = functools.partial(
                store.stream_wire_events,
                session_stream(self.session_id),
                after=self.last_sent,
                limit=limit,
            )
            events = await loop.run_in_executor(self.app[READERS], read)
            for event in events:
                await self.deliver(event, live=False)
            if len(events) < limit:
                return

    async def deliver(self, event: dict[str, Any], *, live: bool) -> None:
        """Send one session event exactly once, in order, filling any gap."""
        position = event["position"]
        if position > self.last_sent:
            if live and position > self.last_sent + 1:
                await self.send_from_store(until=position - 1)
            if position == self.last_sent + 1:
                await self.send({"type": "event", "event": event})
                self.last_sent = position
        if (
            event["type"] == "ConnectionDetached"
            and event["data"].get("connection_id") == self.connection_id
            and self._ending is None
        ):
            # The log says this connection is no longer attached: superseded
            # by a newer one, or given up for lost by a peer that thought this
            # node dead. Either way the socket must not outlive the record.
            if event["data"].get("reason") == "superseded":
                await self.end(CLOSE_SUPERSEDED, "superseded")
            else:
                await self.end(CLOSE_GOING_AWAY, f"detached: {event['data'].get('reason')}")

    # --- frames from the client (receive loop) ---------------------------------

    async def receive_loop(self) -> None:
        async for msg in self.ws:
            if msg.type == WSMsgType.TEXT:
                await self.on_text(msg.data)
            elif msg.type == WSMsgType.BINARY:
                await self.bad_frame("bad_frame", "frames are JSON text", None)
            if self._ending is not None:
                break

    async def bad_frame(self, code: str, message: str, ref: Any) -> None:
        now = time.monotonic()
        self.bad_frames.append(now)
        while self.bad_frames and now - self.bad_frames[0] > 60:
            self.bad_frames.popleft()
        await self.send_error(code, message, ref)
        if len(self.bad_frames) > self.settings.bad_frames_per_minute:
            await self.end(CLOSE_PROTOCOL, "protocol_error")

    async def on_text(self, data: str) -> None:
        try:
            frame = orjson.loads(data)
        except orjson.JSONDecodeError:
            await self.bad_frame("bad_frame", "the frame is not valid JSON", None)
            return
        if not isinstance(frame, dict):
            await self.bad_frame("bad_frame", "a frame is a JSON object", None)
            return
        ref = frame.get("ref")
        if ref is not None and not isinstance(ref, str):
            await self.bad_frame("bad_frame", "ref must be a string", None)
            return
        kind = frame.get("type")
        if kind == "auth":
            await self.on_auth(frame, ref)
        elif kind == "message":
            await self.on_message(frame, ref)
        elif isinstance(kind, str):
            await self.bad_frame("unknown_type", f"unknown frame type {kind[:40]!r}", ref)
        else:
            await self.bad_frame("bad_frame", "a frame needs a string 'type'", ref)

    async def on_auth(self, frame: dict[str, Any], ref: Any) -> None:
        if not self.auth_token.done() and self.state in ("CONNECTING", "ACCEPTED"):
            token = frame.get("token")
            self.auth_token.set_result(token if isinstance(token, str) else "")
            return
        # Authenticating twice is a transition the lifecycle refuses: record
        # the attempt for the audit, and tell the client.
        try:
            assert self.principal is not None
            await self.record(commands.authenticate(self.connection_id, self.principal))
        except InvalidTransition as e:
            await self.send_error("invalid_transition", e.message, ref)
        except (AssertionError, DomainError, StoreUnavailable):
            await self.send_error("invalid_transition", "already authenticating", ref)

    async def on_message(self, frame: dict[str, Any], ref: Any) -> None:
        if self.state != "PROCESSING_READY":
            await self.send_error(
                "not_ready", f"messages are accepted in PROCESSING_READY, not {self.state}", ref
            )
            return
        allowed = {"type", "ref", "role", "content", "message_id", "model", "tokens", "metadata"}
        unknown = sorted(set(frame) - allowed)
        role = frame.get("role", "user")
        content = frame.get("content")
        message_id = frame.get("message_id")
        problem = None
        if unknown:
            problem = f"unknown field(s): {', '.join(unknown)}"
        elif not isinstance(content, str):
            problem = "content must be a string"
        elif role not in MESSAGE_ROLES:
            problem = f"role must be one of {', '.join(MESSAGE_ROLES)}"
        elif frame.get("model") is not None and not isinstance(frame.get("model"), str):
            problem = "model must be a string"
        elif frame.get("metadata") is not None and not isinstance(frame.get("metadata"), dict):
            problem = "metadata must be an object"
        elif frame.get("tokens") is not None and (
            isinstance(frame.get("tokens"), bool) or not isinstance(frame.get("tokens"), int)
        ):
            problem = "tokens must be a whole number"
        elif message_id is not None:
            try:
                check_id(message_id, "message_id")
            except InvalidId as e:
                problem = e.message
        if problem is not None:
            await self.bad_frame("bad_frame", problem, ref)
            return
        assert self.principal is not None and isinstance(content, str)
        try:
            await self.record(
                commands.record_message(
                    self.session_id,
                    self.principal,
                    message_id=message_id or "msg_" + uuid.uuid4().hex,
                    role=role,
                    content=content,
                    model=frame.get("model"),
                    tokens=frame.get("tokens"),
                    metadata=frame.get("metadata"),
                    connection_id=self.connection_id,
                )
            )
        except DomainError as e:
            await self.send_error(e.code, e.message, ref)
        except StoreUnavailable as e:
            await self.send_error("unavailable", str(e), ref)


def _query_params(request: web.Request) -> tuple[str, str | None, int]:
    q = request.query
    try:
        session_id = check_id(q.get("session_id"), "session_id")
        proposed = q.get("connection_id")
        if proposed is not None:
            check_id(proposed, "connection_id")
    except InvalidId as e:
        raise ApiError("invalid_id", e.message) from None
    raw_after = q.get("after") or "0"
    try:
        after = int(raw_after)
    except ValueError:
        raise ApiError(
            "invalid_query", f"after must be a whole number, got {raw_after!r}"
        ) from None
    if after < 0:
        raise ApiError("invalid_query", "after must not be negative")
    return session_id, proposed, after


async def _finished(task: asyncio.Task[None]) -> None:
    """Wait for ``task`` to end without cancelling it if we are cancelled
    (what ``asyncio.wait({task})`` does, for a fraction of its cost, measured
    at several percent of a handshake's CPU)."""
    if task.done():
        return
    waiter: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def wake(_: asyncio.Task[None]) -> None:
        if not waiter.done():
            waiter.set_result(None)

    task.add_done_callback(wake)
    try:
        await waiter
    finally:
        task.remove_done_callback(wake)


def _result(outcome: tuple[bool, Any]) -> Any:
    """A step's result from commands.chain, or its refusal raised."""
    ok, value = outcome
    if not ok:
        raise value
    return value


def _close_of(ws: web.WebSocketResponse) -> tuple[int, str]:
    """The code and reason of a close the server did not decide itself."""
    exc = ws.exception()
    code = ws.close_code if ws.close_code is not None else WSCloseCode.ABNORMAL_CLOSURE
    if isinstance(exc, asyncio.TimeoutError):
        return int(code), "timeout"
    if isinstance(exc, WebSocketError) and exc.code == CLOSE_TOO_LARGE:
        # aiohttp sent 1009 for the oversized frame, then failed to read the
        # client's close reply and left 1006 as the close code.
        return CLOSE_TOO_LARGE, "too_large"
    if code == CLOSE_TOO_LARGE:
        return CLOSE_TOO_LARGE, "too_large"
    if code == CLOSE_NORMAL:
        return CLOSE_NORMAL, "normal"
    if code == CLOSE_GOING_AWAY:
        return CLOSE_GOING_AWAY, "client_going_away"
    if code == WSCloseCode.ABNORMAL_CLOSURE:
        return int(code), "dropped"
    return int(code), "client_closed"


async def websocket(request: web.Request) -> web.StreamResponse:
    settings = request.app[SETTINGS]
    session_id, proposed, after = _query_params(request)
    if not origin_allowed(request, settings.cors_origins):
        raise ApiError(
            "forbidden_origin", f"origin {request.headers.get('Origin')!r} is not allowed"
        )
    ws = web.WebSocketResponse(
        heartbeat=settings.heartbeat, max_msg_size=settings.max_frame_bytes, autoping=True
    )
    # A cheap look at the upgrade header (aiohttp's can_prepare() runs the
    # whole handshake check, which prepare() then runs again); a request that
    # claims an upgrade but is otherwise malformed fails in prepare() and is
    # recorded CLOSED upgrade_failed.
    if request.headers.get("Upgrade", "").lower() != "websocket":
        raise ApiError("upgrade_required", "this endpoint speaks WebSocket only", status=426)
    header = request.headers.get("Authorization")
    header_token: str | None = None
    if header is not None:
        try:
            header_token = bearer_token(header)
        except AuthError:
            header_token = ""  # present but malformed: refused with 4401 after the upgrade

    connection_id = proposed or new_connection_id()
    try:
        await request.app[WRITER].execute(
            commands.open_connection(
                connection_id, session_id, node=settings.node_id, proposed=proposed is not None
            )
        )
    except DomainError as e:
        raise ApiError(e.code, e.message) from None
    except StoreUnavailable as e:
        raise ApiError("unavailable", str(e)) from None

    conn = LiveConnection(
        request, ws, connection_id=connection_id, session_id=session_id, after=after
    )
    registry = request.app[SOCKETS]
    registry.add(conn)
    log.info(
        "connection opened",
        extra={"connection_id": connection_id, "session_id": session_id, "after": after},
    )
    try:
        try:
            await ws.prepare(request)
        except Exception:
            await conn.record_closed(int(WSCloseCode.ABNORMAL_CLOSURE), "upgrade_failed")
            raise
        driver = asyncio.ensure_future(conn.drive(header_token))
        receiver = conn.receiver = asyncio.ensure_future(conn.receive_loop())
        try:
            await _finished(receiver)
            if conn._ending is not None:
                await asyncio.shield(conn._ending)
        finally:
            receiver.cancel()
            driver.cancel()
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await driver
        if not conn.closed_recorded:
            code, reason = _close_of(ws)
            await conn.record_closed(code, reason)
        return ws
    finally:
        if not conn.closed_recorded:
            # aiohttp cancels this handler when the transport goes away (a
            # missed pong, a dropped client): still record why it ended.
            code, reason = (
                _close_of(ws) if ws.prepared else (int(WSCloseCode.ABNORMAL_CLOSURE), "dropped")
            )
            await conn.record_closed(code, reason)
        if conn.subscription is not None:
            conn.subscription.close()
        registry.remove(conn)
        conn.finished.set()
        conn.release()
