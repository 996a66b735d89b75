"""The writer thread on real stores: group commit, no lost updates, conflicts
retried and never surfaced, errors kept to the command that caused them.

To put commands in one batch without relying on timing, a test *holds* the
writer: a first command blocks the writer thread on an Event, the test queues
its commands, then releases it; the writer then takes everything waiting
(up to ``max_batch``) as one batch.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import pytest

from domain.errors import (
    ConnectionIdTaken,
    InvalidCommand,
    InvalidTransition,
    SessionNotFound,
    SessionOwnedByOther,
    TaskNotFound,
)
from domain.ids import connection_stream, session_stream
from domain.session import Session
from service.application import commands
from service.application.auth import Principal
from service.application.writer import (
    Command,
    CommandFailed,
    StoreUnavailable,
    UnitOfWork,
    Writer,
)
from service.storage.store import SessiondApplication, open_store, parse_store_url

ALICE = Principal("alice", frozenset({"user"}))
BOB = Principal("bob", frozenset({"user"}))
MAX_BATCH = 64
WAIT = 60.0  # a guard against hanging forever, never an assertion about speed


class Running:
    """An application and its writer, recording what the writer published."""

    def __init__(self, store: SessiondApplication, *, shared: bool = False) -> None:
        self.store = store
        self.published: list[Any] = []
        self.writer = Writer(
            store, on_commit=self.published.extend, max_batch=MAX_BATCH, shared=shared
        )

    def types(self, stream_id: str) -> list[str]:
        return [e.type_name() for e in self.store.stream_events(stream_id)]

    def positions(self, stream_id: str) -> list[int]:
        return [e.originator_version for e in self.store.stream_events(stream_id)]

    async def stop(self) -> None:
        await self.writer.stop()
        self.store.close()


async def start(url: str, *, shared: bool = False) -> Running:
    running = Running(open_store(parse_store_url(url)), shared=shared)
    running.writer.start(asyncio.get_running_loop())
    return running


@pytest.fixture
async def running(store_url: str) -> AsyncIterator[Running]:
    r = await start(store_url)
    yield r
    await r.stop()


@pytest.fixture(params=["sqlite", "postgres"])
def shared_store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A store two applications can share (memory:// is private to one)."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'shared.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
async def two_nodes(shared_store_url: str) -> AsyncIterator[tuple[Running, Running]]:
    first = await start(shared_store_url, shared=True)
    second = await start(shared_store_url, shared=True)
    yield first, second
    for r in (first, second):
        await r.stop()


@asynccontextmanager
async def held(writer: Writer) -> AsyncIterator[None]:
    """Keep the writer thread busy until the block ends."""
    started, release = threading.Event(), threading.Event()

    def hold(uow: UnitOfWork) -> None:
        started.set()
        release.wait(WAIT)

    blocker = asyncio.ensure_future(writer.execute(Command("hold", hold)))
    assert await asyncio.to_thread(started.wait, WAIT), "the writer never ran"
    try:
        yield
    finally:
        release.set()
        await blocker


async def queue(writer: Writer, *cmds: Command[Any]) -> list[asyncio.Future[Any]]:
    """Queue commands (in this order) and return their futures, without waiting."""
    futures = [asyncio.ensure_future(writer.execute(c)) for c in cmds]
    await asyncio.sleep(0)  # each task runs up to its await: every command is queued
    return futures


async def in_one_batch(writer: Writer, *cmds: Command[Any]) -> list[Any]:
    """Run the commands as one batch; their results or exceptions, in order."""
    assert len(cmds) < MAX_BATCH
    async with held(writer):
        futures = await queue(writer, *cmds)
    return list(await asyncio.gather(*futures, return_exceptions=True))


def message(session_id: str, message_id: str, actor: Principal = ALICE) -> Command[Any]:
    return commands.record_message(
        session_id, actor, message_id=message_id, role="user", content=message_id
    )


async def walk_to_authenticated(w: Writer, connection_id: str, session_id: str) -> None:
    await w.execute(commands.open_connection(connection_id, session_id, node="n", proposed=True))
    await w.execute(commands.accept(connection_id))
    await w.execute(commands.authenticate(connection_id, ALICE))


async def walk_to_live(w: Writer, connection_id: str, session_id: str) -> list[str]:
    await walk_to_authenticated(w, connection_id, session_id)
    superseded, position = await w.execute(
        commands.attach(connection_id, session_id, ALICE, node="n", max_connections=1)
    )
    await w.execute(commands.go_live(connection_id, position))
    return list(superseded)


# --- no lost updates, one session, group commit ------------------------------------


async def test_two_hundred_concurrent_messages_on_one_session_lose_no_update(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("hot", ALICE, None))
    results = await asyncio.gather(*(w.execute(message("hot", f"m{i}")) for i in range(200)))

    assert all(created for _, created in results)
    assert sorted(p for p, _ in results) == list(range(2, 202))
    assert running.positions(session_stream("hot")) == list(range(1, 202))
    recorded = {
        e.payload()["message_id"]: e.originator_version
        for e in running.store.stream_events(session_stream("hot"), after=1)
    }
    assert recorded == {f"m{i}": p for i, (p, _) in enumerate(results)}
    session = running.store.get_session("hot")
    assert session is not None and session.message_count == 200 and session.position == 201


async def test_commands_waiting_together_are_committed_in_one_transaction_per_batch(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("grouped", ALICE, None))
    transactions_before = w.transactions
    async with held(w):
        futures = await queue(w, *(message("grouped", f"m{i}") for i in range(200)))
    results = await asyncio.gather(*futures)

    # 200 waiting commands, at most 64 a batch: four commits, in queue order.
    assert w.transactions - transactions_before == 4
    assert [p for p, _ in results] == list(range(2, 202))
    assert running.positions(session_stream("grouped")) == list(range(1, 202))


async def commit_sizes(store_url: str, max_batch: int, in_flight: int) -> list[int]:
    """Hand ``in_flight`` messages (one session each) to an idle writer in one
    turn of the event loop, so each is in flight, and return how many events
    each transaction it made held."""
    sizes: list[int] = []
    store = open_store(parse_store_url(store_url))
    w = Writer(
        store,
        on_commit=lambda events: None,
        max_batch=max_batch,
        on_saved=lambda events, began, ended: sizes.append(len(events)),
    )
    w.start(asyncio.get_running_loop())
    try:
        sessions = [f"flight-{i}" for i in range(in_flight)]
        await asyncio.gather(
            *(w.execute(commands.create_session(s, ALICE, None)) for s in sessions)
        )
        assert w.in_flight == 0, "every command answered is out of flight"
        sizes.clear()
        futures = await queue(w, *(message(s, "m") for s in sessions))
        assert w.in_flight == in_flight
        results = await asyncio.gather(*futures)
        assert [p for p, _ in results] == [2] * in_flight
        assert w.in_flight == 0
        assert sum(len(store.stream_events(session_stream(s))) for s in sessions) == 2 * in_flight
    finally:
        await w.stop()
        store.close()
    return sizes


@pytest.mark.parametrize(
    ("max_batch", "in_flight", "sizes"),
    [
        # Every command in flight waiting: half the cap first, so the event
        # loop answers it while the rest is committed.
        (256, 256, [128, 128]),
        (256, 200, [128, 72]),
        # More in flight than one batch holds: full batches, the rest waits.
        (256, 300, [256, 44]),
        # No more than half the cap: one batch, as ever.
        (256, 128, [128]),
        # A half under MIN_HALF is not worth a second commit.
        (100, 100, [100]),
    ],
)
async def test_a_batch_of_every_command_in_flight_takes_half_the_cap(
    store_url: str, max_batch: int, in_flight: int, sizes: list[int]
) -> None:
    assert await commit_sizes(store_url, max_batch, in_flight) == sizes


async def test_forty_concurrent_creates_of_one_id_record_one_session(running: Running) -> None:
    results = await asyncio.gather(
        *(
            running.writer.execute(commands.create_session("once", ALICE, {"n": 1}))
            for _ in range(40)
        )
    )
    assert sorted(created for _, created in results) == [False] * 39 + [True]
    assert {view["session_id"] for view, _ in results} == {"once"}
    assert {view["owner"] for view, _ in results} == {"alice"}
    assert running.types(session_stream("once")) == ["SessionCreated"]


async def test_forty_creates_of_one_id_in_one_batch_record_one_session(running: Running) -> None:
    results = await in_one_batch(
        running.writer, *(commands.create_session("batched", ALICE, None) for _ in range(40))
    )
    assert [created for _, created in results] == [True] + [False] * 39
    assert running.types(session_stream("batched")) == ["SessionCreated"]


async def test_creating_another_users_session_is_refused_and_records_nothing(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("mine", ALICE, None))
    with pytest.raises(SessionOwnedByOther):
        await w.execute(commands.create_session("mine", BOB, None))
    assert running.types(session_stream("mine")) == ["SessionCreated"]


async def test_the_client_id_is_what_every_result_and_event_carries(running: Running) -> None:
    w = running.writer
    sid, cid = "session-1735095123-abc123", "sess_mgpresmh_6655kc3b0"
    view, created = await w.execute(commands.create_session(sid, ALICE, None))
    assert created and view["session_id"] == sid
    await walk_to_live(w, cid, sid)
    assert {e.originator_id for e in running.published} == {
        session_stream(sid),
        connection_stream(cid),
    }
    connection = running.store.get_connection(cid)
    assert connection is not None and connection.session_id == sid
    session = running.store.get_session(sid)
    assert session is not None and session.connections == [cid]


# --- errors stay with the command that caused them ---------------------------------


async def test_domain_errors_in_a_batch_leave_the_other_commands_untouched(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("mixed", ALICE, None))
    await w.execute(commands.open_connection("c-mixed", "mixed", node="n", proposed=True))
    transactions_before = w.transactions

    results = await in_one_batch(
        w,
        message("mixed", "a"),
        message("missing", "b"),
        commands.record_message("mixed", ALICE, message_id="x", role="robot", content="x"),
        commands.report_progress("mixed", ALICE, task_id="nope", done=1, total=None, note=None),
        commands.go_live("c-mixed", 0),
        message("mixed", "c"),
    )

    assert results[0] == (2, True)
    assert isinstance(results[1], SessionNotFound)
    assert isinstance(results[2], InvalidCommand)
    assert isinstance(results[3], TaskNotFound)
    assert isinstance(results[4], InvalidTransition)
    assert results[5] == (3, True)
    assert w.transactions - transactions_before == 1, "one batch, one commit"
    assert [e.payload().get("message_id") for e in running.store.stream_events("session:mixed")][
        1:
    ] == ["a", "c"]
    assert running.types(connection_stream("c-mixed")) == ["CONNECTING", "TransitionRefused"]
    assert running.store.get_session("missing") is None


async def test_an_unexpected_exception_in_a_batch_commits_none_of_its_half_made_events(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("buggy", ALICE, None))

    def explode(uow: UnitOfWork) -> None:
        session = uow.session("buggy")
        assert session is not None
        session.record_message(message_id="half", role="user", content="x", user_id="alice")
        raise RuntimeError("a bug after recording")

    results = await in_one_batch(
        w, message("buggy", "a"), Command("explode", explode), message("buggy", "c")
    )

    assert isinstance(results[1], CommandFailed) and "explode" in results[1].message
    assert results[0] == (2, True) and results[2] == (3, True)
    ids = [e.payload().get("message_id") for e in running.store.stream_events("session:buggy")]
    assert ids == [None, "a", "c"], "a failed command's events were committed"
    # The writer's memory of the session is the store's, not the half-made one.
    assert await w.execute(message("buggy", "d")) == (4, True)
    assert running.positions(session_stream("buggy")) == [1, 2, 3, 4]


async def test_a_refused_transition_is_recorded_even_though_the_command_raised(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.open_connection("c-ref", "s", node="n", proposed=True))
    with pytest.raises(InvalidTransition) as refused:
        await w.execute(commands.go_live("c-ref", 0))
    assert (refused.value.state, refused.value.transition) == ("CONNECTING", "go_live")

    assert running.types(connection_stream("c-ref")) == ["CONNECTING", "TransitionRefused"]
    assert [e.type_name() for e in running.published] == ["CONNECTING", "TransitionRefused"]
    connection = running.store.get_connection("c-ref")
    assert connection is not None and connection.state == "CONNECTING"
    assert connection.refused == 1
    # The refusal changed nothing: the walk goes on from where it was.
    assert await w.execute(commands.accept("c-ref")) == "ACCEPTED"


async def test_a_refused_attach_neither_attaches_nor_supersedes_nor_creates(
    running: Running,
) -> None:
    w = running.writer
    # The live tab of session "tabs".
    await w.execute(commands.create_session("tabs", ALICE, None))
    assert await walk_to_live(w, "tab-live", "tabs") == []
    # A second socket authenticates, then closes (the client went away, or the
    # server shut down) before its attach command runs.
    await walk_to_authenticated(w, "tab-gone", "tabs")
    assert await w.execute(commands.close_connection("tab-gone", code=1001, reason="shutdown"))
    position_before = running.positions(session_stream("tabs"))[-1]

    with pytest.raises(InvalidTransition):
        await w.execute(commands.attach("tab-gone", "tabs", ALICE, node="n", max_connections=1))

    session = running.store.get_session("tabs")
    assert session is not None and session.connections == ["tab-live"]
    assert running.positions(session_stream("tabs"))[-1] == position_before
    assert running.types(connection_stream("tab-gone"))[-2:] == ["CLOSED", "TransitionRefused"]

    # The same for a session that does not exist yet: it is not created.
    await w.execute(commands.open_connection("early", "not-yet", node="n", proposed=True))
    with pytest.raises(InvalidTransition):
        await w.execute(commands.attach("early", "not-yet", ALICE, node="n", max_connections=1))
    assert running.store.get_session("not-yet") is None


async def test_attaching_a_new_tab_supersedes_the_old_one_in_one_commit(
    running: Running,
) -> None:
    w = running.writer
    assert await walk_to_live(w, "old-tab", "reload") == []
    transactions_before = w.transactions
    await walk_to_authenticated(w, "new-tab", "reload")
    superseded, position = await w.execute(
        commands.attach("new-tab", "reload", ALICE, node="n", max_connections=1)
    )
    assert superseded == ["old-tab"]
    assert w.transactions - transactions_before == 4  # open, accept, authenticate, attach
    types = running.types(session_stream("reload"))
    assert types[position:] == ["ConnectionAttached", "ConnectionDetached"]
    session = running.store.get_session("reload")
    assert session is not None and session.connections == ["new-tab"]


async def test_chained_transitions_are_each_their_own_event_in_one_commit(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.open_connection("c-chain", "s-chain", node="n", proposed=True))
    transactions_before = w.transactions
    outcomes = await w.execute(
        commands.chain(
            commands.accept("c-chain"),
            commands.authenticate("c-chain", ALICE),
            commands.attach("c-chain", "s-chain", ALICE, node="n", max_connections=1),
        )
    )
    assert w.transactions - transactions_before == 1
    assert outcomes == [(True, "ACCEPTED"), (True, "AUTHENTICATED"), (True, ([], 0))]
    assert running.types(connection_stream("c-chain")) == [
        "CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY",
    ]  # fmt: skip
    assert running.positions(connection_stream("c-chain")) == [1, 2, 3, 4]


async def test_a_chain_stops_at_its_first_refusal_keeping_what_came_before(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("s-alice", ALICE, None))
    await w.execute(commands.open_connection("c-bob", "s-alice", node="n", proposed=True))
    outcomes = await w.execute(
        commands.chain(
            commands.accept("c-bob"),
            commands.authenticate("c-bob", BOB),
            commands.attach("c-bob", "s-alice", BOB, node="n", max_connections=1),
            commands.go_live("c-bob", 0),
        )
    )
    assert [ok for ok, _ in outcomes] == [True, True, False]  # go_live never ran
    assert isinstance(outcomes[2][1], commands.Forbidden)
    assert running.types(connection_stream("c-bob")) == ["CONNECTING", "ACCEPTED", "AUTHENTICATED"]
    assert running.types(session_stream("s-alice")) == ["SessionCreated"]


async def test_a_closed_connection_leaves_the_writers_cache_and_still_answers(
    running: Running,
) -> None:
    w = running.writer
    await walk_to_live(w, "c-gone", "s-gone")
    assert w.cache.holds(connection_stream("c-gone"))
    assert await w.execute(commands.close_connection("c-gone", code=1000, reason="normal"))
    assert not w.cache.holds(connection_stream("c-gone"))
    assert w.cache.holds(session_stream("s-gone"))
    # Read back from the store when asked again: closing twice records nothing,
    # and a transition after CLOSED is refused and recorded.
    assert not await w.execute(commands.close_connection("c-gone", code=1000, reason="again"))
    with pytest.raises(InvalidTransition):
        await w.execute(commands.go_live("c-gone", 0))
    assert running.types(connection_stream("c-gone"))[-2:] == ["CLOSED", "TransitionRefused"]


async def test_closing_a_closed_connection_records_nothing(running: Running) -> None:
    w = running.writer
    await walk_to_live(w, "c-close", "s-close")
    assert await w.execute(commands.close_connection("c-close", code=1000, reason="normal"))
    before = running.positions(connection_stream("c-close"))
    assert not await w.execute(commands.close_connection("c-close", code=1001, reason="again"))
    assert running.positions(connection_stream("c-close")) == before
    assert running.types(session_stream("s-close"))[-1] == "ConnectionDetached"
    connection = running.store.get_connection("c-close")
    assert connection is not None and (connection.close_code, connection.close_reason) == (
        1000,
        "normal",
    )


async def test_a_connection_id_can_be_recorded_only_once(running: Running) -> None:
    w = running.writer
    await w.execute(commands.open_connection("dup", "s", node="n", proposed=True))
    with pytest.raises(ConnectionIdTaken, match="already recorded"):
        await w.execute(commands.open_connection("dup", "s", node="n", proposed=True))
    assert running.types(connection_stream("dup")) == ["CONNECTING"]


async def test_whether_a_connection_id_is_recorded_is_answered_by_the_writer(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    w = running.writer
    reads: list[str] = []
    real_exists = running.store.stream_exists

    def counted_exists(stream_id: str) -> bool:
        reads.append(stream_id)
        return real_exists(stream_id)

    monkeypatch.setattr(running.store, "stream_exists", counted_exists)
    # Unknown: one read says so, and nothing is recorded by asking.
    assert await w.execute(commands.connection_recorded("asked")) is False
    assert reads == [connection_stream("asked")]
    assert running.types(connection_stream("asked")) == []
    # Recorded and held: answered without a read.
    await w.execute(commands.open_connection("asked", "s-asked", node="n", proposed=True))
    reads.clear()
    assert await w.execute(commands.connection_recorded("asked")) is True
    assert reads == []
    # Closed, so no longer held: still recorded, found by a read.
    await w.execute(commands.close_connection("asked", code=1000, reason="normal"))
    assert not w.cache.holds(connection_stream("asked"))
    assert await w.execute(commands.connection_recorded("asked")) is True
    assert reads == [connection_stream("asked")]
    # Asked in the batch that creates it: not recorded yet, never guessed.
    results = await in_one_batch(
        w,
        commands.open_connection("same-batch", "s-asked", node="n", proposed=True),
        commands.connection_recorded("same-batch"),
    )
    assert results == ["CONNECTING", False]


async def test_a_connection_id_recorded_by_another_node_is_recorded_for_this_one(
    two_nodes: tuple[Running, Running],
) -> None:
    first, second = two_nodes
    assert await first.writer.execute(commands.connection_recorded("elsewhere")) is False
    await second.writer.execute(commands.open_connection("elsewhere", "s", node="b", proposed=True))
    assert await first.writer.execute(commands.connection_recorded("elsewhere")) is True


async def test_committed_events_are_published_after_the_commit_in_order(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("pub", ALICE, None))
    assert [e.type_name() for e in running.published] == ["SessionCreated"]
    await in_one_batch(w, message("pub", "a"), message("pub", "b"))
    assert [(e.type_name(), e.originator_version) for e in running.published] == [
        ("SessionCreated", 1),
        ("MessageRecorded", 2),
        ("MessageRecorded", 3),
    ]


async def test_each_commit_is_told_to_the_observer_and_an_observer_that_fails_changes_nothing(
    store_url: str,
) -> None:
    seen: list[tuple[list[Any], float, float]] = []
    published: list[list[Any]] = []

    def observe(events: list[Any], began: float, ended: float) -> None:
        seen.append((events, began, ended))
        raise RuntimeError("a broken observer")

    store = open_store(parse_store_url(store_url))
    w = Writer(store, on_commit=published.append, max_batch=MAX_BATCH, on_saved=observe)
    w.start(asyncio.get_running_loop())
    try:
        await w.execute(commands.create_session("observed", ALICE, None))
        answers = await in_one_batch(w, message("observed", "a"), message("observed", "b"))
    finally:
        await w.stop()
        store.close()
    assert [len(events) for events, _, _ in seen] == [1, 2]
    assert all(began <= ended for _, began, ended in seen)
    # The observer gets the very list on_commit gets, so the two can be paired.
    assert [events for events, _, _ in seen] == published
    assert all(a is b for (a, _, _), b in zip(seen, published, strict=True))
    assert w.transactions == 2 and w.events_appended == 3
    assert not [a for a in answers if isinstance(a, BaseException)], answers


# --- conflicts with another writer --------------------------------------------------


async def test_a_stale_writer_retries_its_conflict_and_never_surfaces_it(
    two_nodes: tuple[Running, Running],
) -> None:
    first, second = two_nodes
    await first.writer.execute(commands.create_session("shared", ALICE, None))
    await first.writer.execute(message("shared", "m-first-1"))  # first now holds version 2
    assert await second.writer.execute(message("shared", "m-second")) == (3, True)

    # first's remembered session is at version 2; the store is at 3.
    assert await first.writer.execute(message("shared", "m-first-2")) == (4, True)
    assert first.writer.conflicts == 1
    assert second.writer.conflicts == 0
    assert first.positions(session_stream("shared")) == [1, 2, 3, 4]
    ids = [e.payload().get("message_id") for e in first.store.stream_events("session:shared")]
    assert ids == [None, "m-first-1", "m-second", "m-first-2"]
    # An idempotent repeat after the retry still finds the first position.
    assert await first.writer.execute(message("shared", "m-second")) == (3, False)


async def test_a_refusal_made_on_what_another_node_has_changed_is_judged_again(
    two_nodes: tuple[Running, Running],
) -> None:
    """A command that records nothing cannot conflict: a writer holding the
    session from before another node changed it would refuse from that (a
    task not found, a connection not attached) and no save would tell it.
    It reads again and judges on what is recorded."""
    first, second = two_nodes
    await first.writer.execute(commands.create_session("elsewhere", ALICE, None))
    position, new = await second.writer.execute(
        commands.start_task("elsewhere", ALICE, task_id="t-1", name="crawl", total=2)
    )
    assert (position, new) == (2, True)
    # first's session is at version 1, without the task.
    progress = commands.report_progress(
        "elsewhere", ALICE, task_id="t-1", done=1, total=None, note=None
    )
    assert await first.writer.execute(progress) == 3
    assert first.writer.stale_reads + first.writer.conflicts >= 1
    # And a command that records nothing answers from what is recorded.
    await second.writer.execute(message("elsewhere", "m-elsewhere"))
    view, created = await first.writer.execute(commands.create_session("elsewhere", ALICE, None))
    assert (created, view["position"], view["message_count"]) == (False, 4, 1)


@pytest.mark.parametrize("shared", [True, False], ids=["shared-store", "one-node"])
async def test_a_store_that_goes_during_the_commit_is_503_saying_when_it_may_be_recorded(
    shared_store_url: str, shared: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A commit cut off on a server's store may have landed with its answer
    lost: the 503 says so, and that a retry with the same ID is safe. An
    embedded store's failed commit is rolled back, so there it says nothing
    of the kind."""
    from eventsourcing.persistence import OperationalError

    node = await start(shared_store_url, shared=shared)
    try:
        await node.writer.execute(commands.create_session("cut", ALICE, None))

        def cut_off(*aggregates: Any) -> Any:
            raise OperationalError("server closed the connection unexpectedly")

        monkeypatch.setattr(node.store, "record_aggregates", cut_off)
        with pytest.raises(StoreUnavailable) as refused:
            await node.writer.execute(message("cut", "m-cut"))
        said = str(refused.value)
        assert said.startswith("store unavailable: server closed the connection")
        assert ("may have been recorded" in said) is shared
        assert ("same message_id" in said) is shared
    finally:
        monkeypatch.undo()
        await node.stop()


async def test_a_conflict_retries_the_whole_batch_without_doubling_its_other_writes(
    two_nodes: tuple[Running, Running],
) -> None:
    first, second = two_nodes
    await first.writer.execute(commands.create_session("contended", ALICE, None))
    await first.writer.execute(commands.create_session("calm", ALICE, None))
    await second.writer.execute(message("contended", "from-second"))

    results = await in_one_batch(
        first.writer,
        message("calm", "c1"),
        message("contended", "from-first"),
        commands.create_session("born-in-batch", ALICE, None),
        message("calm", "c2"),
    )

    assert first.writer.conflicts == 1
    assert results[0] == (2, True) and results[3] == (3, True)
    assert results[1] == (3, True)
    assert results[2][1] is True
    assert first.types(session_stream("calm")) == [
        "SessionCreated",
        "MessageRecorded",
        "MessageRecorded",
    ]
    assert first.types(session_stream("born-in-batch")) == ["SessionCreated"]
    assert first.positions(session_stream("contended")) == [1, 2, 3]


# --- IDs taken to be new (docs/adr/0018) -------------------------------------------


async def test_a_new_id_is_created_without_reading_the_store(
    running: Running, monkeypatch: pytest.MonkeyPatch
) -> None:
    reads: list[str] = []
    real_get = running.store.repository.get

    def counted_get(stream_id: str, *args: Any, **kwargs: Any) -> Any:
        reads.append(stream_id)
        return real_get(stream_id, *args, **kwargs)

    monkeypatch.setattr(running.store.repository, "get", counted_get)
    await running.writer.execute(
        commands.open_connection("tab-1", "guessed", node="n", proposed=True)
    )
    await running.writer.execute(commands.create_session("guessed", ALICE, None))
    assert reads == []
    assert running.writer.wrong_guesses == 0
    assert running.types(connection_stream("tab-1")) == ["CONNECTING"]
    assert running.types(session_stream("guessed")) == ["SessionCreated"]


async def test_an_id_recorded_by_another_node_is_refused_despite_the_guess(
    two_nodes: tuple[Running, Running],
) -> None:
    first, second = two_nodes
    await second.writer.execute(commands.open_connection("tab-taken", "s", node="b", proposed=True))
    results = await in_one_batch(
        first.writer,
        commands.create_session("bystander", ALICE, None),
        commands.open_connection("tab-taken", "s", node="a", proposed=True),
    )
    assert isinstance(results[1], ConnectionIdTaken)
    assert results[0][1] is True
    assert first.writer.wrong_guesses == 1 and first.writer.conflicts == 0
    # Nothing of the wrong guess reached the log; the bystander once, intact.
    assert first.types(connection_stream("tab-taken")) == ["CONNECTING"]
    assert [e.node for e in first.store.stream_events(connection_stream("tab-taken"))] == ["b"]
    assert first.types(session_stream("bystander")) == ["SessionCreated"]


async def test_a_session_created_elsewhere_is_attached_to_and_its_owner_checked(
    two_nodes: tuple[Running, Running],
) -> None:
    first, second = two_nodes
    await second.writer.execute(commands.create_session("elsewhere", BOB, None))
    await second.writer.execute(message("elsewhere", "m1", BOB))
    # POST /v1/sessions on the other node: the same session, not a new one.
    view, created = await first.writer.execute(commands.create_session("elsewhere", BOB, None))
    assert created is False and view["position"] == 2
    # Attaching there as its owner continues its log; as another user, 4403.
    await walk_to_authenticated(first.writer, "tab-bob", "elsewhere")
    superseded, before = await first.writer.execute(
        commands.attach("tab-bob", "elsewhere", BOB, node="a", max_connections=8)
    )
    assert (superseded, before) == ([], 2)
    await walk_to_authenticated(first.writer, "tab-alice", "elsewhere")
    with pytest.raises(commands.Forbidden):
        await first.writer.execute(
            commands.attach("tab-alice", "elsewhere", ALICE, node="a", max_connections=8)
        )
    assert first.positions(session_stream("elsewhere")) == [1, 2, 3]
    assert first.writer.wrong_guesses == 1
    assert first.writer.conflicts == 0


async def test_two_writers_interleaving_on_one_session_lose_nothing(
    two_nodes: tuple[Running, Running],
) -> None:
    first, second = two_nodes
    await first.writer.execute(commands.create_session("shared", ALICE, None))
    for i in range(10):
        writer = first.writer if i % 2 == 0 else second.writer
        await writer.execute(message("shared", f"m{i}"))
    results = await asyncio.gather(
        *(
            (first.writer if i % 2 else second.writer).execute(message("shared", f"x{i}"))
            for i in range(40)
        )
    )

    assert all(created for _, created in results)
    assert sorted(p for p, _ in results) == list(range(12, 52))
    assert first.positions(session_stream("shared")) == list(range(1, 52))
    assert first.writer.conflicts + second.writer.conflicts > 0
    for node in (first, second):
        again = node.store.get_session("shared")
        assert isinstance(again, Session) and again.message_count == 50


# --- life ---------------------------------------------------------------------------


async def test_stopping_finishes_every_queued_command_first(store_url: str) -> None:
    r = await start(store_url)
    try:
        await r.writer.execute(commands.create_session("draining", ALICE, None))
        async with held(r.writer):
            futures = await queue(r.writer, *(message("draining", f"m{i}") for i in range(100)))
            stopping = asyncio.ensure_future(r.writer.stop())
            await asyncio.sleep(0)
        await stopping
        results = await asyncio.gather(*futures)
        assert sorted(p for p, _ in results) == list(range(2, 102))
        assert r.positions(session_stream("draining")) == list(range(1, 102))
    finally:
        await r.stop()


async def test_a_command_whose_events_the_store_refuses_fails_alone_and_its_neighbours_commit(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("mixed", ALICE, None))
    # Data the store's encoder refuses (an integer beyond 64 bits, as JSON
    # nested too deep once was): the edge refuses it now, but the writer
    # must not let one such command fail a whole batch either way.
    unencodable = commands.record_message(
        "mixed", ALICE, message_id="bad", role="user", content="x", metadata={"n": 2**70}
    )
    results = await in_one_batch(w, message("mixed", "a"), unencodable, message("mixed", "c"))

    assert results[0] == (2, True) and results[2] == (3, True)
    assert isinstance(results[1], CommandFailed) and results[1].code == "internal"
    assert "record_message" in results[1].message
    ids = [e.payload().get("message_id") for e in running.store.stream_events("session:mixed")]
    assert ids == [None, "a", "c"]
    assert await w.execute(message("mixed", "d")) == (4, True)
    # Each command left the writer's count of those in flight once, though the
    # batch was answered in pieces.
    assert w.in_flight == 0
