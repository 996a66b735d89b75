"""The live hub: recorded session events, pushed to the sockets that watch
the session on this node.

The writer publishes each committed batch here (on the event loop, after the
commit). A socket subscribes *before* it reads its backlog from the store, so
nothing recorded meanwhile can fall between the two; it then drops whatever
it has already sent and fills any hole from the store (see
docs/adr/0006-make-the-backlog-live-seam-gap-free.md).

Each event is encoded once, as the ``event`` frame every socket sends
(:class:`EventFrame`), so a session's sockets share the same bytes. Each
subscription holds at most ``limit`` undelivered events and ``max_bytes`` of
them, counting what its socket's transport has not sent yet: one that
overflows is marked, and its socket is closed with 4408 (slow consumer)
rather than let memory grow. A subscription with nothing waiting always
takes the next event, whatever its size.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from service.storage.wire import dumps


class SlowConsumer(Exception):
    """The subscriber fell more than ``limit`` events, or ``max_bytes``, behind."""


@dataclass(frozen=True, slots=True)
class EventFrame:
    """A recorded session event and the ``event`` frame that carries it,
    encoded once for every socket of the session."""

    event: dict[str, Any]
    frame: bytes

    @classmethod
    def of(cls, event: dict[str, Any]) -> EventFrame:
        return cls(event, dumps({"type": "event", "event": event}))


# How every ``event`` frame starts (the encoder keeps keys in order, with no spaces).
_FRAME_HEAD = b'{"type":"event","event":'


def event_json(frame: bytes) -> bytes:
    """The event alone as JSON, from its ``event`` frame's bytes (an event
    stream sends these, with no second encoding)."""
    return frame[len(_FRAME_HEAD) : -1]


def _nothing_buffered() -> int:
    return 0


class Subscription:
    def __init__(
        self,
        hub: Hub,
        session_id: str,
        limit: int,
        on_overflow: Callable[[], None] | None = None,
        *,
        max_bytes: int = 0,
        buffered: Callable[[], int] = _nothing_buffered,
        on_detach: Callable[[dict[str, Any]], None] | None = None,
    ) -> None:
        self.hub = hub
        self.session_id = session_id
        self.limit = limit
        self.max_bytes = max_bytes
        # Bytes its socket has written and not yet sent (the transport's buffer).
        self.buffered = buffered
        self.on_overflow = on_overflow
        # Told of every ConnectionDetached as it is queued, before its turn:
        # the owner may be stuck writing to a client that stopped reading,
        # and a socket must not outlive the record that detached it.
        self.on_detach = on_detach
        self.overflowed = False
        self.bytes = 0
        self._items: deque[EventFrame] = deque()
        self._ready = asyncio.Event()

    def push(self, item: EventFrame) -> None:
        if self.overflowed:
            return
        if len(self._items) >= self.limit or self._over_bytes(len(item.frame)):
            self.overflowed = True
            self._items.clear()
            self.bytes = 0
            # The owner may be stuck writing to a client that stopped reading,
            # so it is told now rather than at its next get().
            if self.on_overflow is not None:
                self.on_overflow()
        else:
            self._items.append(item)
            self.bytes += len(item.frame)
            if self.on_detach is not None and item.event["type"] == "ConnectionDetached":
                self.on_detach(item.event)
        self._ready.set()

    def _over_bytes(self, size: int) -> bool:
        if not self.max_bytes:
            return False
        waiting = self.bytes + self.buffered()
        return waiting > 0 and waiting + size > self.max_bytes

    def pending(self) -> int:
        return len(self._items)

    async def get(self) -> EventFrame:
        while not self._items:
            if self.overflowed:
                raise SlowConsumer(self.session_id)
            self._ready.clear()
            await self._ready.wait()
        if self.overflowed:
            raise SlowConsumer(self.session_id)
        item = self._items.popleft()
        self.bytes -= len(item.frame)
        return item

    def drain(self) -> list[EventFrame]:
        """Everything buffered now, without waiting."""
        if self.overflowed:
            raise SlowConsumer(self.session_id)
        items = list(self._items)
        self._items.clear()
        self.bytes = 0
        return items

    def close(self) -> None:
        self.hub.unsubscribe(self)
        # Bound methods of its socket: no cycle left behind.
        self.on_overflow = None
        self.on_detach = None


class Hub:
    """Fan-out of recorded session events to this node's subscriptions.

    The same event may be published twice, by this node's writer and by the
    log follower (which sees every node's writes on PostgreSQL); a per-session
    high-water mark, kept while the session has subscribers, drops the second.
    """

    def __init__(self) -> None:
        self._subs: dict[str, set[Subscription]] = {}
        self._marks: dict[str, int] = {}

    def subscribe(
        self,
        session_id: str,
        limit: int,
        on_overflow: Callable[[], None] | None = None,
        *,
        max_bytes: int = 0,
        buffered: Callable[[], int] = _nothing_buffered,
        on_detach: Callable[[dict[str, Any]], None] | None = None,
    ) -> Subscription:
        sub = Subscription(
            self,
            session_id,
            limit,
            on_overflow,
            max_bytes=max_bytes,
            buffered=buffered,
            on_detach=on_detach,
        )
        self._subs.setdefault(session_id, set()).add(sub)
        return sub

    def unsubscribe(self, sub: Subscription) -> None:
        subs = self._subs.get(sub.session_id)
        if subs is not None:
            subs.discard(sub)
            if not subs:
                del self._subs[sub.session_id]
                self._marks.pop(sub.session_id, None)

    def publish(self, session_id: str, events: list[dict[str, Any]]) -> None:
        subs = self._subs.get(session_id)
        if not subs:
            return
        mark = self._marks.get(session_id, 0)
        fresh = [e for e in events if e["position"] > mark]
        if not fresh:
            return
        self._marks[session_id] = fresh[-1]["position"]
        frames = [EventFrame.of(event) for event in fresh]
        for sub in tuple(subs):
            for item in frames:
                sub.push(item)

    def has_subscribers(self, session_id: str) -> bool:
        return session_id in self._subs

    def subscriber_count(self) -> int:
        return sum(len(s) for s in self._subs.values())
