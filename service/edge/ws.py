"""The WebSocket endpoint: the aiohttp shell around the connection protocol.

Every decision about a socket (what to record, what to send, when and how to
close) is made by :class:`~service.edge.protocol.ConnectionProtocol`, which
does no I/O. This shell owns what the protocol cannot: the socket, the tasks,
the clock and the waiting. It feeds the protocol what happened and performs
the effects it returns, in order (:meth:`LiveConnection.run`).

Two tasks serve a socket: the *driver* walks the handshake and then follows
the session's live events; the *receiver* reads the client's frames. An end
the server decides (:class:`~service.edge.protocol.Closing`) runs in a task
of its own, so the task that decided it can be stopped by it. The token's
deadlines (:class:`~service.edge.effects.WakeAt`) are one timer handle on the
loop, not a task: when it fires, the protocol's answer runs in a short task.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import struct
import time
from collections import Counter, deque
from collections.abc import Callable
from typing import Any

from aiohttp import WSMsgType, web

from domain.errors import DomainError
from domain.ids import session_stream
from service.application.hub import SlowConsumer, Subscription
from service.application.writer import StoreUnavailable
from service.edge.context import (
    CLOSES,
    HEALTH,
    HUB,
    METRICS,
    READERS,
    SETTINGS,
    STORE,
    TRACER,
    WRITER,
)
from service.edge.effects import (
    AwaitAuth,
    Close,
    Closing,
    Effect,
    FollowLive,
    Outcome,
    ReadEvents,
    Record,
    Recorded,
    RecordLater,
    Refused,
    Send,
    Subscribe,
    TakeQueued,
    Unavailable,
    Wake,
    WakeAt,
)
from service.edge.metrics import Stamped
from service.edge.protocol import ConnectionProtocol
from service.runtime import tracing
from service.runtime.logs import ACCESS
from service.storage.wire import dumps

log = logging.getLogger("sessiond.ws")
access_log = logging.getLogger(ACCESS)

# How long a server-side close waits on a client that does not read.
CLOSE_PATIENCE = 5.0

# The effects frames are gathered across: frames gathered before one of them
# are written together with the frames after it (see LiveConnection.run).
_GATHERED_ACROSS = (Subscribe, TakeQueued, ReadEvents, Wake, WakeAt, RecordLater)

_LENGTH_16 = struct.Struct("!BBH").pack
_LENGTH_64 = struct.Struct("!BBQ").pack


def _text_frame(payload: bytes) -> bytes:
    """A final, unmasked text frame of ``payload`` (RFC 6455, section 5.2)."""
    size = len(payload)
    if size < 126:
        return bytes((0x81, size)) + payload
    if size < 65536:
        return _LENGTH_16(0x81, 126, size) + payload
    return _LENGTH_64(0x81, 127, size) + payload


# The codes the WebSocket layer (aiohttp's reader) closes a socket with by
# itself, inside ``receive()``, when a client's frame breaks RFC 6455 or the
# frame size limit: sessiond never sees that frame.
LAYER_CLOSES = frozenset({Close.PROTOCOL_ERROR, Close.INVALID_DATA, Close.TOO_LARGE})


def sendable_close_code(code: int) -> bool:
    """Whether a close frame may carry ``code`` (RFC 6455, 7.4): the
    protocol's own codes but 1004 to 1006 and 1015 (reserved, never sent),
    and 3000 to 4999 for applications. aiohttp's reader refuses the other
    codes below 3000 with 1002 itself, but lets 1006 and 5000 or more
    through as if a client could send them."""
    return 1000 <= code <= 1003 or 1007 <= code <= 1014 or 3000 <= code <= 4999


class SocketResponse(web.WebSocketResponse):
    """aiohttp's WebSocket response, announcing the closes its reader decides.

    Every close sessiond decides is preceded by a ``state`` CLOSED frame with
    its code and reason; a close of the WebSocket layer (``LAYER_CLOSES``)
    happens inside aiohttp, so ``last_word`` (given the code) supplies that
    frame and the reason, written just before aiohttp's close frame.

    A client's close frame with a code no endpoint may send is refused as
    aiohttp's reader refuses the other broken frames: closed 1002, and
    ``refused`` holds the code sent (1002), so the close is recorded as the
    protocol error it is, not as a drop (1006) or as the client's own code."""

    last_word: Callable[[int], tuple[bytes, str] | None] | None = None
    refused: int | None = None

    async def close(
        self, *, code: int = Close.NORMAL, message: bytes = b"", drain: bool = True
    ) -> bool:
        peer_code = self.close_code
        if (
            code == Close.NORMAL
            and not self.closed
            and self.exception() is None
            and peer_code not in (None, 0)
            and not sendable_close_code(peer_code)
        ):
            # aiohttp's answer to the client's close frame (it sets the
            # frame's code before it answers; 0 for a frame with none, which
            # is allowed): answer a code no endpoint may send as the protocol
            # error it is.
            self.refused = Close.PROTOCOL_ERROR
            code = Close.PROTOCOL_ERROR
        last_word, self.last_word = self.last_word, None
        if last_word is not None and code in LAYER_CLOSES and not self.closed:
            said = last_word(code)
            if said is not None:
                frame, reason = said
                with contextlib.suppress(Exception):
                    await self.send_frame(frame, WSMsgType.TEXT)
                message = message or reason.encode()
        return await super().close(code=code, message=message, drain=drain)


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
        return Counter(c.protocol.state for c in self.sockets.values())

    async def close_all(self, code: int, reason: str, grace: float) -> None:
        conns = list(self.sockets.values())
        if not conns:
            return
        await asyncio.gather(*(c.end(code, reason) for c in conns), return_exceptions=True)
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.gather(*(c.finished.wait() for c in conns))


class LiveConnection:
    """One socket of this node: the protocol's decisions, carried out."""

    def __init__(
        self,
        request: web.Request,
        ws: web.WebSocketResponse,
        protocol: ConnectionProtocol,
        *,
        opened_at: float,
    ) -> None:
        self.app = request.app
        self.opened_at = opened_at  # monotonic: the upgrade request came in
        self.request = request
        self.ws = ws
        self.protocol = protocol
        self.connection_id = protocol.connection_id
        self.writer = request.app[WRITER]
        self.metrics = request.app[METRICS]
        self.tracer = request.app[TRACER]
        self.subscription: Subscription | None = None
        self.finished = asyncio.Event()
        self._token_arrived = asyncio.Event()
        self._ending: asyncio.Future[None] | None = None
        self.receiver: asyncio.Task[None] | None = None
        # The token's deadline (WakeAt), and the task carrying out what the
        # protocol said when it passed (held, so it is not collected mid-run).
        self._timer: asyncio.TimerHandle | None = None
        self._ticked: asyncio.Future[None] | None = None
        # The text of the client's close frame, if it sent one with text.
        self.said: str | None = None
        # Set once the welcome has been written: the client's frames are read
        # from then on (see receive_loop).
        self._welcomed = asyncio.Event()
        # Armed when this connection's own detach is queued (_detach_queued).
        self._detach_deadline: asyncio.TimerHandle | None = None

    def release(self) -> None:
        """Drop what ties this connection to its own tasks once it is over.

        A cancelled task keeps its CancelledError, whose traceback keeps the
        frames that ran ``self``: with ``self.receiver`` pointing back at the
        task, every finished connection (socket, transport, request, tasks;
        about seventy objects) was a reference cycle only the cyclic garbage
        collector could free (ADR 0017). Without the cycle, reference counting
        frees a connection the moment it ends.
        """
        self.stop_timer()
        if self._detach_deadline is not None:
            self._detach_deadline.cancel()
            self._detach_deadline = None
        if isinstance(self.ws, SocketResponse):
            self.ws.last_word = None  # the socket's way back to this connection
        self.receiver = None
        self._ending = None
        self._ticked = None
        self.subscription = None
        self.protocol.seam.release()

    # --- carrying out effects -------------------------------------------------------

    async def run(self, effects: list[Effect]) -> None:
        """Perform ``effects`` in order; the continuations' effects go first.

        The frames to send are gathered and written together, once, before
        an effect that waits on the writer, the client or the clock, and at
        the end: a handshake's state frames and its backlog leave in one
        write instead of a write each (a system call, and the loopback's
        whole send path). A backlog read from the store (a fraction of a
        millisecond) keeps them too: SERVICES_READY with nothing after it
        tells the client nothing it can act on before PROCESSING_READY."""
        todo: deque[Effect] = deque(effects)
        out: list[Send] = []
        while todo:
            effect = todo.popleft()
            if type(effect) is Send:
                out.append(effect)
                continue
            if out and not isinstance(effect, _GATHERED_ACROSS):
                await self.send(out)
                out = []
            more: list[Effect] = []
            match effect:
                case Record() as record:
                    if self.tracer.enabled:
                        more = await self._traced_step(record)
                    else:
                        more = record.then(await self.record(record))
                case ReadEvents() as read:
                    events = await self.read(read)
                    more = self.protocol.read_failed() if events is None else read.then(events)
                case RecordLater(connection_id=connection_id, command=command):
                    self.app[CLOSES].keep(connection_id, command)
                case Subscribe():
                    settings = self.app[SETTINGS]
                    self.subscription = self.app[HUB].subscribe(
                        self.protocol.session_id,
                        settings.send_queue_limit,
                        on_overflow=self._overflowed,
                        max_bytes=settings.send_queue_bytes,
                        buffered=self._buffered,
                        on_detach=self._detach_queued,
                    )
                case TakeQueued() as take:
                    more = self._take_queued(take)
                case AwaitAuth() as wait:
                    more = await self._await_auth(wait)
                case Wake():
                    self._token_arrived.set()
                case WakeAt(deadline=deadline):
                    self.stop_timer()
                    self._timer = asyncio.get_running_loop().call_at(deadline, self._tick)
                case FollowLive():
                    self.metrics.handshake(time.monotonic() - self.opened_at)
                    await self._follow_live()
                case Closing() as closing:
                    ending = self._close(closing)
                    await asyncio.shield(ending)
            todo.extendleft(reversed(more))
        if out:
            await self.send(out)

    async def send(self, sends: list[Send]) -> None:
        """Write ``sends``' frames, in order, as one write."""
        for effect in sends:
            if effect.error is not None:
                self.metrics.ws_error(effect.error)
        written = await self._write([dumps(s.frame) if s.data is None else s.data for s in sends])
        if self.protocol.opened is not None:
            # The first frames of an opened connection begin with its welcome.
            self._welcomed.set()
        if not written:
            return
        for effect in sends:
            event = effect.frame.get("event")
            if type(event) is Stamped:
                self.metrics.delivered(event)

    async def _write(self, payloads: list[bytes]) -> bool:
        """Text frames with these payloads, written together; False when the
        socket can no longer take them.

        Without compression a server's frame is a header and the payload
        (RFC 6455, section 5.2: no mask), so the frames are built here and
        handed to the transport in one write, then aiohttp's flow control
        waits while the transport's buffer is over its high-water mark. A
        socket that negotiated permessage-deflate (browsers do) has each
        frame compressed by aiohttp, one by one."""
        ws = self.ws
        if ws.closed:
            return False
        try:
            if ws.compress:
                for payload in payloads:
                    await ws.send_frame(payload, WSMsgType.TEXT)
                return True
            transport = self.request.transport
            if transport is None or transport.is_closing():
                return False
            transport.write(b"".join([_text_frame(payload) for payload in payloads]))
            await self.request.writer.drain()
        except (ConnectionError, RuntimeError):
            return False
        return True

    def _buffered(self) -> int:
        """Bytes written to this socket and not yet sent (its transport's buffer)."""
        transport = self.request.transport
        return 0 if transport is None else transport.get_write_buffer_size()

    async def record(self, effect: Record) -> Outcome:
        try:
            return Recorded(await self.writer.execute(effect.command))
        except DomainError as e:
            return Refused(e)
        except StoreUnavailable as e:
            log.warning(
                "store unavailable",
                extra={
                    "connection_id": self.connection_id,
                    "command": effect.command.name,
                    "error": str(e),
                },
            )
            return Unavailable(str(e))

    def span_attributes(self) -> dict[str, str]:
        """This connection's IDs (and its user, once known), for its spans."""
        attributes = {
            tracing.CONNECTION: self.connection_id,
            tracing.SESSION: self.protocol.session_id,
        }
        if self.protocol.principal is not None:
            attributes[tracing.USER] = self.protocol.principal.user_id
        return attributes

    async def _traced_step(self, effect: Record) -> list[Effect]:
        """A command recorded and the protocol's answer to it (a handshake
        step is committed there), as one span: the state it left the
        connection in, and whether it was recorded."""
        with self.tracer.span(f"ws {effect.command.name}", self.span_attributes()) as span:
            outcome = await self.record(effect)
            more = effect.then(outcome)
            span.set_attribute("sessiond.outcome", type(outcome).__name__.lower())
            span.set_attribute("sessiond.state", self.protocol.state)
            return more

    async def read(self, effect: ReadEvents) -> list[dict[str, Any]] | None:
        """The session events asked for; None when the store cannot be read."""
        read = functools.partial(
            self.app[STORE].stream_wire_events,
            session_stream(self.protocol.session_id),
            after=effect.after,
            limit=effect.limit,
            max_bytes=self.app[SETTINGS].page_bytes,
        )
        try:
            return await self.app[HEALTH].read(self.app[READERS], read)
        except StoreUnavailable:
            log.warning("store unavailable", extra={"connection_id": self.connection_id})
            return None

    def _take_queued(self, effect: TakeQueued) -> list[Effect]:
        assert self.subscription is not None
        try:
            return effect.then(self.subscription.drain())
        except SlowConsumer:
            return self.protocol.overflowed()

    async def _await_auth(self, effect: AwaitAuth) -> list[Effect]:
        loop = asyncio.get_running_loop()
        if self.protocol.awaiting_token:
            with contextlib.suppress(TimeoutError):
                async with asyncio.timeout_at(effect.deadline):
                    await self._token_arrived.wait()
        return self.protocol.auth_wait_over(loop.time())

    def _tick(self) -> None:
        """The timer fired: the protocol says what its deadline means now."""
        self._timer = None
        effects = self.protocol.tick(asyncio.get_running_loop().time())
        if effects:
            self._ticked = asyncio.ensure_future(self.run(effects))

    def stop_timer(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None

    async def _follow_live(self) -> None:
        subscription = self.subscription
        assert subscription is not None
        while self.protocol.ending is None:
            try:
                events = [await subscription.get()]
                if subscription.pending():
                    # Everything queued meanwhile goes in the same write.
                    events.extend(subscription.drain())
            except SlowConsumer:
                await self.run(self.protocol.overflowed())
                return
            await self.run(self.protocol.live(events))

    # --- the end ------------------------------------------------------------------------

    def layer_closing(self, code: int) -> tuple[bytes, str] | None:
        """The WebSocket layer is closing the socket with ``code``: the
        ``state`` CLOSED frame to write first, and the reason, as the
        protocol says (see SocketResponse)."""
        frame = self.protocol.layer_closing(code)
        return None if frame is None else (dumps(frame), str(frame["reason"]))

    def log_end(self) -> None:
        """The socket's access line: how it ended, for whom, after how long."""
        if not access_log.isEnabledFor(logging.INFO):
            return
        ending = self.protocol.ending
        code, reason = ending if ending is not None else (None, None)
        fields: dict[str, Any] = {
            "connection_id": self.connection_id,
            "session_id": self.protocol.session_id,
        }
        if self.protocol.principal is not None:
            fields["user"] = self.protocol.principal.user_id
        fields["code"] = code
        fields["reason"] = reason
        fields["duration_ms"] = round((time.monotonic() - self.opened_at) * 1000, 3)
        access_log.info("connection closed", extra=fields)

    async def end(self, code: int, reason: str) -> None:
        """The node ends this connection (shutdown): as the protocol says."""
        await self.run(self.protocol.end(code, reason))
        if self._ending is not None:
            await asyncio.shield(self._ending)

    def kicked(self, code: int, reason: str) -> None:
        """Kicked while in its handshake (its CLOSED is recorded already): the
        end starts now, without waiting for it (an HTTP answer waits on it)."""
        self._end_now(self.protocol.end(code, reason))

    def _overflowed(self) -> None:
        """The hub could not queue another event (4408). The driver may be stuck
        writing to a client that stopped reading, so the end starts now."""
        self._end_now(self.protocol.overflowed())

    def _detach_queued(self, event: dict[str, Any]) -> None:
        """A ConnectionDetached was queued for this socket: its own (it was
        superseded, kicked, its session ended) ends it when its turn comes,
        after the events before it. A socket whose client stopped reading
        never gets there: past CLOSE_PATIENCE the end starts anyway, so the
        socket does not outlive the record that detached it."""
        if not self.protocol.detaches_me(event):
            return
        if self._detach_deadline is None and self.protocol.ending is None:
            self._detach_deadline = asyncio.get_running_loop().call_later(
                CLOSE_PATIENCE, self._detach_overdue, event
            )

    def _detach_overdue(self, event: dict[str, Any]) -> None:
        self._detach_deadline = None
        if self.protocol.ending is None:
            self._end_now(self.protocol.detached(event))

    def _end_now(self, effects: list[Effect]) -> None:
        """Start the close among ``effects`` in a task of its own, from outside
        the tasks that serve the socket (which may be waiting on it)."""
        for effect in effects:
            if isinstance(effect, Closing):
                self._close(effect)

    def _close(self, effect: Closing) -> asyncio.Future[None]:
        if self._ending is None:
            self._ending = asyncio.ensure_future(self._closing(effect))
        return self._ending

    async def _closing(self, effect: Closing) -> None:
        if effect.record is not None:
            await self.run([effect.record])
        try:
            # A client that stopped reading cannot take a last frame nor a
            # closing handshake: give it a moment, then drop the transport.
            async with asyncio.timeout(CLOSE_PATIENCE):
                if effect.frame is not None:
                    await self._write([dumps(effect.frame)])
                await self._stop_receiving()
                with contextlib.suppress(Exception):
                    await self.ws.close(code=effect.code, message=effect.reason.encode()[:120])
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
            await finished(receiver)

    # --- frames from the client (receive loop) ------------------------------------------

    async def receive_loop(self) -> None:
        """The client's frames, each handed to the protocol as it arrives,
        from the moment the welcome has been written: the welcome is the
        first frame a client gets, so a frame sent before it (the upgrade's
        response was enough for the client to send) waits, unread, until the
        connection is recorded and welcomed. A connection that never opens
        is closed without this loop reading anything (it is cancelled)."""
        loop = asyncio.get_running_loop()
        ws = self.ws
        await self._welcomed.wait()
        while True:
            msg = await ws.receive()
            if msg.type == WSMsgType.TEXT:
                await self.run(self.protocol.receive(msg.data, loop.time()))
            elif msg.type == WSMsgType.BINARY:
                await self.run(self.protocol.receive(bytes(msg.data), loop.time()))
            elif msg.type == WSMsgType.CLOSE:
                # The client's close frame: its text is recorded with the close.
                self.said = msg.extra or None
                break
            elif msg.type in (WSMsgType.CLOSING, WSMsgType.CLOSED):
                break
            if self.protocol.ending is not None:
                break


async def finished(task: asyncio.Task[None]) -> None:
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
