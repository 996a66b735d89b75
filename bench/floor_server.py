"""The durable floor: the bare server plus the least that "recorded durably
before announced" costs, and nothing else sessiond does.

It is :mod:`bench.bare_server`'s wire protocol with one addition: before a
step is announced, a row for it is committed to a SQLite file (WAL,
``synchronous=FULL``: the same durability as sessiond) by one group-commit
thread, and the handler waits for that commit. The commits mirror what the
contract and sessiond's ADRs allow a handshake, three commits (CONNECTING with
ACCEPTED once the upgrade completed; AUTHENTICATED, SERVICES_READY and
PROCESSING_READY together once the token is valid; CLOSED: ADR 0037), and a
delivered event (one row, acknowledged once durable). A row is the frame's
JSON: no aggregates, no lifecycle machine, no projection, no validation
beyond the bare server's.

What it leaves out is everything sessiond adds beyond the durable write, so
its rate is a ceiling on any server of this design (aiohttp, one Python
process, a durable acknowledgement per step) on the machine that runs it, and
``sessiond / floor`` is the share of the remaining gap that is sessiond's own.

    python -m bench.floor_server --store FILE --port P
"""

from __future__ import annotations

import argparse
import asyncio
import queue
import sqlite3
import threading
from typing import Any

from aiohttp import web

from bench import bare_server
from bench.bare_server import SECRET, Row, run_peer
from service.runtime.osthread import name_native_thread

_STOP = object()


class GroupCommit:
    """One thread that commits every row waiting, in one transaction, then
    resolves each waiter on the event loop."""

    def __init__(self, path: str) -> None:
        self.path = path
        self.loop: asyncio.AbstractEventLoop | None = None
        self.pending: list[tuple[list[Row], asyncio.Future[None]]] = []
        self.queue: queue.SimpleQueue[Any] = queue.SimpleQueue()
        self.thread = threading.Thread(target=self._run, name="floor-writer", daemon=True)

    def start(self, loop: asyncio.AbstractEventLoop) -> None:
        self.loop = loop
        self.thread.start()

    def stop(self) -> None:
        self.queue.put(_STOP)
        self.thread.join()

    async def record(self, *rows: Row) -> None:
        assert self.loop is not None
        future: asyncio.Future[None] = self.loop.create_future()
        # One hand-over per event-loop turn, as sessiond's writer does.
        self.pending.append((list(rows), future))
        if len(self.pending) == 1:
            self.loop.call_soon(self._flush)
        await future

    def _flush(self) -> None:
        items, self.pending = self.pending, []
        self.queue.put(items)

    def _run(self) -> None:
        name_native_thread()
        db = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False)
        db.execute("PRAGMA journal_mode=WAL")
        db.execute("PRAGMA synchronous=FULL")
        db.execute(
            "CREATE TABLE IF NOT EXISTS log (id INTEGER PRIMARY KEY, stream TEXT NOT NULL,"
            " position INTEGER NOT NULL, body BLOB NOT NULL, UNIQUE (stream, position))"
        )
        assert self.loop is not None
        while True:
            got = self.queue.get()
            if got is _STOP:
                break
            batch = list(got)
            while True:
                try:
                    more = self.queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self.queue.put(_STOP)
                    break
                batch.extend(more)
            db.execute("BEGIN IMMEDIATE")
            db.executemany(
                "INSERT INTO log (stream, position, body) VALUES (?, ?, ?)",
                [row for rows, _ in batch for row in rows],
            )
            db.execute("COMMIT")
            self.loop.call_soon_threadsafe(_resolve, [future for _, future in batch])
        db.close()


def _resolve(futures: list[asyncio.Future[None]]) -> None:
    for future in futures:
        if not future.done():
            future.set_result(None)


def make_app(store: str, secret: str = SECRET) -> web.Application:
    """The bare server, recording each step through a group commit into ``store``."""
    log = GroupCommit(store)
    app = bare_server.make_app(secret, record=log.record)

    async def started(app: web.Application) -> None:
        log.start(asyncio.get_running_loop())

    async def stopped(app: web.Application) -> None:
        log.stop()

    app.on_startup.append(started)
    app.on_cleanup.append(stopped)
    return app


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.floor_server")
    parser.add_argument("--store", required=True, help="the SQLite file to record into")
    parser.add_argument("--port", type=int, required=True)
    args = parser.parse_args()
    run_peer(make_app(args.store), args.port)


if __name__ == "__main__":
    main()
