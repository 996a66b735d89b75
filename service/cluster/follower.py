"""Cross-node live delivery: follow the shared log on PostgreSQL.

Every node publishes its own commits to its hub at once. Events recorded by
*other* nodes reach it through this follower: a thread that LISTENs on the
events table's channel (service/storage/postgres.py NOTIFYs it on every insert), and on each
notification from another node (or a gap), or at the latest every
``poll_interval`` seconds, reads the notification log after the last position
it has seen and publishes what it finds; a notification of the node's own next
commit only moves the position (its writer published it already), and rows of
the node's own answered batches that a read does cover are dropped before they
are decoded, for the same reason. The bounded
poll is what makes a lost NOTIFY (eventsourcing issue 305) delay delivery by
at most ``poll_interval`` rather than until the next write. If the database
goes away, the thread reconnects with backoff and resumes from where it was:
nothing recorded meanwhile is skipped. See
docs/adr/0010-deliver-across-nodes-by-following-the-log.md,
docs/adr/0013-record-a-batch-on-postgresql-in-one-round-trip.md and
docs/adr/0038-drop-a-nodes-own-rows-before-decoding-them.md.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
import time
from collections.abc import Callable
from typing import Any

import psycopg
from psycopg import sql

from domain.ids import SESSION_PREFIX as SESSION
from service.runtime.osthread import name_native_thread
from service.runtime.settings import Settings
from service.storage.postgres import FailFastPostgresRecorder
from service.storage.rows import LogRow
from service.storage.store import SessiondApplication
from service.storage.wire import wire_from_row

log = logging.getLogger("sessiond.follower")

PAGE = 1000
STOP_SLICE = 0.25


class LogFollower:
    def __init__(
        self,
        store: SessiondApplication,
        conninfo: str,
        on_events: Callable[[list[dict[str, Any]]], None],
        *,
        poll_interval: float = 1.0,
        page_bytes: int = Settings.page_bytes,
    ) -> None:
        recorder = store.recorder
        if not isinstance(recorder, FailFastPostgresRecorder):
            raise TypeError("only a PostgreSQL store has a log to follow")
        self.store = store
        self._recorder = recorder
        self.conninfo = conninfo
        self.on_events = on_events
        self.poll_interval = poll_interval
        # Bytes of stored events one read holds at most (always one event),
        # so a node far behind large messages catches up a page at a time.
        self.page_bytes = page_bytes
        self.position = 0
        self.delivered = 0
        self.skipped = 0
        # Own answered batches announced ahead of the position (after a gap
        # or another node's commit): their rows are dropped when read.
        self._mine: dict[tuple[int, int], None] = {}
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None

    @property
    def channel(self) -> str:
        return self._recorder.channel_name

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self.position = self.store.ping()
        self._thread = threading.Thread(target=self._run, name="sessiond-follow", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=10)

    def _run(self) -> None:
        name_native_thread()
        failures = 0
        while not self._stopping.is_set():
            try:
                with psycopg.connect(self.conninfo, autocommit=True) as conn:
                    conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(self.channel)))
                    failures = 0
                    self._catch_up()
                    polled = time.monotonic()
                    while not self._stopping.is_set():
                        # Wait in short slices, so that stop() is prompt.
                        for notify in conn.notifies(timeout=STOP_SLICE, stop_after=1):
                            if not self._own_commit(notify.payload):
                                self._catch_up()
                                polled = time.monotonic()
                        if time.monotonic() - polled >= self.poll_interval:
                            self._catch_up()  # the bounded poll
                            polled = time.monotonic()
            except Exception as e:
                failures += 1
                log.warning(
                    "following the log failed; reconnecting",
                    extra={"error": str(e).strip()[:200], "failures": failures},
                )
                self._stopping.wait(min(5.0, 0.1 * 2**failures))

    def _own_commit(self, payload: str) -> bool:
        """True when the notification is this process's own next commit, which
        its writer has already published: the position moves past it unread.

        The payload is ``<origin> <first> <last>`` (service/storage/postgres.py). It
        counts as our own only if the recorder got the answer for exactly that
        batch (a batch committed but unanswered is not the writer's to
        publish) and ``first`` is the next position: commits reach LISTENers
        in commit order, and the table lock makes that notification-ID order,
        so nothing of another node's can lie before it. Anything else (another
        node's commit, a gap left by a rolled-back insert, an old payload) is
        read.
        """
        parts = payload.split()
        if len(parts) != 3:
            return False
        try:
            first, last = int(parts[1]), int(parts[2])
        except ValueError:
            return False
        if first > self.position + 1:
            # Something else comes first and must be read; if this batch is
            # ours and answered, its rows are dropped when the read reaches them.
            if self._recorder.is_own(parts[0], first, last):
                self._mine[(first, last)] = None
            return False
        if first != self.position + 1:
            return False
        if not self._recorder.is_own(parts[0], first, last):
            return False
        self.position = last
        self.skipped += last - first + 1
        return True

    def _catch_up(self) -> None:
        while not self._stopping.is_set():
            rows = self.store.log_rows(self.position + 1, PAGE, self.page_bytes)
            if not rows:
                return
            page, read = rows, len(rows)
            size = sum(len(row[4]) for row in rows)
            rows = self._drop_own(rows)
            self.skipped += read - len(rows)
            # Only session events go to sockets; they are decoded with the
            # same raw-row decoder as every other read path.
            events = [wire_from_row(row) for row in rows if row[1].startswith(SESSION)]
            if events and self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self.on_events, events)
                self.delivered += len(events)
            # Moved only once what it covers is handed to the event loop: a
            # position seen on the loop has its events queued ahead of the reader.
            self.position = last = page[-1][0]
            for key in [key for key in self._mine if key[1] <= last]:
                del self._mine[key]
            # A page short of PAGE rows is the end of the log, unless its bytes
            # may have cut it: then read on (an empty read ends it). One cut
            # by an event over half the bound is read at the next poll.
            if read < PAGE and size <= self.page_bytes // 2:
                return

    def _drop_own(self, rows: list[LogRow]) -> list[LogRow]:
        """``rows`` without those of this process's own answered batches: its
        writer published them, so they are not decoded again. A batch whose
        answer has not reached the writer yet is kept (the hub drops the
        repeat), as is one whose answer was lost (nobody else publishes it)."""
        first, last = rows[0][0], rows[-1][0]
        mine = self._recorder.own_ranges(first, last)
        mine += [key for key in self._mine if key[0] <= last and key[1] >= first]
        if not mine:
            return rows
        return [row for row in rows if not any(a <= row[0] <= b for a, b in mine)]
