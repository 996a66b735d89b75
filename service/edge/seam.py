"""The backlog/live seam: a session's events after a position, each once, in
order, with no gap, whoever watches (a socket, a stream), with no I/O.

The watcher subscribes to the hub first, then reads what the store holds
(:meth:`Seam.backlog`, in pages); what the hub queued meanwhile and from then
on goes through :meth:`Seam.queued`. Either way the next position goes out,
older ones are dropped, and a hole (a position ahead of the next) is filled
from the store first. Each read is a :class:`~service.edge.effects.ReadEvents`
effect for the shell to carry out
(docs/adr/0006-make-the-backlog-live-seam-gap-free.md).

The owner says what sending an event means (``deliver``: the effects of
sending the next position), whether it has stopped (then nothing more is
delivered), and what to do once nothing is waiting on the store (``settled``).
A socket's backlog ends at a position fixed in advance (:meth:`Seam.hold`:
the position its PROCESSING_READY was recorded with): nothing beyond it goes
out until every position up to it has, what is missing up to it is read from
the store, and the owner's ``reached`` effects (the PROCESSING_READY frame)
go out between the two.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

from service.application.hub import EventFrame
from service.edge.effects import Effects, ReadEvents

BACKLOG_PAGE = 500

Deliver = Callable[[dict[str, Any], bytes | None], Effects]


def _nothing() -> Effects:
    return []


def _always() -> bool:
    return True


def _deliver_nothing(event: dict[str, Any], encoded: bytes | None) -> Effects:
    return []


def _mean_nothing(event: dict[str, Any]) -> Effects:
    return []


class Seam:
    """Positions after ``after``, each handed to ``deliver`` once, in order."""

    def __init__(
        self,
        after: int,
        deliver: Deliver,
        stopped: Callable[[], bool],
        settled: Callable[[], Effects] = _nothing,
        passed: Callable[[dict[str, Any]], Effects] = _mean_nothing,
    ) -> None:
        self.last_sent = after
        self._deliver = deliver
        self._stopped = stopped
        self._settled = settled
        # What a queued event at or before the last position sent still means
        # to the owner, though it is not sent again: the owner's ``after`` may
        # have been past the session's end, and a detach of the owner or the
        # session's end among those positions still ends it.
        self._passed = passed
        self._pending: deque[EventFrame] = deque()
        self._filling = False
        # Set by hold(): the last position of the backlog, and what to do
        # once it has gone out.
        self._ceiling: int | None = None
        self._reached: Callable[[], Effects] = _nothing

    def release(self) -> None:
        """Let go of the owner's callbacks once its delivery is over: they are
        its bound methods and closures, so the owner and its seam would hold
        each other until the cycle collector came by. A released seam is
        stopped and delivers nothing."""
        self._deliver = _deliver_nothing
        self._passed = _mean_nothing
        self._stopped = _always
        self._settled = self._reached = _nothing
        self._pending.clear()

    def hold(self, ceiling: int, reached: Callable[[], Effects]) -> None:
        """Deliver nothing past ``ceiling`` until every position up to it has
        gone out (those missing from what is queued are read from the store);
        then ``reached()``'s effects, then the positions after it. Takes
        effect with the next :meth:`queued`."""
        self._ceiling = ceiling
        self._reached = reached

    def backlog(self, until: int | None, then: Callable[[], Effects]) -> Effects:
        """Deliver what the store holds after ``last_sent`` up to ``until``
        (None: up to the end of the log, where a page comes back empty),
        page by page; then ``then()``."""
        limit = BACKLOG_PAGE if until is None else min(BACKLOG_PAGE, until - self.last_sent)
        if limit <= 0:
            return then()
        return [ReadEvents(self.last_sent, limit, self._page(until, then))]

    def _page(
        self, until: int | None, then: Callable[[], Effects]
    ) -> Callable[[list[dict[str, Any]]], Effects]:
        def read(events: list[dict[str, Any]]) -> Effects:
            effects = self._deliver_stored(events)
            if self._stopped():
                return effects
            # A page may end short of ``limit`` before the store's end: the
            # store bounds a page by bytes too. So only an empty page is the
            # end (or, with ``until``, reaching it: ``backlog`` says so
            # without a read).
            if not events:
                return effects + then()
            return effects + self.backlog(until, then)

        return read

    def queued(self, events: list[EventFrame]) -> Effects:
        """Events the hub queued, in the order recorded (each with its frame,
        encoded once for every watcher)."""
        self._pending.extend(events)
        return self._pump()

    def _pump(self) -> Effects:
        effects: Effects = []
        pending = self._pending
        while not self._filling and not self._stopped():
            ceiling = self._ceiling
            if ceiling is not None and self.last_sent >= ceiling:
                self._ceiling = None
                effects += self._reached()
                continue
            if not pending:
                if ceiling is not None:
                    # What the hub queued ends short of the ceiling: the rest
                    # is in the store.
                    effects.append(self._fill(ceiling))
                break
            item = pending[0]
            position = item.event["position"]
            if position > self.last_sent + 1:
                upto = position - 1 if ceiling is None else min(position - 1, ceiling)
                effects.append(self._fill(upto))
                return effects
            pending.popleft()
            effects += self._next(item.event, item.frame)
        if not self._filling and not self._stopped():
            effects += self._settled()
        return effects

    def _fill(self, upto: int) -> ReadEvents:
        """Read the hole from ``last_sent`` to ``upto`` (a page of it)."""
        self._filling = True
        limit = min(BACKLOG_PAGE, upto - self.last_sent)
        return ReadEvents(self.last_sent, limit, self._filled)

    def _filled(self, events: list[dict[str, Any]]) -> Effects:
        self._filling = False
        return self._deliver_stored(events) + self._pump()

    def _deliver_stored(self, events: list[dict[str, Any]]) -> Effects:
        effects: Effects = []
        for event in events:
            if self._stopped():
                break
            effects += self._next(event, None)
        return effects

    def _next(self, event: dict[str, Any], encoded: bytes | None) -> Effects:
        """Deliver ``event`` if it is the next position (an older one was
        delivered already)."""
        position = event["position"]
        if position != self.last_sent + 1:
            return self._passed(event) if position <= self.last_sent else []
        self.last_sent += 1
        return self._deliver(event, encoded)
