"""Figures measured inside this process, on SQLite files: the store path alone
(the writer against a raw batched insert), projection rebuild (against a raw
read and decode), and the data for ``sessiond replay``.

Large logs are made fast: one real session and connection are written
through the writer once, and their stored rows (topic and state bytes) are
copied under new IDs, with dense positions, straight into the app's recorder.
"""

from __future__ import annotations

import asyncio
import gc
import sqlite3
import time
from collections import defaultdict
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import orjson
from eventsourcing.persistence import StoredEvent

from domain.base import utcnow
from domain.session import Session
from service.application import commands
from service.application.auth import Principal
from service.application.readmodels import make_projector, open_tables
from service.application.writer import Command, Writer
from service.cli.main import REBUILD_BATCH, rebuild, tune_garbage_collector
from service.runtime import eventloop
from service.runtime.settings import Settings
from service.storage.rows import StreamRow
from service.storage.store import (
    SessiondApplication,
    StoreConfig,
    open_store,
    parse_store_url,
    stored_row,
)

ACTOR = Principal("bench", frozenset({"user"}))
SID, CID = "SESSION-PLACEHOLDER", "CONNECTION-PLACEHOLDER"
BODY = ("TaskProgressed", "MessageRecorded")
# What every message of the store path says (the writer's and the floor's).
ROLE, CONTENT = "assistant", "token " * 8
Row = tuple[str, str, bytes]  # stream, topic, state


def sqlite_url(path: Path) -> str:
    return f"sqlite:///{path}"


# --- a real session, as recorded ------------------------------------------------


def template(workdir: Path) -> list[Row]:
    """The stored rows of one real connection's life on one session: connect,
    walk to PROCESSING_READY, a task, progress, a message, close."""
    store = open_store(parse_store_url(sqlite_url(workdir / "template.db")))

    async def record() -> None:
        writer = Writer(store, on_commit=lambda events: None)
        writer.start(asyncio.get_running_loop())
        steps: tuple[Command[Any], ...] = (
            commands.open_connection(CID, SID, node="bench", proposed=True),
            commands.accept(CID),
            commands.authenticate(CID, ACTOR),
            commands.attach(CID, SID, ACTOR, node="bench", max_connections=1),
            commands.go_live(CID, 2),
            commands.start_task(SID, ACTOR, task_id="t1", name="export", total=1000),
            commands.report_progress(SID, ACTOR, task_id="t1", done=1, total=None, note=None),
            commands.record_message(
                SID, ACTOR, message_id="m1", role="user", content="hello, world"
            ),
            commands.close_connection(CID, code=1000, reason="normal"),
        )
        for command in steps:
            await writer.execute(command)
        await writer.stop()

    asyncio.run(record())
    rows = [
        (str(n.originator_id), n.topic, n.state)
        for n in store.recorder.select_notifications(1, 100)
    ]
    store.close()
    return rows


def expand(rows: list[Row], session_id: str, connection_id: str, body: int) -> list[StoredEvent]:
    """The template under new IDs, with ``body`` progress and message events
    (alternating) in place of its one of each, positions dense per stream."""
    sid, cid = session_id.encode(), connection_id.encode()
    versions: dict[str, int] = defaultdict(int)
    body_rows = [r for r in rows if r[1].endswith(BODY)]
    out: list[StoredEvent] = []

    def emit(row: Row) -> None:
        stream = row[0].replace(SID, session_id).replace(CID, connection_id)
        versions[stream] += 1
        state = row[2].replace(SID.encode(), sid).replace(CID.encode(), cid)
        out.append(StoredEvent(stream, versions[stream], row[1], state))

    emitted_body = False
    for row in rows:
        if row[1].endswith(BODY):
            if not emitted_body:
                for i in range(body):
                    emit(body_rows[i % len(body_rows)])
                emitted_body = True
            continue
        emit(row)
    return out


def fill(store: SessiondApplication, events: Iterator[StoredEvent], chunk: int = 20_000) -> int:
    """Insert stored events through the app's recorder, ``chunk`` per transaction."""
    batch: list[StoredEvent] = []
    n = 0
    for event in events:
        batch.append(event)
        if len(batch) >= chunk:
            store.recorder.insert_events(batch)
            n += len(batch)
            batch = []
    if batch:
        store.recorder.insert_events(batch)
        n += len(batch)
    return n


def sessions_log(rows: list[Row], events: int, per_session: int) -> Iterator[StoredEvent]:
    fixed = sum(1 for r in rows if not r[1].endswith(BODY))
    for i in range(max(1, events // per_session)):
        yield from expand(rows, f"session-{i:07d}", f"conn-{i:07d}", per_session - fixed)


# --- (c) events appended/s: the writer vs a raw batched insert ------------------------


@dataclass
class Append:
    rate: float
    cpu_per_event: float
    per_txn: float
    raw_rate: float
    raw_cpu_per_event: float
    synchronous: str
    raw_method: str  # the faster of the raw ways, which is the baseline
    # eventsourcing's own event objects and the raw insert, nothing else: the
    # floor any store path built on its aggregates has.
    floor_rate: float
    floor_cpu_per_event: float


def append_rate(workdir: Path, events: int, concurrency: int, max_batch: int = 256) -> Append:
    """``concurrency`` commands in flight at all times (each producer awaits its
    command, then sends the next), through service.writer.Writer to a SQLite
    file; then the same rows inserted with sqlite3 into a table of the same
    schema, in transactions of the size the writer made, same durability.

    The writer runs under the garbage-collector settings ``sessiond serve``
    uses (ADR 0017), restored afterwards."""
    thresholds = gc.get_threshold()
    tune_garbage_collector()
    try:
        return _append_rate(workdir, events, concurrency, max_batch)
    finally:
        gc.unfreeze()
        gc.set_threshold(*thresholds)


def _append_rate(workdir: Path, events: int, concurrency: int, max_batch: int) -> Append:
    path = workdir / "append.db"
    store = open_store(parse_store_url(sqlite_url(path)))
    with store.recorder.datastore.transaction(commit=False) as c:  # type: ignore[attr-defined]
        c.execute("PRAGMA synchronous")
        synchronous = {0: "OFF", 1: "NORMAL", 2: "FULL", 3: "EXTRA"}[c.fetchone()[0]]
    per = max(1, events // concurrency)

    async def run() -> tuple[float, float, int, int]:
        writer = Writer(store, on_commit=lambda events: None, max_batch=max_batch)
        writer.start(asyncio.get_running_loop())
        sessions = [f"append-{i}" for i in range(concurrency)]
        await asyncio.gather(
            *(writer.execute(commands.create_session(s, ACTOR, None)) for s in sessions)
        )
        tx0, ev0 = writer.transactions, writer.events_appended
        cpu0, t0 = time.process_time(), time.perf_counter()

        async def producer(s: str) -> None:
            for i in range(per):
                await writer.execute(
                    commands.record_message(
                        s, ACTOR, message_id=f"m{i}", role=ROLE, content=CONTENT
                    )
                )

        await asyncio.gather(*(producer(s) for s in sessions))
        elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
        txns, appended = writer.transactions - tx0, writer.events_appended - ev0
        await writer.stop()
        return elapsed, cpu, txns, appended

    # On the event loop sessiond serves on (ADR 0045).
    elapsed, cpu, txns, appended = eventloop.run(run, Settings.from_env().event_loop)
    store.close()
    per_txn = appended / max(txns, 1)

    db = sqlite3.connect(path)
    schema = db.execute("SELECT sql FROM sqlite_master WHERE name = 'stored_events'").fetchone()[0]
    rows = db.execute(
        "SELECT originator_id, originator_version, topic, state FROM stored_events "
        "WHERE topic LIKE '%MessageRecorded' ORDER BY rowid"
    ).fetchall()
    db.close()
    size = max(1, round(per_txn))
    # The baseline is the faster of the two ways raw sqlite3 batches an
    # insert: ``executemany`` in a transaction, or one multi-row INSERT (what
    # sessiond's recorder does, ADR 0019).
    raws = [
        _raw_inserts(workdir / f"raw-{method}.db", schema, synchronous, rows, size, method)
        for method in ("executemany", "multi-row INSERT")
    ]
    raw_elapsed, raw_cpu, raw_method = min(raws)
    floor_elapsed, floor_cpu, floor_events = _objects_floor(
        workdir / "floor.db", schema, synchronous, concurrency, per, size, raw_method
    )
    return Append(
        rate=appended / elapsed,
        cpu_per_event=cpu / appended,
        per_txn=per_txn,
        raw_rate=len(rows) / raw_elapsed,
        raw_cpu_per_event=raw_cpu / len(rows),
        synchronous=synchronous,
        raw_method=raw_method,
        floor_rate=floor_events / floor_elapsed,
        floor_cpu_per_event=floor_cpu / floor_events,
    )


_INSERT = "INSERT INTO stored_events VALUES (?, ?, ?, ?)"


def _raw_table(path: Path, schema: str, synchronous: str) -> sqlite3.Connection:
    raw = sqlite3.connect(path, isolation_level=None)
    raw.execute("PRAGMA journal_mode=WAL")
    raw.execute(f"PRAGMA synchronous={synchronous}")
    raw.execute(schema)
    return raw


def _insert(raw: sqlite3.Connection, chunk: list[Any], method: str) -> None:
    """One transaction of ``chunk``'s rows, the raw way ``method`` names."""
    if method == "executemany":
        raw.execute("BEGIN")
        raw.executemany(_INSERT, chunk)
        raw.execute("COMMIT")
    else:
        raw.execute(_INSERT + ",(?, ?, ?, ?)" * (len(chunk) - 1), [v for r in chunk for v in r])


def _raw_inserts(
    path: Path, schema: str, synchronous: str, rows: list[Any], size: int, method: str
) -> tuple[float, float, str]:
    """Insert ``rows`` into a fresh table in transactions of ``size`` rows;
    (seconds, CPU seconds, method)."""
    raw = _raw_table(path, schema, synchronous)
    cpu0, t0 = time.process_time(), time.perf_counter()
    for start in range(0, len(rows), size):
        _insert(raw, rows[start : start + size], method)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    raw.close()
    return elapsed, cpu, method


def _objects_floor(
    path: Path, schema: str, synchronous: str, sessions: int, per: int, size: int, method: str
) -> tuple[float, float, int]:
    """The same messages made as eventsourcing makes them and nothing more:
    each event built and applied by ``trigger_event`` on a ``Session``
    aggregate held in memory, collected, encoded as sessiond stores it, and
    inserted raw in transactions of ``size`` events; no command, writer
    thread, future or event loop. (seconds, CPU seconds, events)."""
    raw = _raw_table(path, schema, synchronous)
    held = [Session.create(f"floor-{i}", ACTOR.user_id) for i in range(sessions)]
    for session in held:
        session.collect_events()
    pending: list[StreamRow] = []
    n = 0
    cpu0, t0 = time.process_time(), time.perf_counter()
    for i in range(per):
        for session in held:
            session.trigger_event(
                Session.MessageRecorded,
                message_id=f"m{i}",
                role=ROLE,
                content=CONTENT,
                model=None,
                tokens=None,
                metadata=None,
                user_id=ACTOR.user_id,
                connection_id=None,
                timestamp=utcnow(),
            )
            pending.extend(map(stored_row, session.collect_events()))  # type: ignore[arg-type]
            if len(pending) >= size:
                _insert(raw, pending, method)
                n += len(pending)
                pending = []
    if pending:
        _insert(raw, pending, method)
        n += len(pending)
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    raw.close()
    return elapsed, cpu, n


# --- (d) projection rebuild --------------------------------------------------------


@dataclass(frozen=True)
class RebuildRun:
    rate: float
    cpu_per_event: float
    raw_rate: float  # the raw read and decode right after it


@dataclass
class Rebuild:
    events: int
    fill_seconds: float
    runs: list[RebuildRun]  # in the order run

    @property
    def best(self) -> RebuildRun:
        return max(self.runs, key=lambda run: run.rate)

    @property
    def rate(self) -> float:
        return self.best.rate

    @property
    def cpu_per_event(self) -> float:
        return self.best.cpu_per_event

    @property
    def raw_rate(self) -> float:
        return max(run.raw_rate for run in self.runs)


def rebuild_rate(
    workdir: Path,
    rows: list[Row],
    events: int,
    batch_size: int = REBUILD_BATCH,
    runs: int = 1,
) -> Rebuild:
    """``sessiond projections rebuild`` (what the command runs, its default
    batch) over ``events`` recorded events, against reading the same rows and
    decoding them with orjson; with ``runs`` above 1, both are run that many
    times, alternately, on the same store, and the best of each counts (as
    ``timeit`` advises: a slower run is the machine's noise, not the code's)."""
    config = parse_store_url(sqlite_url(workdir / "rebuild.db"))
    store = open_store(config)
    t0 = time.perf_counter()
    recorded = fill(store, sessions_log(rows, events, per_session=100))
    fill_seconds = time.perf_counter() - t0
    tables = open_tables(config)
    projector = make_projector(store, tables, batch_size=batch_size)
    projector.setup()
    measured: list[RebuildRun] = []
    try:
        for _ in range(runs):
            cpu0, t0 = time.process_time(), time.perf_counter()
            applied = rebuild(projector)
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
            if applied != recorded:
                raise RuntimeError(f"rebuild applied {applied} of {recorded} events")
            measured.append(RebuildRun(applied / elapsed, cpu / applied, _raw_read_rate(config)))
    finally:
        tables.close()
        store.close()
    return Rebuild(recorded, fill_seconds, measured)


def _raw_read_rate(config: StoreConfig) -> float:
    """Rows read and their states decoded with orjson per second, raw sqlite3."""
    assert config.path is not None
    db = sqlite3.connect(config.path)
    t0 = time.perf_counter()
    n = 0
    for _rowid, _stream, _version, _topic, state in db.execute(
        "SELECT rowid, originator_id, originator_version, topic, state FROM stored_events "
        "ORDER BY rowid"
    ):
        orjson.loads(state)
        n += 1
    rate = n / (time.perf_counter() - t0)
    db.close()
    return rate


# --- (g) data for replay --------------------------------------------------------------


def replay_store(workdir: Path, rows: list[Row], events: int, session_id: str) -> str:
    """A store holding one session of ``events`` events (and its connection)."""
    url = sqlite_url(workdir / f"replay-{events}.db")
    store = open_store(parse_store_url(url))
    fixed = sum(1 for r in rows if not r[1].endswith(BODY) and r[0].startswith("session:"))
    fill(store, iter(expand(rows, session_id, f"{session_id}-conn", max(0, events - fixed))))
    store.close()
    return url
