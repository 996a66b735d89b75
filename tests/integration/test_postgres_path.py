"""The PostgreSQL write path (one round trip per batch) and the follower that
tells a node's own commits from other nodes' by the NOTIFY payload, on a real
PostgreSQL database (ADR 0013)."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from contextlib import asynccontextmanager
from typing import Any
from urllib.parse import quote, urlsplit, urlunsplit

import psycopg
import pytest
from eventsourcing.persistence import IntegrityError, OperationalError, StoredEvent
from psycopg.conninfo import conninfo_to_dict
from psycopg.sql import SQL, Identifier, Literal

from domain.session import Session
from service.cluster import follower as follower_module
from service.cluster.follower import LogFollower
from service.storage.faults import busy, store_down
from service.storage.store import SessiondApplication, open_store, parse_store_url

pytestmark = pytest.mark.postgres


@pytest.fixture
def two_nodes(postgres_url: str) -> Iterator[tuple[SessiondApplication, SessiondApplication]]:
    first = open_store(parse_store_url(postgres_url))
    second = open_store(parse_store_url(postgres_url))
    yield first, second
    first.close()
    second.close()


SPACED_PASSWORD = "two words/@%"


@pytest.fixture
def spaced_role_url(postgres_url: str) -> Iterator[str]:
    """A store URL for a role whose password holds a space (and ``/@%``), on
    the test's fresh database; the role is dropped after."""
    role = "sessiond_role_" + uuid.uuid4().hex[:12]
    admin = parse_store_url(postgres_url).conninfo
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(
            SQL("CREATE ROLE {} LOGIN PASSWORD {}").format(
                Identifier(role), Literal(SPACED_PASSWORD)
            )
        )
        conn.execute(SQL("GRANT CREATE, USAGE ON SCHEMA public TO {}").format(Identifier(role)))
    parts = urlsplit(postgres_url)
    netloc = f"{role}:{quote(SPACED_PASSWORD, safe='')}@{parts.hostname}:{parts.port or 5432}"
    query = "application_name=sessiond%20spaced"
    try:
        yield urlunsplit((parts.scheme, netloc, parts.path, query, ""))
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(SQL("DROP OWNED BY {}").format(Identifier(role)))
            conn.execute(SQL("DROP ROLE {}").format(Identifier(role)))


def test_a_password_with_a_space_reaches_every_connection_exactly(spaced_role_url: str) -> None:
    config = parse_store_url(spaced_role_url)
    assert config.conninfo is not None
    params = conninfo_to_dict(config.conninfo)
    assert params["password"] == SPACED_PASSWORD
    assert config.env["POSTGRES_PASSWORD"] == SPACED_PASSWORD
    who = "SELECT current_user, current_setting('application_name')"
    role = params["user"]
    with psycopg.connect(config.conninfo) as conn:
        assert conn.execute(who).fetchone() == (role, "sessiond spaced")
    app = open_store(config)  # the schema lock, then eventsourcing's pool
    try:
        app.save(Session.create("spaced", "alice"))
        assert app.get_session("spaced") is not None
        recorder: Any = app.recorder
        with recorder.datastore.get_connection() as conn:
            row = conn.execute(who).fetchone()
        assert (row["current_user"], row["current_setting"]) == (role, "sessiond spaced")
    finally:
        app.close()


def test_a_statement_past_its_deadline_is_cancelled_and_taken_for_busy_not_down(
    postgres_url: str,
) -> None:
    store = open_store(parse_store_url(postgres_url + "?statement_timeout=0.2"))
    try:
        recorder: Any = store.recorder
        with recorder.datastore.get_connection() as conn:
            assert conn.execute("SHOW statement_timeout").fetchone()["statement_timeout"] == "200ms"
        with (
            pytest.raises(OperationalError) as cancelled,
            recorder.datastore.get_connection() as conn,
        ):
            conn.execute("SELECT pg_sleep(2)")
        assert store_down(cancelled.value) and busy(cancelled.value)
    finally:
        store.close()


def _listen(postgres_url: str, channel: str) -> psycopg.Connection[Any]:
    conn = psycopg.connect(parse_store_url(postgres_url).conninfo, autocommit=True)
    conn.execute(psycopg.sql.SQL("LISTEN {}").format(psycopg.sql.Identifier(channel)))
    return conn


def test_a_batch_is_recorded_in_order_and_announced_with_its_origin_and_range(
    postgres_url: str, two_nodes: tuple[SessiondApplication, SessiondApplication]
) -> None:
    app, _ = two_nodes
    recorder: Any = app.recorder
    listener = _listen(postgres_url, recorder.channel_name)
    try:
        before = app.ping()
        events = [
            StoredEvent(f"session:s{i % 3}", i // 3 + 1, "t", b'{"n": %d}' % i) for i in range(7)
        ]
        ids = recorder.insert_events(events)
        assert ids == list(range(before + 1, before + 8))
        stored = recorder.select_notifications(before + 1, 100)
        assert [(n.originator_id, n.originator_version, n.state) for n in stored] == [
            (e.originator_id, e.originator_version, e.state) for e in events
        ]
        payloads = [n.payload for n in listener.notifies(timeout=2, stop_after=1)]
        assert payloads == [f"{recorder.origin} {before + 1} {before + 7}"]
    finally:
        listener.close()


def test_a_conflicting_batch_records_nothing_and_the_next_one_goes_in(
    two_nodes: tuple[SessiondApplication, SessiondApplication],
) -> None:
    app, _ = two_nodes
    recorder: Any = app.recorder
    recorder.insert_events([StoredEvent("session:x", 1, "t", b"{}")])
    head = app.ping()
    with pytest.raises(IntegrityError):
        recorder.insert_events(
            [StoredEvent("session:y", 1, "t", b"{}"), StoredEvent("session:x", 1, "t", b"{}")]
        )
    assert app.ping() == head
    assert recorder.select_events("session:y") == []
    (later,) = recorder.insert_events([StoredEvent("session:y", 1, "t", b"{}")])
    assert later > head  # the failed batch used up sequence numbers: a gap


def test_writes_go_on_after_the_server_drops_every_pooled_connection(
    postgres_url: str, two_nodes: tuple[SessiondApplication, SessiondApplication]
) -> None:
    """Pooled connections are not pinged before use; the retry notices a dead one."""
    app, _ = two_nodes
    app.save(Session.create("before", "alice"))
    dbname = parse_store_url(postgres_url).env["POSTGRES_DBNAME"]
    with psycopg.connect(parse_store_url(postgres_url).conninfo, autocommit=True) as admin:
        admin.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (dbname,),
        )
    app.save(Session.create("after", "alice"))
    assert app.get_session("after") is not None
    assert app.get_session("before") is not None


def test_no_setting_in_the_environment_turns_the_pre_ping_on(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    """eventsourcing reads POSTGRES_PRE_PING from the process environment too;
    sessiond keeps it off (a round trip per writer transaction), and a dead
    connection is still noticed by the retry."""
    monkeypatch.setenv("POSTGRES_PRE_PING", "y")
    monkeypatch.setenv(f"{SessiondApplication.name.upper()}_POSTGRES_PRE_PING", "y")
    app = open_store(parse_store_url(postgres_url))
    try:
        assert app.recorder.datastore.pre_ping is False  # type: ignore[attr-defined]
        app.save(Session.create("before", "alice"))
        dbname = parse_store_url(postgres_url).env["POSTGRES_DBNAME"]
        with psycopg.connect(parse_store_url(postgres_url).conninfo, autocommit=True) as admin:
            admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
                "WHERE datname = %s AND pid <> pg_backend_pid()",
                (dbname,),
            )
        app.save(Session.create("after", "alice"))
        assert app.get_session("after") is not None
    finally:
        app.close()


async def test_the_follower_publishes_other_nodes_commits_and_skips_its_own(
    postgres_url: str, two_nodes: tuple[SessiondApplication, SessiondApplication]
) -> None:
    mine, theirs = two_nodes
    published: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    def on_events(events: list[dict[str, Any]]) -> None:
        published.extend(events)
        arrived.set()

    async with following(mine, postgres_url, on_events) as follower:
        # Our own commits move the position without a read or a publish.
        for i in range(3):
            await asyncio.to_thread(mine.save, Session.create(f"own-{i}", "alice"))
        await _until(lambda: follower.position == mine.ping())
        assert follower.skipped == 3 and published == []
        # Another node's commit is read and published, in full.
        await asyncio.to_thread(theirs.save, Session.create("theirs", "bob"))
        await asyncio.wait_for(arrived.wait(), 5)
        assert [(e["session_id"], e["type"]) for e in published] == [("theirs", "SessionCreated")]
        # Then ours again: interleaving does not make the follower skip theirs.
        await asyncio.to_thread(mine.save, Session.create("own-3", "alice"))
        await asyncio.to_thread(theirs.save, Session.create("theirs-2", "bob"))
        await _until(lambda: len(published) == 2)
        assert published[1]["session_id"] == "theirs-2"
        await _until(lambda: follower.position == mine.ping())


class _Unanswered(dict[Any, Any]):
    """The recorder's memory of answered batches, losing every answer (as if
    each connection died between COMMIT and its reply)."""

    def __setitem__(self, key: Any, value: Any) -> None:
        pass


async def test_a_commit_whose_answer_was_lost_is_read_back_not_skipped(
    postgres_url: str, two_nodes: tuple[SessiondApplication, SessiondApplication]
) -> None:
    mine, _ = two_nodes
    recorder: Any = mine.recorder
    recorder._own = _Unanswered()
    published: list[dict[str, Any]] = []
    async with following(mine, postgres_url, published.extend) as follower:
        await asyncio.to_thread(mine.save, Session.create("unanswered", "alice"))
        await _until(lambda: follower.position == mine.ping())
        assert follower.skipped == 0
        assert [e["session_id"] for e in published] == ["unanswered"]


async def test_the_follower_reads_across_a_gap_left_by_a_failed_batch(
    postgres_url: str, two_nodes: tuple[SessiondApplication, SessiondApplication]
) -> None:
    """A rolled-back insert leaves a hole in the IDs; the next own commit no
    longer starts at position + 1, so the follower reads across the hole, and
    drops the own commit's rows it reads rather than publishing them again."""
    mine, theirs = two_nodes
    published: list[dict[str, Any]] = []
    async with following(mine, postgres_url, published.extend) as follower:
        recorder: Any = mine.recorder
        await asyncio.to_thread(mine.save, Session.create("dup", "alice"))
        await _until(lambda: follower.position == mine.ping())
        skipped = follower.skipped
        with pytest.raises(IntegrityError):
            recorder.insert_events([StoredEvent("session:dup", 1, "t", b"{}")])
        await asyncio.to_thread(mine.save, Session.create("after-gap", "alice"))
        await _until(lambda: follower.position == mine.ping())
        assert published == []
        assert follower.skipped == skipped + 1
        # The position moved across the hole: another node's next commit is read.
        await asyncio.to_thread(theirs.save, Session.create("theirs", "bob"))
        await _until(lambda: len(published) == 1)
        assert published[0]["session_id"] == "theirs"


async def test_own_rows_read_among_other_nodes_are_dropped_before_decoding(
    postgres_url: str,
    two_nodes: tuple[SessiondApplication, SessiondApplication],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A read that covers this node's answered commits among other nodes'
    (woken by another node's NOTIFY, or the bounded poll) decodes and
    publishes only the other nodes' rows."""
    mine, theirs = two_nodes
    decoded: list[str] = []
    real = follower_module.wire_from_row

    def counting(row: Any) -> dict[str, Any]:
        decoded.append(row[1])
        return real(row)

    monkeypatch.setattr(follower_module, "wire_from_row", counting)
    published: list[dict[str, Any]] = []
    arrived = asyncio.Event()

    def on_events(events: list[dict[str, Any]]) -> None:
        published.extend(events)
        arrived.set()

    # Not started: its reads are made here, one, over every commit below.
    follower = LogFollower(mine, parse_store_url(postgres_url).conninfo, on_events)
    follower._loop = asyncio.get_running_loop()
    follower.position = mine.ping()
    for i in range(3):
        await asyncio.to_thread(mine.save, Session.create(f"own-{i}", "alice"))
        await asyncio.to_thread(theirs.save, Session.create(f"theirs-{i}", "bob"))
    await asyncio.to_thread(follower._catch_up)
    await asyncio.wait_for(arrived.wait(), 5)
    assert [e["session_id"] for e in published] == ["theirs-0", "theirs-1", "theirs-2"]
    assert decoded == ["session:theirs-0", "session:theirs-1", "session:theirs-2"]
    assert follower.skipped == 3 and follower.position == mine.ping()
    # Forgotten once read past: the recorder keeps no range for them.
    assert mine.recorder.own_ranges(0, follower.position) == []  # type: ignore[attr-defined]


@asynccontextmanager
async def following(
    app: SessiondApplication, postgres_url: str, on_events: Callable[[list[dict[str, Any]]], None]
) -> AsyncIterator[LogFollower]:
    """A follower of ``app``'s log (no bounded poll within a test), LISTENing."""
    follower = LogFollower(app, parse_store_url(postgres_url).conninfo, on_events, poll_interval=30)
    follower.start(asyncio.get_running_loop())
    try:
        await asyncio.sleep(0.3)  # LISTEN is in place
        yield follower
    finally:
        await asyncio.to_thread(follower.stop)


async def _until(condition: Any, patience: float = 5.0) -> None:
    """Poll a condition set by the follower's thread (no event to await)."""
    async with asyncio.timeout(patience):
        while not condition():  # noqa: ASYNC110
            await asyncio.sleep(0.01)
    # What the follower handed to the loop before the condition held runs now.
    await asyncio.sleep(0)
