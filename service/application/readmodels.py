"""The read models inside the running service: the projector on its own
thread, woken after every commit (and polling, for other nodes' writes), and
what handlers await to read their own writes."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Sequence
from typing import Any

from projections.projection import Projection
from projections.projector import PROJECTIONS, Projector
from projections.tables import PostgresTables, SQLiteTables, Tables
from service.runtime.osthread import name_native_thread
from service.runtime.settings import Settings
from service.storage.rows import LogRow
from service.storage.store import SessiondApplication, StoreConfig
from service.storage.wire import wire_from_row

log = logging.getLogger("sessiond.projections")


def open_tables(config: StoreConfig) -> Tables:
    """The read-model tables, in the same database as the event log."""
    if config.kind == "sqlite":
        assert config.path is not None
        return SQLiteTables(str(config.path))
    if config.conninfo is not None:
        return PostgresTables(config.conninfo)
    return SQLiteTables(None)


# Bytes of stored events one projector batch reads at most (and always one
# event), SESSIOND_PAGE_BYTES unless told: a batch of 2,000 rows of 1 MiB
# messages would otherwise be 2 GiB.
BATCH_BYTES = Settings.page_bytes


def make_projector(
    store: SessiondApplication,
    tables: Tables,
    batch_size: int = 2000,
    projections: Sequence[Projection] = PROJECTIONS,
    batch_bytes: int = BATCH_BYTES,
) -> Projector:
    def read_rows(start: int, limit: int) -> list[LogRow]:
        return store.log_rows(start, limit, batch_bytes)

    return Projector(
        read_rows,
        store.ping,
        wire_from_row,
        tables,
        batch_size=batch_size,
        projections=projections,
    )


class ReadModels:
    """Keeps the projection tables up to date while the service runs."""

    def __init__(
        self,
        store: SessiondApplication,
        config: StoreConfig,
        *,
        poll_interval: float = 1.0,
        coalesce: float = 1.0,
        batch_bytes: int = BATCH_BYTES,
    ) -> None:
        self.tables = open_tables(config)
        self.projector = make_projector(store, self.tables, batch_bytes=batch_bytes)
        self._poll = poll_interval
        self._wake = threading.Event()
        # A reader waiting for its own write: catch up at once.
        self._urgent = threading.Event()
        # Otherwise commits are gathered for up to this long before the
        # projector takes the database's write lock, so it does not take it
        # once per commit and stall the writer. Every read of the tables asks
        # for its writes first (wait_for), so the wait is never seen by a
        # client; 1 s rather than 0.25 s cut the projector's CPU per handshake
        # by about a tenth, and the server's by more (measured with bench/).
        self._coalesce = coalesce
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self._waiters: list[tuple[int, asyncio.Future[None]]] = []
        self.applied = 0
        # How many catch-ups in a row have failed (the store down, a full
        # disk): while any has, nobody waits for the projector.
        self.failures = 0

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        """Create the tables and catch up (on the calling thread), then follow."""
        self._loop = loop
        self.projector.setup()
        self.applied += self.projector.catch_up()
        self._thread = threading.Thread(target=self._run, name="sessiond-proj", daemon=True)
        self._thread.start()

    def notify(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        self._stopping.set()
        self._urgent.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.tables.close()

    @property
    def position(self) -> int:
        return self.projector.position

    def _run(self) -> None:
        name_native_thread()
        while not self._stopping.is_set():
            self._wake.wait(self._poll)
            self._wake.clear()
            if not self._urgent.is_set() and not self.failures:
                self._urgent.wait(self._coalesce)
            self._urgent.clear()
            try:
                self.applied += self.projector.catch_up()
            except Exception as e:
                self.failures += 1
                if self.failures == 1:
                    log.warning("projector failed; retrying", extra={"error": e})
                # Tried again within the poll interval, and at once when the
                # store comes back (the health view calls notify).
                continue
            if self.failures:
                log.info("projector caught up again", extra={"failures": self.failures})
                self.failures = 0
            if self._loop is not None and not self._loop.is_closed():
                with contextlib.suppress(RuntimeError):
                    self._loop.call_soon_threadsafe(self._advanced, self.projector.position)

    def _advanced(self, position: int) -> None:
        keep: list[tuple[int, asyncio.Future[None]]] = []
        for target, future in self._waiters:
            if target <= position:
                if not future.done():
                    future.set_result(None)
            else:
                keep.append((target, future))
        self._waiters = keep

    async def wait_for(self, position: int, patience: float) -> bool:
        """Wait until the tables include ``position``; False if they did not
        in time, and at once while the projector is failing (the caller reads
        the log instead)."""
        if self.projector.position >= position:
            return True
        if self.failures:
            return False
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._waiters.append((position, future))
        self._urgent.set()
        self._wake.set()
        try:
            async with asyncio.timeout(patience):
                await future
            return True
        except TimeoutError:
            return False

    def describe(self) -> dict[str, Any]:
        return {"position": self.projector.position, "applied": self.applied}
