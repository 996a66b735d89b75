"""The node's view of its store (service/application/health.py): what marks
a side down, failing fast while it is, and the probe that brings it back.
The store is a pair of functions the test controls; the errors are the
recorders' own, made from the drivers' (a real SQLite lock for "busy")."""

from __future__ import annotations

import asyncio
import sqlite3
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import psycopg
import pytest
from eventsourcing.persistence import DataError, IntegrityError, InternalError, OperationalError
from psycopg import errors as pg_errors

from service.application.health import PATIENCE, StoreHealth, StoreUnavailable
from service.storage.faults import busy, down, read_only, store_down


class Store:
    """A store the test turns off and on: reads, writes, or both."""

    def __init__(self) -> None:
        self.reads = True
        self.writes = True
        self.log: list[str] = []

    def ping(self) -> int:
        self.log.append("ping")
        if not self.reads:
            raise OperationalError("connection refused")
        return 7

    def write(self) -> None:
        self.log.append("write")
        if not self.writes:
            raise OperationalError("database or disk is full")


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def health_of(store: Store, clock: Clock | None = None) -> StoreHealth:
    def settle() -> None:
        store.log.append(f"settle (writable={health.writable}, readable={health.readable})")

    health = StoreHealth(
        ping=store.ping, write_probe=store.write, settle=settle, clock=clock or Clock()
    )
    return health


def refused() -> OperationalError:
    return OperationalError("connection refused")


def sqlite_busy(tmp_path: Path) -> OperationalError:
    """The error a real SQLite write gets while another connection holds the lock."""
    path = tmp_path / "busy.db"
    holder = sqlite3.connect(path, isolation_level=None)
    holder.execute("CREATE TABLE t (x)")
    holder.execute("BEGIN IMMEDIATE")
    other = sqlite3.connect(path, isolation_level=None, timeout=0)
    try:
        other.execute("INSERT INTO t VALUES (1)")
    except sqlite3.OperationalError as e:
        try:
            raise OperationalError(e) from e
        except OperationalError as wrapped:
            return wrapped
    finally:
        holder.close()
        other.close()
    raise AssertionError("the second connection was not kept waiting")


def test_a_read_that_finds_the_store_down_fails_both_sides_fast_until_the_probe_finds_it() -> None:
    store = Store()
    health = health_of(store)
    health.failed(refused(), write=False)
    assert not health.readable and not health.writable and not health.ready
    for write in (False, True):
        with pytest.raises(StoreUnavailable, match="connection refused"):
            health.check(write=write)
    store.reads = False
    assert health.probe() is False
    assert store.log == ["ping"]
    store.reads = True
    recovered: list[bool] = []
    health.on_recovery(lambda: recovered.append(health.up))
    assert health.probe() is True
    # Writes came back first, then what was owed was settled, then reads.
    assert store.log[1:] == ["ping", "write", "settle (writable=True, readable=False)"]
    assert health.ready and recovered[-1] is True


def test_a_write_the_store_refuses_leaves_reads_up_and_only_a_real_write_brings_writes_back() -> (
    None
):
    store = Store()
    health = health_of(store)
    health.failed(OperationalError("database or disk is full"), write=True)
    assert health.readable and not health.writable
    health.check(write=False)
    store.writes = False
    assert health.probe() is False
    assert not health.writable, "a ping alone must not bring writes back"
    store.writes = True
    assert health.probe() is True
    assert "settle" not in " ".join(store.log), "reads were never down: nothing to settle"


def wrapped(error: Exception, cause: BaseException) -> Exception:
    """``error`` raised from ``cause``, as the recorders raise theirs."""
    try:
        raise error from cause
    except Exception as e:
        return e


def test_a_busy_store_and_a_calls_own_mistake_mark_nothing_down(tmp_path: Path) -> None:
    health = health_of(Store())
    locked = sqlite_busy(tmp_path)
    cancelled = wrapped(OperationalError("canceling"), pg_errors.QueryCanceled("timeout"))
    no_table = wrapped(OperationalError("x"), sqlite3.OperationalError("no such table: t"))
    assert busy(locked) and busy(cancelled)
    for error in (locked, cancelled, no_table, IntegrityError("taken"), DataError("bad")):
        assert not down(error)
        health.failed(error, write=True)
        health.failed(error, write=False)
    assert health.up


def write_refused_read_only(tmp_path: Path) -> sqlite3.OperationalError:
    """What a real SQLite connection opened read-only says to a write."""
    path = tmp_path / "ro.db"
    sqlite3.connect(path).execute("CREATE TABLE t (x)")
    conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True)
    with pytest.raises(sqlite3.OperationalError) as refused:
        conn.execute("INSERT INTO t VALUES (1)")
    conn.close()
    return refused.value


def test_what_says_the_store_is_away_is_down_and_answered_unavailable(tmp_path: Path) -> None:
    for error in (
        wrapped(OperationalError("x"), write_refused_read_only(tmp_path)),
        wrapped(OperationalError("x"), pg_errors.AdminShutdown("terminating connection")),
        wrapped(OperationalError("x"), pg_errors.DiskFull("could not extend file")),
        wrapped(OperationalError("x"), psycopg.OperationalError("connection refused")),
        wrapped(InternalError("x"), pg_errors.ReadOnlySqlTransaction("read-only")),
        OperationalError("couldn't get a connection after 2.00 sec"),
    ):
        assert store_down(error) and down(error), error


def test_a_connection_sqlite_opened_read_only_is_told_apart(tmp_path: Path) -> None:
    assert read_only(write_refused_read_only(tmp_path))
    assert not read_only(sqlite3.OperationalError("no such table"))


async def test_reads_fail_fast_while_down_and_a_read_that_finds_it_down_says_so() -> None:
    store = Store()
    clock = Clock()
    health = health_of(store, clock)
    calls: list[str] = []

    def read(what: str) -> str:
        calls.append(what)
        if what == "fails":
            raise OperationalError("server closed the connection")
        return what

    with ThreadPoolExecutor(1) as pool:
        assert await health.read(pool, read, "fine") == "fine"
        with pytest.raises(StoreUnavailable, match="server closed"):
            await health.read(pool, read, "fails")
        assert not health.readable
        with pytest.raises(StoreUnavailable):
            await health.read(pool, read, "not tried")
        assert calls == ["fine", "fails"]
        assert health.probe()
        # A read no thread took within PATIENCE is answered without trying.
        gate = asyncio.Event()
        loop = asyncio.get_running_loop()

        def blocking() -> str:
            asyncio.run_coroutine_threadsafe(gate.wait(), loop).result(10)
            return "blocked"

        first = asyncio.ensure_future(health.read(pool, blocking))
        late = asyncio.ensure_future(health.read(pool, read, "late"))
        await asyncio.sleep(0.05)
        clock.now += PATIENCE + 0.1
        gate.set()
        assert await first == "blocked"
        with pytest.raises(StoreUnavailable, match="in time"):
            await late
    assert calls == ["fine", "fails"]
    assert health.up, "a late read is not the store's fault"
