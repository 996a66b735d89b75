"""``GET /v1/sessions/{id}/stream``: a session's events as Server-Sent Events,
for watchers that do not attach (auditors, dashboards, ``curl -N``).

Each event is one message: ``id:`` its position, ``event:`` its type,
``data:`` the event object (the same JSON as over HTTP and WebSocket; one
line, as the encoder writes no newlines). A watcher records nothing: it is no
connection and leaves no event. It sees every position after ``after`` (or
after its ``Last-Event-ID``, which wins: a browser reconnecting sends it with
the URL it first used) once, in order, through the same seam as a socket
(service/edge/seam.py): subscribed to the hub first, then the backlog from
the store, then live.

The stream ends, with a comment saying why (``: end <reason>``), once the
session has ended (``SessionEnded`` is its last event), when the watcher
falls behind the hub's bounds (``slow_consumer``: resume with
``Last-Event-ID``), at its token's ``exp`` (``token_expired``), when the store
cannot be read (``unavailable``) and at shutdown (``server_shutdown``). Asked
again from the end of an ended session, it answers 204 No Content, which
tells a browser's EventSource to stop reconnecting. Between events a comment
(``: ping``) every ``SESSIOND_STREAM_HEARTBEAT`` seconds keeps proxies from
closing it and finds a watcher that has gone. See
docs/adr/0030-watch-sessions-over-server-sent-events-and-kick-through-the-log.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import time
from collections import deque
from typing import Any

from aiohttp import web

from domain.ids import session_stream
from service.application.auth import Principal
from service.application.budgets import RETRY_HELD
from service.application.hub import SlowConsumer, Subscription, event_json
from service.edge.budgets import rate_limited
from service.edge.context import BUDGETS, HUB, READERS, SETTINGS, STORE, WATCHERS
from service.edge.contract import operation
from service.edge.cors import decorate
from service.edge.effects import Effects, ReadEvents, Send
from service.edge.errors import ApiError
from service.edge.http.reads import readable_session
from service.edge.requests import path_id, principal, query
from service.edge.schema import INT64_MAX, StreamQuery
from service.edge.seam import Seam
from service.edge.ws import CLOSE_PATIENCE
from service.storage.wire import dumps

log = logging.getLogger("sessiond.stream")
routes = web.RouteTableDef()

HEADERS = {
    "Content-Type": "text/event-stream",
    "Cache-Control": "no-cache",
    # nginx passes each message on at once instead of buffering the response.
    "X-Accel-Buffering": "no",
}
PING = b": ping\n\n"
# A client that went away without a word is noticed at the next write.
GONE = (ConnectionError, RuntimeError)


def sse_message(event: dict[str, Any], data: bytes) -> bytes:
    """One event as a message of the stream (``data``: its JSON)."""
    return b"id: %d\nevent: %s\ndata: %s\n\n" % (event["position"], event["type"].encode(), data)


class WatcherRegistry:
    """The event-stream watchers of this node: counted, and ended at shutdown."""

    def __init__(self) -> None:
        self.watchers: set[Watcher] = set()

    def __len__(self) -> int:
        return len(self.watchers)

    def add(self, watcher: Watcher) -> None:
        self.watchers.add(watcher)

    def remove(self, watcher: Watcher) -> None:
        self.watchers.discard(watcher)

    async def close_all(self, grace: float) -> None:
        watchers = list(self.watchers)
        for watcher in watchers:
            watcher.stop("server_shutdown")
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(grace):
                await asyncio.gather(*(w.finished.wait() for w in watchers))


class Watcher:
    """One stream: the seam's decisions, written to the response."""

    def __init__(self, request: web.Request, session_id: str, after: int, actor: Principal) -> None:
        self.request = request
        self.app = request.app
        self.session_id = session_id
        self.actor = actor
        self.response = web.StreamResponse(headers=HEADERS)
        self.seam = Seam(
            after, self._deliver, stopped=lambda: self.reason is not None, passed=self._passed
        )
        self.reason: str | None = None
        self.finished = asyncio.Event()
        self._follower: asyncio.Task[None] | None = None
        self._subscription: Subscription | None = None

    # --- decisions -------------------------------------------------------------

    def _deliver(self, event: dict[str, Any], encoded: bytes | None) -> Effects:
        """The next position, as a message; the session's end ends the stream."""
        data = dumps(event) if encoded is None else event_json(encoded)
        if event["type"] == "SessionEnded":
            self.reason = "session_ended"
        return [Send(event, data=sse_message(event, data))]

    def _passed(self, event: dict[str, Any]) -> Effects:
        """The session's end ends the stream even at a position the watcher
        said it has seen (an ``after`` past the session's end), not sent."""
        if event["type"] == "SessionEnded":
            self.reason = "session_ended"
        return []

    def stop(self, reason: str) -> None:
        """End the stream now (shutdown, a slow watcher), whatever it is doing."""
        if self.reason is None:
            self.reason = reason
        if self._follower is not None:
            self._follower.cancel()

    # --- the shell -------------------------------------------------------------------

    async def run(self) -> web.StreamResponse:
        settings = self.app[SETTINGS]
        registry = self.app[WATCHERS]
        registry.add(self)
        self._subscription = self.app[HUB].subscribe(
            self.session_id,
            settings.send_queue_limit,
            on_overflow=lambda: self.stop("slow_consumer"),
            max_bytes=settings.send_queue_bytes,
            buffered=self._buffered,
        )
        try:
            # Its headers go out now, before the edge middleware could add them.
            decorate(self.request, self.response)
            await self.response.prepare(self.request)
            opening = b": session %s after %d\n\n" % (
                self.session_id.encode(),
                self.seam.last_sent,
            )
            await self.response.write(opening)
            follower = self._follower = asyncio.ensure_future(self._follow())
            try:
                await follower
            except asyncio.CancelledError:
                # stop() cancelled the follower; a cancel of this handler goes on.
                current = asyncio.current_task()
                if current is not None and current.cancelling():
                    raise
            await self._end()
        except GONE:
            self.reason = self.reason or "gone"
        finally:
            if self._follower is not None:
                self._follower.cancel()
            self._subscription.close()
            registry.remove(self)
            self.finished.set()
            log.info(
                "stream ended",
                extra={"session_id": self.session_id, "reason": self.reason},
            )
        return self.response

    async def _follow(self) -> None:
        """The backlog, what was queued meanwhile, then live, until an end."""
        subscription = self._subscription
        assert subscription is not None
        loop = asyncio.get_running_loop()
        heartbeat = self.app[SETTINGS].stream_heartbeat
        # The token's exp on the loop's clock (the stream's authority ends there).
        exp = self.actor.exp
        expires = None if exp is None else loop.time() + (exp - time.time())
        try:
            await self._perform(
                self.seam.backlog(None, lambda: self.seam.queued(subscription.drain()))
            )
            while self.reason is None:
                wake = loop.time() + heartbeat
                if expires is not None:
                    wake = min(wake, expires)
                try:
                    async with asyncio.timeout_at(wake):
                        item = await subscription.get()
                except TimeoutError:
                    if expires is not None and loop.time() >= expires:
                        self.reason = "token_expired"
                    else:
                        await self.response.write(PING)
                    continue
                await self._perform(self.seam.queued([item]))
        except SlowConsumer:
            self.reason = "slow_consumer"
        except ApiError:
            self.reason = "unavailable"

    async def _perform(self, effects: Effects) -> None:
        """Write what the seam sends, reading what it asks for; consecutive
        messages go out in one write."""
        todo = deque(effects)
        chunks: list[bytes] = []
        while todo:
            effect = todo.popleft()
            if isinstance(effect, Send):
                assert effect.data is not None
                chunks.append(effect.data)
            elif isinstance(effect, ReadEvents):
                await self._write(chunks)
                todo.extendleft(reversed(effect.then(await self._read(effect))))
        await self._write(chunks)

    async def _write(self, chunks: list[bytes]) -> None:
        """Write ``chunks`` at once; a watcher that has not taken them within
        ``answer_timeout`` (a page of backlog waits on it in the node's
        memory, and only live events count against its send queue) is a
        slow consumer."""
        if chunks:
            data = b"".join(chunks)
            chunks.clear()
            try:
                async with asyncio.timeout(self.app[SETTINGS].answer_timeout):
                    await self.response.write(data)
            except TimeoutError:
                raise SlowConsumer from None

    async def _read(self, effect: ReadEvents) -> list[dict[str, Any]]:
        read = functools.partial(
            self.app[STORE].stream_wire_events,
            session_stream(self.session_id),
            after=effect.after,
            limit=effect.limit,
            max_bytes=self.app[SETTINGS].page_bytes,
        )
        try:
            events: list[dict[str, Any]] = await asyncio.get_running_loop().run_in_executor(
                self.app[READERS], read
            )
        except Exception as e:
            raise ApiError("unavailable", f"store unavailable: {type(e).__name__}") from e
        return events

    async def _end(self) -> None:
        """Say why the stream ends, and end the response. A watcher that fell
        behind may not read again: it gets a moment to take what was sent,
        then its connection is dropped (as is one that cannot take the end)."""
        transport = self.request.transport
        try:
            async with asyncio.timeout(CLOSE_PATIENCE):
                await self.response.write(b": end %s\n\n" % (self.reason or "ended").encode())
                await self.response.write_eof()
        except TimeoutError:
            if transport is not None:
                transport.abort()
            return
        if self.reason == "slow_consumer" and transport is not None:
            transport.close()
            asyncio.get_running_loop().call_later(CLOSE_PATIENCE, transport.abort)

    def _buffered(self) -> int:
        """Bytes written to this stream and not yet sent (its transport's buffer)."""
        transport = self.request.transport
        return 0 if transport is None else transport.get_write_buffer_size()


def resume_from(request: web.Request) -> int:
    """Where the stream starts: after ``Last-Event-ID`` when sent (a
    reconnecting browser sends it with the URL it first used), else ``after``."""
    asked = query(request, StreamQuery).after
    last_id = request.headers.get("Last-Event-ID", "").strip()
    if not last_id:
        return asked
    # ASCII digits only: str.isdigit also takes other scripts' digits and
    # superscripts, which int() reads as a number or refuses with ValueError.
    if not (last_id.isascii() and last_id.isdigit()) or int(last_id) > INT64_MAX:
        raise ApiError("invalid_query", "Last-Event-ID must be a position the stream sent")
    return int(last_id)


@routes.get("/v1/sessions/{session_id}/stream")
@operation(
    summary="The session's events as Server-Sent Events: backlog, then live",
    query=StreamQuery,
    answers={200: "text/event-stream", 204: None},
    errors=("invalid_id", "forbidden", "session_not_found"),
    description="Each message: `id:` its position, `event:` its type, `data:` a "
    "SessionEvent. `Last-Event-ID` resumes. Records nothing.",
)
async def stream_events(request: web.Request) -> web.StreamResponse:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    after = resume_from(request)
    view = await readable_session(request, session_id, actor)
    if view["state"] == "ENDED" and after >= view["position"]:
        return web.Response(status=204)
    watchers = request.app[BUDGETS].user_watchers
    if not watchers.acquire(actor.user_id):
        raise rate_limited(
            f"user {actor.user_id!r} watches {watchers.limit} streams on this node already",
            RETRY_HELD,
        )
    try:
        return await Watcher(request, session_id, after, actor).run()
    finally:
        watchers.release(actor.user_id)
