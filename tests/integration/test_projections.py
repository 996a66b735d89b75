"""The read models against real stores (memory, SQLite, PostgreSQL): after
random-ish histories written through the real writer, every projection row
equals its aggregate's ``view()``; a rebuild from 0 gives the same rows,
committing once per batch; two projectors on one store never apply an event
twice; and an event type or state this code does not know is tolerated."""

from __future__ import annotations

import asyncio
import copy
import gc
import math
import random
import sqlite3
import threading
from collections.abc import AsyncIterator, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import pytest
from eventsourcing.persistence import StoredEvent

from domain.base import utcnow
from domain.connection import Connection
from domain.errors import DomainError
from domain.ids import connection_stream, session_stream
from projections.connections import fold_connection
from projections.projector import PROJECTIONS, Projector, reset
from projections.sessions import apply_session, fold_session
from projections.tables import Tables
from service.application import commands
from service.application.auth import Principal
from service.application.readmodels import make_projector, open_tables
from service.application.writer import Command, UnitOfWork, Writer
from service.cli.main import REBUILD_BATCH, rebuild
from service.storage.store import SessiondApplication, StoreConfig, open_store, parse_store_url
from service.storage.wire import wire_event, wire_from_row, wire_view

USERS = ("alice", "bob", "carol")


def person(user: str) -> Principal:
    return Principal(user, frozenset({"user"}))


@dataclass
class World:
    """A store, the real writer, and the IDs of everything written so far."""

    config: StoreConfig
    store: SessiondApplication
    writer: Writer
    sessions: list[str] = field(default_factory=list)
    connections: list[str] = field(default_factory=list)

    async def run(self, command: Command[Any]) -> Any:
        return await self.writer.execute(command)

    def tables(self) -> Tables:
        return open_tables(self.config)

    def session_views(self) -> dict[str, dict[str, Any]]:
        views = {}
        for session_id in self.sessions:
            session = self.store.get_session(session_id)
            assert session is not None
            views[session_id] = wire_view(session.view())
        return views

    def connection_views(self) -> dict[str, dict[str, Any]]:
        views = {}
        for connection_id in self.connections:
            connection = self.store.get_connection(connection_id)
            assert connection is not None
            views[connection_id] = wire_view(connection.view())
        return views

    def head(self) -> int:
        return self.store.ping()


@pytest.fixture
async def world(store_url: str) -> AsyncIterator[World]:
    config = parse_store_url(store_url)
    store = open_store(config)
    writer = Writer(store, on_commit=lambda events: None, max_batch=16)
    writer.start(asyncio.get_running_loop())
    try:
        yield World(config, store, writer)
    finally:
        await writer.stop()
        store.close()


@contextmanager
def shared_or_own(world: World, tables: Tables) -> Iterator[Tables]:
    """A second handle on the same read-model tables: its own connections on
    SQLite and PostgreSQL; the same in-memory database for memory://."""
    if world.config.kind == "memory":
        yield tables
        return
    other = world.tables()
    try:
        yield other
    finally:
        other.close()


async def write_history(world: World, seed: int, sessions: int = 6) -> None:
    """Sessions with messages, tasks (progress, completion, failure),
    connections walked through the lifecycle (attached, superseded, closed,
    some left open), and some sessions ended."""
    # Sessions are written concurrently, so the writer batches their commands.
    await asyncio.gather(*(write_session(world, seed, s) for s in range(sessions)))


async def write_session(world: World, seed: int, s: int) -> None:
    rng = random.Random(f"{seed}-{s}")
    owner = rng.choice(USERS)
    actor = person(owner)
    session_id = f"s{seed}-{s}"
    metadata = {"n": s} if rng.random() < 0.5 else None
    await world.run(commands.create_session(session_id, actor, metadata))
    world.sessions.append(session_id)
    running: list[str] = []
    for step in range(rng.randint(8, 30)):
        roll = rng.random()
        if roll < 0.35:
            await world.run(
                commands.record_message(
                    session_id,
                    actor,
                    message_id=f"m{step}",
                    role=rng.choice(("user", "assistant", "system")),
                    content=f"message {step} " * rng.randint(1, 5),
                    tokens=rng.randint(0, 100),
                )
            )
        elif roll < 0.45 or (not running and roll < 0.6):
            task_id = f"t{step}"
            total = rng.choice((None, 10, 2.5))
            await world.run(
                commands.start_task(session_id, actor, task_id=task_id, name="job", total=total)
            )
            running.append(task_id)
        elif roll < 0.65 and running:
            await world.run(
                commands.report_progress(
                    session_id,
                    actor,
                    task_id=rng.choice(running),
                    done=rng.randint(0, 10),
                    total=rng.choice((None, 10, 20)),
                    note=rng.choice((None, "working")),
                )
            )
        elif roll < 0.75 and running:
            task_id = running.pop(rng.randrange(len(running)))
            if rng.random() < 0.7:
                await world.run(
                    commands.complete_task(session_id, actor, task_id=task_id, result={"s": 1})
                )
            else:
                await world.run(
                    commands.fail_task(session_id, actor, task_id=task_id, error="boom")
                )
        else:
            await connect(world, rng, session_id, actor, f"{session_id}-c{step}")
    if rng.random() < 0.3:
        await world.run(commands.end_session(session_id, actor))


async def connect(
    world: World, rng: random.Random, session_id: str, actor: Principal, connection_id: str
) -> None:
    """One connection, as far along the lifecycle as the dice say."""
    await world.run(commands.open_connection(connection_id, session_id, node="n1", proposed=True))
    world.connections.append(connection_id)
    stop_at = rng.randint(1, 5)
    if stop_at >= 2:
        await world.run(commands.accept(connection_id))
    if stop_at >= 3:
        await world.run(commands.authenticate(connection_id, actor))
    if stop_at >= 4:
        try:
            superseded, _ = await world.run(
                commands.attach(connection_id, session_id, actor, node="n1", max_connections=2)
            )
        except DomainError:
            superseded = []  # an ended session refuses attaching; the connection stays
        for old in superseded:
            await world.run(commands.close_connection(old, code=4409, reason="superseded"))
    if stop_at >= 5 and world.store.get_connection(connection_id).state == "SERVICES_READY":  # type: ignore[union-attr]
        await world.run(commands.go_live(connection_id, 0))
        if rng.random() < 0.5:
            # A token refresh: an event of the connection that is not a state.
            renewed = Principal(actor.user_id, actor.roles, exp=2_000_000_000 + rng.randint(0, 999))
            await world.run(commands.refresh_token(connection_id, renewed))
    if rng.random() < 0.6:
        await world.run(
            commands.close_connection(connection_id, code=rng.choice((1000, 1001)), reason="bye")
        )


def rows(tables: Tables, world: World) -> tuple[dict[str, Any], dict[str, Any]]:
    return (
        {s: tables.session(s) for s in world.sessions},
        {c: tables.connection(c) for c in world.connections},
    )


def assert_rows_equal_views(tables: Tables, world: World) -> None:
    sessions, connections = rows(tables, world)
    views = world.session_views()
    for session_id, view in views.items():
        assert sessions[session_id] == view, session_id
    for connection_id, view in world.connection_views().items():
        assert connections[connection_id] == view, connection_id


async def test_projection_rows_equal_the_aggregates_views_after_random_histories(
    world: World,
) -> None:
    for seed in (1, 2):
        await write_history(world, seed)
    tables = world.tables()
    try:
        projector = make_projector(world.store, tables, batch_size=50)
        projector.setup()
        applied = projector.catch_up()
        assert applied == world.head()
        assert_rows_equal_views(tables, world)
        assert {s.name: s.lag for s in projector.status()} == {"sessions": 0, "connections": 0}

        # More history on top, applied incrementally, still agrees.
        await write_history(world, 3, sessions=3)
        projector.catch_up()
        assert_rows_equal_views(tables, world)
        assert projector.position == world.head()
        views = world.session_views()
        assert sum(v["message_count"] for v in views.values()) > 0
        assert any(t["state"] == "COMPLETED" for v in views.values() for t in v["tasks"])
        assert any(t["state"] == "FAILED" for v in views.values() for t in v["tasks"])
        assert any(v["state"] == "ENDED" for v in views.values())
        states = {v["state"] for v in world.connection_views().values()}
        assert {"CLOSED", "PROCESSING_READY"} <= states
        assert any(v["close_reason"] == "superseded" for v in world.connection_views().values())
    finally:
        tables.close()


def caught_up(world: World, tables: Tables, *, batch_size: int) -> Projector:
    """A projector of every projection, set up and caught up with the log."""
    projector = make_projector(world.store, tables, batch_size=batch_size)
    projector.setup()
    projector.catch_up()
    return projector


async def test_a_rebuild_from_zero_gives_the_same_rows(world: World) -> None:
    await write_history(world, 4)
    tables = world.tables()
    try:
        projector = caught_up(world, tables, batch_size=100)
        before = rows(tables, world)
        counts = projector.counts()

        progress: list[tuple[int, int]] = []
        applied = projector.rebuild(lambda position, head: progress.append((position, head)))
        assert applied == world.head()
        assert rows(tables, world) == before
        assert (
            projector.counts()
            == counts
            == {
                "sessions": len(world.sessions),
                "connections": len(world.connections),
            }
        )
        assert progress[-1] == (world.head(), world.head())
        assert_rows_equal_views(tables, world)

        # A batch of nothing would "rebuild" empty tables: refused up front.
        with pytest.raises(ValueError, match="batch_size"):
            make_projector(world.store, tables, batch_size=0)
        assert rows(tables, world) == before

        # A rebuild by a fresh projector (as `sessiond projections rebuild` does).
        again = make_projector(world.store, tables, batch_size=9)
        again.setup()
        again.rebuild()
        assert rows(tables, world) == before
    finally:
        tables.close()


async def test_the_rebuild_command_runs_without_the_cycle_collector_and_restores_it(
    world: World,
) -> None:
    """``sessiond projections rebuild`` folds fresh, acyclic dicts: the cycle
    collector is off while it runs (it walked them for a seventh of the
    time), on again after, and the rows are those of a live catch-up."""
    await write_history(world, 3)
    tables = world.tables()
    try:
        caught_up(world, tables, batch_size=50)
        before = rows(tables, world)

        projector = make_projector(world.store, tables, batch_size=REBUILD_BATCH)
        projector.setup()
        collecting: list[bool] = []
        assert gc.isenabled()
        applied = rebuild(projector, on_progress=lambda p, h: collecting.append(gc.isenabled()))
        assert applied == world.head()
        assert collecting and not any(collecting)
        assert gc.isenabled()
        assert rows(tables, world) == before

        # Left off by its caller, it stays off.
        gc.disable()
        try:
            rebuild(projector, names=["sessions"])
            assert not gc.isenabled()
        finally:
            gc.enable()
        assert rows(tables, world) == before
    finally:
        tables.close()


class CountingTables:
    """Wraps a Tables' ``write`` to count transactions and record the
    tracked position each one committed."""

    def __init__(self, tables: Tables) -> None:
        self.tables = tables
        self.transactions = 0
        self.committed: list[int] = []
        original = tables.write

        @contextmanager
        def write() -> Iterator[Any]:
            with original() as cursor:
                yield cursor
            self.transactions += 1
            self.committed.append(min(tables.positions().values()))

        tables.write = write  # type: ignore[method-assign]


async def test_a_rebuild_commits_once_per_batch_not_once_per_event(world: World) -> None:
    await write_history(world, 5)
    ids = [n.id for n in world.store.recorder.select_notifications(1, 100_000)]
    assert len(ids) > 30
    tables = world.tables()
    try:
        projector = make_projector(world.store, tables, batch_size=7)
        projector.setup()
        counting = CountingTables(tables)
        progress: list[int] = []
        projector.rebuild(lambda position, head: progress.append(position))

        batches = math.ceil(len(ids) / 7)
        boundaries = [ids[min(i + 6, len(ids) - 1)] for i in range(0, len(ids), 7)]
        # The truncate, then one per batch; on PostgreSQL the tracking rows are
        # taken before each read, so finding nothing more is one more (empty).
        final = [boundaries[-1]] if tables.lock_before_read else []
        assert counting.transactions == 1 + batches + len(final)
        assert counting.committed == [0, *boundaries, *final]
        assert progress[:batches] == boundaries
        assert_rows_equal_views(tables, world)
    finally:
        tables.close()


async def test_two_projectors_taking_turns_on_one_store_never_apply_an_event_twice(
    world: World,
) -> None:
    await write_history(world, 6)
    tables = world.tables()
    try:
        with shared_or_own(world, tables) as other_tables:
            first = make_projector(world.store, tables, batch_size=5)
            second = make_projector(world.store, other_tables, batch_size=5)
            first.setup()
            second.setup()
            # Both start at 0; they take turns, each one's position going stale.
            outcomes = []
            for _ in range(200):
                a, b = first.run_batch(), second.run_batch()
                outcomes += [a, b]
                if a == 0 and b == 0:
                    break
            assert -1 in outcomes, "the projectors never raced; the test proves nothing"
            assert first.position == second.position == world.head()
            assert_rows_equal_views(tables, world)
    finally:
        tables.close()


async def test_on_postgresql_the_projector_that_lost_the_race_reads_nothing(
    world: World,
) -> None:
    """Several nodes project one PostgreSQL database: each takes the tracking
    rows before it reads the log, so the node that finds the position moved
    has not read and decoded the batch the other one applied."""
    if world.config.kind != "postgres":
        pytest.skip("SQLite has one node; its projector reads before it locks")
    await write_history(world, 3)
    tables, other_tables = world.tables(), world.tables()
    reads: list[tuple[int, int]] = []

    def counted(start: int, limit: int) -> Any:
        reads.append((start, limit))
        return world.store.log_rows(start, limit)

    try:
        first = make_projector(world.store, tables)
        second = Projector(counted, world.store.ping, wire_from_row, other_tables)
        first.setup()
        second.setup()
        assert first.run_batch() > 0
        assert second.run_batch() == -1
        assert reads == []  # it found the position moved before reading anything
        assert second.position == first.position == world.head()
        assert second.run_batch() == 0 and reads == [(world.head() + 1, second.batch_size)]
    finally:
        tables.close()
        other_tables.close()


async def test_on_sqlite_a_batch_is_read_and_folded_without_the_write_lock(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """ADR 0021: SQLite has one write lock for the log and the tables, so
    the projector prepares a batch before taking it; the writer can commit
    while the projector decodes and folds."""
    if world.config.kind != "sqlite":
        pytest.skip("the write lock the writer and the projector share is SQLite's")
    await write_history(world, 9, sessions=3)
    tables = world.tables()
    assert world.config.path is not None
    bystander = sqlite3.connect(str(world.config.path), timeout=0, isolation_level=None)
    committed_meanwhile: list[int] = []
    try:
        projector = make_projector(world.store, tables)
        projector.setup()
        folded = projector._folded

        def fold_then_write_elsewhere(c: Any, batch: Any) -> Any:
            rows = folded(c, batch)
            # With timeout=0 this fails at once ("database is locked") if
            # anyone holds the write lock.
            bystander.execute("CREATE TABLE IF NOT EXISTS scratch (n INTEGER)")
            bystander.execute("INSERT INTO scratch VALUES (1)")
            committed_meanwhile.append(1)
            return rows

        monkeypatch.setattr(projector, "_folded", fold_then_write_elsewhere)
        assert projector.run_batch() > 0
        assert committed_meanwhile == [1]
        monkeypatch.undo()
        projector.catch_up()
        assert_rows_equal_views(tables, world)
    finally:
        bystander.close()
        tables.close()


async def test_a_batch_prepared_before_another_projector_moved_on_is_not_written(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Between preparing a batch and taking the write lock, another projector
    (another process, or a rebuild) may apply the same events: the tracking
    rows then no longer say where this one started, and it writes nothing."""
    if world.config.kind == "postgres":
        pytest.skip("on PostgreSQL the tracking rows are locked before the log is read")
    await write_history(world, 10, sessions=3)
    tables = world.tables()
    try:
        with shared_or_own(world, tables) as other_tables:
            late = make_projector(world.store, tables)
            early = make_projector(world.store, other_tables)
            late.setup()
            early.setup()
            write = tables.write
            overtaken: list[int] = []
            first_write = [True]

            @contextmanager
            def overtaken_first() -> Iterator[Any]:
                # (On memory:// the two share one Tables, so this runs for
                # the early projector too: it overtakes only once.)
                if first_write.pop() if first_write else False:
                    overtaken.append(early.run_batch())
                with write() as c:
                    yield c

            monkeypatch.setattr(tables, "write", overtaken_first)
            assert late.run_batch() == -1
            assert overtaken[0] > 0
            assert late.position == early.position == world.head()
            monkeypatch.undo()
            assert late.run_batch() == 0
            # Applied once: a second application would double every count.
            assert_rows_equal_views(tables, world)
    finally:
        tables.close()


async def test_two_projectors_running_at_once_keep_message_counts_right(world: World) -> None:
    await write_history(world, 7)
    tables = world.tables()
    try:
        with shared_or_own(world, tables) as other_tables:
            projectors = [
                make_projector(world.store, tables, batch_size=3),
                make_projector(world.store, other_tables, batch_size=4),
            ]
            for p in projectors:
                p.setup()
            start = threading.Barrier(2)
            errors: list[BaseException] = []

            def run(projector: Projector) -> None:
                try:
                    start.wait()
                    projector.catch_up()
                except BaseException as e:  # surfaced below
                    errors.append(e)

            threads = [threading.Thread(target=run, args=(p,)) for p in projectors]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)
            assert not errors, errors

            # Then both follow more writes, again at once.
            await write_history(world, 8, sessions=2)
            threads = [threading.Thread(target=p.catch_up) for p in projectors]
            for t in threads:
                t.start()
            for t in threads:
                t.join(60)

            views = world.session_views()
            for session_id, view in views.items():
                row = tables.session(session_id)
                assert row is not None
                assert row["message_count"] == view["message_count"], session_id
            assert_rows_equal_views(tables, world)
            assert min(tables.positions().values()) == world.head()
    finally:
        tables.close()


OPENED = {
    "connection_id": "c1",
    "position": 1,
    "type": "CONNECTING",
    "at": "2026-01-01T00:00:00.000000Z",
    "data": {"session_id": "s1", "node": "n1", "state": "CONNECTING", "proposed": True},
}


def test_an_unknown_connection_state_is_shown_as_recorded() -> None:
    row = fold_connection(None, OPENED)
    assert row is not None
    draining = {
        "connection_id": "c1",
        "position": 2,
        "type": "DRAINING",
        "at": "2026-01-01T00:00:01.000000Z",
        "data": {"transition": "drain", "state": "DRAINING", "details": {"deadline": 30}},
    }
    row = fold_connection(row, draining)
    assert row is not None
    assert (row["state"], row["position"], row["closed_at"]) == ("DRAINING", 2, None)
    closed = {
        **draining,
        "position": 3,
        "type": "CLOSED",
        "data": {
            "transition": "close",
            "state": "CLOSED",
            "details": {"code": 1001, "reason": "x"},
        },
    }
    row = fold_connection(row, closed)
    assert row is not None
    assert (row["state"], row["close_code"], row["close_reason"]) == ("CLOSED", 1001, "x")


def test_a_connection_event_that_is_not_a_transition_leaves_its_state() -> None:
    row = fold_connection(None, OPENED)
    assert row is not None
    others = [
        ("TokenRefreshed", {"user_id": "alice", "roles": ["user"], "exp": 2_000_000_000}),
        ("TransitionRefused", {"transition": "attach", "state": "CONNECTING", "reason": "no"}),
        ("Paused", {"details": {"code": 4000}}),
    ]
    for position, (kind, data) in enumerate(others, start=2):
        before = row
        row = fold_connection(row, {**OPENED, "position": position, "type": kind, "data": data})
        assert row == {**before, "position": position}, kind


def test_an_unknown_session_event_type_only_moves_position_and_updated_at() -> None:
    created = {
        "session_id": "s1",
        "position": 1,
        "type": "SessionCreated",
        "at": "2026-01-01T00:00:00.000000Z",
        "data": {"session_id": "s1", "owner": "alice", "metadata": {}},
    }
    row = fold_session(None, created)
    assert row is not None
    later = fold_session(
        row,
        {
            "session_id": "s1",
            "position": 2,
            "type": "SessionArchived",
            "at": "2026-01-02T00:00:00.000000Z",
            "data": {"by": "ops"},
        },
    )
    assert later == {**row, "position": 2, "updated_at": "2026-01-02T00:00:00.000000Z"}


async def test_a_log_with_a_state_and_an_event_type_this_code_does_not_know_still_projects(
    world: World,
) -> None:
    """A newer node wrote DRAINING (a state this machine lacks) and an event
    class this code cannot import: the projector shows the one as recorded,
    skips the other, and keeps going."""
    actor = person("alice")
    await world.run(commands.create_session("drain-s", actor, None))
    world.sessions.append("drain-s")
    await world.run(commands.open_connection("drain-c", "drain-s", node="n1", proposed=True))
    world.connections.append("drain-c")
    for command in (
        commands.accept("drain-c"),
        commands.authenticate("drain-c", actor),
        commands.attach("drain-c", "drain-s", actor, node="n1", max_connections=1),
        commands.go_live("drain-c", 2),
    ):
        await world.run(command)

    def drain(uow: UnitOfWork) -> None:
        connection = uow.connection("drain-c")
        assert connection is not None
        connection.trigger_event(
            Connection.Transitioned,
            transition="drain",
            state="DRAINING",
            details={"deadline": 30},
            timestamp=utcnow(),
        )

    await world.run(Command("drain", drain))
    # An event of a class that does not exist here, in its own stream.
    world.store.recorder.insert_events(
        [
            StoredEvent(
                originator_id=session_stream("from-the-future"),
                originator_version=1,
                topic="sessiond_v9.domain:Session.Teleported",
                state=b'{"timestamp": "2026-01-01T00:00:00+00:00"}',
            )
        ]
    )
    await world.run(
        commands.record_message("drain-s", actor, message_id="m", role="user", content="after")
    )

    tables = world.tables()
    try:
        projector = make_projector(world.store, tables, batch_size=4)
        projector.setup()
        projector.catch_up()
        assert projector.position == world.head()
        row = tables.connection("drain-c")
        assert row is not None
        assert row["state"] == "DRAINING"
        assert row == wire_view(world.store.get_connection("drain-c").view())  # type: ignore[union-attr]
        assert tables.session("from-the-future") is None
        assert_rows_equal_views(tables, world)
        assert tables.session("drain-s")["message_count"] == 1  # type: ignore[index]
    finally:
        tables.close()


async def test_the_folds_agree_with_the_log_event_by_event(world: World) -> None:
    """Folding a session's own events one at a time gives, after each, the
    aggregate's view at that version (the audit's ``state?at=N``)."""
    await write_history(world, 9, sessions=2)
    for session_id in world.sessions:
        row: dict[str, Any] | None = None
        for event in world.store.stream_events(session_stream(session_id)):
            before = copy.deepcopy(row)
            folded = fold_session(row, wire_event(event))
            assert row == before, "fold_session must leave its input as it was"
            # The projector's in-place fold gives the same view.
            assert apply_session(copy.deepcopy(row), wire_event(event)) == folded
            row = folded
            past = world.store.get_session(session_id, version=event.originator_version)
            assert past is not None
            assert row == wire_view(past.view()), (session_id, event.originator_version)
    for connection_id in world.connections[:5]:
        row = None
        for event in world.store.stream_events(connection_stream(connection_id)):
            row = fold_connection(row, wire_event(event))
        assert row == wire_view(world.store.get_connection(connection_id).view())  # type: ignore[union-attr]


async def test_a_projector_whose_tables_were_reset_under_it_applies_everything_again(
    world: World,
) -> None:
    """A `projections rebuild` elsewhere truncated the tables and died before
    its first batch: a live projector with nothing new to read notices its
    position is stale and rebuilds the rows itself."""
    await write_history(world, 10, sessions=3)
    tables = world.tables()
    try:
        with shared_or_own(world, tables) as other_tables:
            live = make_projector(world.store, tables, batch_size=20)
            live.setup()
            live.catch_up()
            interrupted = make_projector(world.store, other_tables, batch_size=20)
            interrupted.setup()
            with other_tables.write() as c:  # the first step of its rebuild, and no more
                other_tables.lock_positions(c)
                reset(other_tables, c, PROJECTIONS)
            assert interrupted.counts() == {"sessions": 0, "connections": 0}

            assert live.catch_up() == world.head()
            assert live.position == world.head()
            assert_rows_equal_views(tables, world)
    finally:
        tables.close()


async def test_one_projection_rebuilt_beside_a_live_projector_leaves_the_other_alone(
    world: World,
) -> None:
    """Each projection has its own position: a rebuild of connections alone,
    taking turns with a live projector, has both find the connections'
    position moved under them, and neither touches a sessions row (a mark
    in their ``state`` column, which a write would replace, stays)."""
    await write_history(world, 11, sessions=4)
    tables = world.tables()
    try:
        with shared_or_own(world, tables) as other_tables:
            live = make_projector(world.store, tables, batch_size=5)
            live.setup()
            live.catch_up()
            with tables.write() as c:
                c.execute("UPDATE sessiond_sessions SET state = 'MARK'")
            rebuild = make_projector(world.store, other_tables, batch_size=5)
            rebuild.setup()
            turns: list[int] = []
            applied = rebuild.rebuild(
                lambda position, head: turns.append(live.run_batch()), names=["connections"]
            )
            assert applied > 0 and -1 in turns
            live.catch_up()
            assert (
                live.positions
                == rebuild.positions
                == dict.fromkeys(("sessions", "connections"), world.head())
            )
            assert_rows_equal_views(tables, world)
            with tables.read() as c:
                c.execute("SELECT COUNT(*) FROM sessiond_sessions WHERE state <> 'MARK'")
                assert c.fetchone()[0] == 0
    finally:
        tables.close()
