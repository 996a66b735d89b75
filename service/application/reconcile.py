"""Closes the store could not take when their socket ended, recorded as soon
as it takes writes again (docs/adr/0028-fail-fast-while-the-store-is-down.md).

A socket can end while the store is down: its client leaves, or the server
ends it (1013). Its CLOSED, with the code it was sent, cannot be recorded
then, and the record would go on showing it live. The connection protocol
hands such a close here (its ``RecordLater`` effect); this node keeps it in
memory (at most ``LIMIT``, the oldest dropped first and logged) and records
it once the store is back: the health view's probe records them before it
lets reads through again, so no read shows one of them live afterwards, and
a background task retries any that a busy store turned away. At shutdown one
last attempt is made; what is still left then is logged, and this node's
next start records those connections CLOSED ``lost`` (service/edge/app.py).
Recording a close twice records nothing the second time.
"""

from __future__ import annotations

import asyncio
import logging
from typing import Any

from service.application.health import RETRY_AFTER, StoreHealth, StoreUnavailable
from service.application.writer import Command, Writer

log = logging.getLogger("sessiond.reconcile")

LIMIT = 10_000


class UnrecordedCloses:
    """The CLOSED records this node still owes the store, by connection ID."""

    def __init__(self, writer: Writer, health: StoreHealth, *, limit: int = LIMIT) -> None:
        self._writer = writer
        self._health = health
        self._limit = limit
        self._kept: dict[str, Command[Any]] = {}
        self._wake = asyncio.Event()

    def __len__(self) -> int:
        return len(self._kept)

    def keep(self, connection_id: str, command: Command[Any]) -> None:
        """Record ``command`` (the connection's CLOSED) once the store takes writes."""
        self._kept[connection_id] = command
        while len(self._kept) > self._limit:
            dropped = next(iter(self._kept))
            del self._kept[dropped]
            log.error(
                "too many closes waiting for the store: one is dropped "
                "(recorded lost at this node's next start)",
                extra={"connection_id": dropped},
            )
        self._wake.set()

    def wake(self) -> None:
        """The store may take writes again: try now (on the event loop)."""
        self._wake.set()

    async def flush(self) -> bool:
        """Try to record every kept close now; whether none is left."""
        kept, self._kept = self._kept, {}
        if not kept:
            return True
        outcomes = await asyncio.gather(
            *(self._writer.execute(command) for command in kept.values()),
            return_exceptions=True,
        )
        for (connection_id, command), outcome in zip(kept.items(), outcomes, strict=True):
            if isinstance(outcome, StoreUnavailable):
                self._kept.setdefault(connection_id, command)
            elif isinstance(outcome, BaseException):
                log.error(
                    "a close kept for the store failed; it is dropped",
                    extra={"connection_id": connection_id, "error": repr(outcome)[:200]},
                )
            else:
                log.info(
                    "close recorded after the store came back",
                    extra={"connection_id": connection_id},
                )
        return not self._kept

    async def run(self) -> None:
        """Record kept closes whenever the store may take them (a task)."""
        while True:
            await self._wake.wait()
            self._wake.clear()
            if self._health.writable and not await self.flush():
                await asyncio.sleep(RETRY_AFTER)
                self._wake.set()

    async def last_try(self) -> None:
        """At shutdown: one more attempt (probing the store first if it was
        down); log what is still owed."""
        if not self._kept:
            return
        if not self._health.writable:
            await asyncio.get_running_loop().run_in_executor(None, self._health.probe)
        if self._health.writable:
            await self.flush()
        for connection_id in self._kept:
            log.warning(
                "close left unrecorded at shutdown (recorded lost at this node's next start)",
                extra={"connection_id": connection_id},
            )
