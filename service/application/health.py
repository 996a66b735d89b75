"""What this node knows of its store, shared by everything on the node that
uses it: the writer, the readers, the sockets and the operators' endpoints.
See docs/adr/0028-fail-fast-while-the-store-is-down.md.

Reads and writes are watched apart, because a store can fail one and not
the other: a full disk or a read-only SQLite file refuses writes while
everything recorded can still be read.

* A call that fails because the store is down (service/storage/faults.py:
  not merely busy, nor a mistake of the call) marks its side down; a read's
  failure marks both (what cannot be read cannot be written either).
* While a side is down, every call on it fails at once with
  :class:`StoreUnavailable` (503 ``unavailable``, ``Retry-After``), without a
  new attempt each time.
* A probe thread brings them back: every ``PROBE_INTERVAL`` seconds it pings
  the store (a read, with the store's own deadlines); once that answers it
  makes one small real write (the node's heartbeat row), and only when that
  is taken are writes up again. Before reads count as up again, ``settle``
  runs with writes up (the node records the closes it could not record, so
  that no read shows a connection live that is not).
* While everything is up the probe still pings every ``WATCH_INTERVAL``, so a
  store that went away while nobody called is noticed, and ``/readyz`` never
  has to wait on the store to answer.

A call that could not even start within ``PATIENCE`` seconds of coming in
(it waited behind others for the writer or a reader thread) is answered 503
without trying: with each store call bounded by the store's own deadlines,
that keeps every answer within the budget.
"""

from __future__ import annotations

import asyncio
import logging
import math
import threading
import time
from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from service.runtime.osthread import name_native_thread
from service.storage.faults import down, store_down

log = logging.getLogger("sessiond.health")

T = TypeVar("T")

RETRY_AFTER = 1  # seconds: what a 503 unavailable tells the client to wait
PROBE_INTERVAL = 0.5
WATCH_INTERVAL = 1.0
PATIENCE = 2.0


class StoreUnavailable(Exception):
    """The store could not be reached or refused the write; nothing was recorded."""


class StoreHealth:
    """Whether the store answers reads and takes writes, as this node last saw it."""

    def __init__(
        self,
        *,
        ping: Callable[[], object],
        write_probe: Callable[[], object],
        settle: Callable[[], object] = lambda: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._ping = ping
        self._write_probe = write_probe
        self._settle = settle
        self._clock = clock
        self.readable = True
        self.writable = True
        # The node is draining (it takes no new traffic, whatever the store
        # says): /readyz answers 503 while this is set.
        self.draining = False
        self.reason = ""  # why a side is down, from the error that said so
        self.up_since = -math.inf  # when the store last came back
        self._lock = threading.Lock()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._listeners: list[Callable[[], object]] = []

    @property
    def up(self) -> bool:
        return self.readable and self.writable

    @property
    def ready(self) -> bool:
        """Whether the node should be sent traffic (``/readyz``)."""
        return self.up and not self.draining

    def on_recovery(self, listener: Callable[[], object]) -> None:
        """Call ``listener`` (on the thread that saw it; it must be quick)
        whenever a side of the store comes back."""
        self._listeners.append(listener)

    # --- what the store's users say --------------------------------------------------

    def check(self, *, write: bool) -> None:
        """Fail fast: raise StoreUnavailable if that side of the store is down."""
        if not (self.writable if write else self.readable):
            raise StoreUnavailable(f"store unavailable: {self.reason}")

    def failed(self, error: BaseException, *, write: bool) -> None:
        """A call failed with ``error``: if it says the store is down (not
        merely busy, nor a mistake of the call), mark the side down (both,
        for a read)."""
        if not down(error):
            return
        with self._lock:
            was_up = self.up
            self.writable = False
            if not write:
                self.readable = False
            self.reason = f"{type(error).__name__}: {error}".strip()[:200]
        if was_up:
            side = "write" if write else "read"
            log.warning("store down", extra={"side": side, "error": self.reason})

    def expired(self, since: float) -> bool:
        """Whether a call that came in at ``since`` waited too long to start."""
        return self._clock() - since > PATIENCE

    async def read(self, executor: Executor, fn: Callable[..., T], *args: Any) -> T:
        """``fn(*args)`` on ``executor``: at once StoreUnavailable while the
        store cannot be read, or if no thread took it within PATIENCE; a
        failure that says the store is down marks it so, and is raised as
        StoreUnavailable."""
        self.check(write=False)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(executor, self._guarded, self._clock(), fn, args)

    def _guarded(self, since: float, fn: Callable[..., T], args: tuple[Any, ...]) -> T:
        self.check(write=False)
        if self.expired(since):
            raise StoreUnavailable("store unavailable: too busy to read in time")
        try:
            return fn(*args)
        except Exception as e:
            if not store_down(e):
                raise
            self.failed(e, write=False)
            raise StoreUnavailable(f"store unavailable: {type(e).__name__}: {e}") from e

    # --- the probe ------------------------------------------------------------------

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sessiond-probe", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
            self._thread = None

    def _run(self) -> None:
        name_native_thread()
        while not self._stopping.wait(WATCH_INTERVAL if self.up else PROBE_INTERVAL):
            try:
                self.probe()
            except Exception:  # a bug here must not end the probe
                log.exception("store probe failed")

    def probe(self) -> bool:
        """Ping the store, bring back what answers; whether all is up. Runs on
        the probe thread (and once at shutdown), never on the event loop."""
        try:
            self._ping()
        except Exception as e:
            self.failed(e, write=False)
            return False
        if not self.writable:
            try:
                self._write_probe()
            except Exception as e:
                if store_down(e):
                    self.reason = f"{type(e).__name__}: {e}".strip()[:200]
                else:
                    log.exception("store write probe failed")
            else:
                self._back(writes=True)
        if not self.readable:
            if self.writable:
                try:
                    self._settle()
                except Exception as e:  # reads stay down until the next probe
                    log.warning("settling with the store failed", extra={"error": repr(e)})
                    return False
            self._back(reads=True)
        return self.up

    def _back(self, *, reads: bool = False, writes: bool = False) -> None:
        """Reads, or writes, are up again."""
        with self._lock:
            self.readable = self.readable or reads
            self.writable = self.writable or writes
            up = self.up
            if up:
                self.up_since = self._clock()
                self.reason = ""
        if up:
            log.info("store back")
        for listener in self._listeners:
            try:
                listener()
            except Exception:
                log.exception("a listener of the store's recovery failed")
