"""A projection added by registration (ADR 0024): messages per user, defined
here as a new projection would be in its own module, registered beside the
sessions and connections projections, kept by the real projector on a real
SQLite file (and PostgreSQL), and rebuilt alone while the others keep their
positions and rows."""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from domain.session import Session
from projections.projection import Projection, Row, WireEvent
from projections.projector import PROJECTIONS, Projector, reset
from projections.tables import SQLiteTables, Tables
from service.application.readmodels import make_projector, open_tables
from service.storage.store import SessiondApplication, open_store, parse_store_url

# --- the example projection: all of it -------------------------------------------


def by_message_author(event: WireEvent) -> str | None:
    """Messages only, into the row of the user who recorded them."""
    return event["data"]["user_id"] if event["type"] == "MessageRecorded" else None


def count_message(row: Row | None, event: WireEvent) -> Row:
    if row is None:
        row = {"user_id": event["data"]["user_id"], "messages": 0}
    return {**row, "messages": row["messages"] + 1, "last_at": event["at"]}


MESSAGES_PER_USER = Projection(
    name="messages_per_user",
    ddl=(
        """CREATE TABLE IF NOT EXISTS example_messages_per_user (
            user_id TEXT PRIMARY KEY,
            messages BIGINT NOT NULL,
            view TEXT NOT NULL
        )""",
    ),
    row_key=by_message_author,
    fold=count_message,
    table="example_messages_per_user",
    columns=("user_id", "messages"),
    changing=("messages",),
)

REGISTERED = (*PROJECTIONS, MESSAGES_PER_USER)

# ------------------------------------------------------------------------------------


@dataclass
class Disk:
    store: SessiondApplication
    tables: Tables


@pytest.fixture(params=["sqlite", "postgres"])
def disk(request: pytest.FixtureRequest) -> Iterator[Disk]:
    """A store on disk, a SQLite file or a PostgreSQL database of its own,
    and its read-model tables."""
    if request.param == "sqlite":
        url = f"sqlite:///{request.getfixturevalue('tmp_path') / 'sessiond.db'}"
    else:
        url = str(request.getfixturevalue("postgres_url"))
    store = open_store(parse_store_url(url))
    tables = open_tables(parse_store_url(url))
    try:
        yield Disk(store, tables)
    finally:
        tables.close()
        store.close()


def write_messages(store: SessiondApplication, session_id: str, authors: list[str]) -> None:
    session = Session.create(session_id, authors[0])
    for n, user in enumerate(authors):
        session.record_message(message_id=f"m{n}", role="user", content="hi", user_id=user)
    session.start_task(task_id="t", name="job", total=None, user_id=authors[0])
    store.save(session)


def counts(tables: Tables) -> dict[str, int]:
    with tables.read() as c:
        c.execute("SELECT user_id, messages, view FROM example_messages_per_user")
        rows = c.fetchall()
    for user_id, messages, view in rows:
        assert f'"messages":{messages}' in view and f'"user_id":"{user_id}"' in view
    return {user_id: int(messages) for user_id, messages, _ in rows}


def registered_projector(disk: Disk) -> Projector:
    return make_projector(disk.store, disk.tables, batch_size=3, projections=REGISTERED)


def test_a_registered_projection_is_kept_and_rebuilt_alone(disk: Disk) -> None:
    store, tables = disk.store, disk.tables
    authors = {"s1": ["alice", "bob", "alice"], "s2": ["carol"], "s3": ["bob", "bob"]}
    for session_id, users in authors.items():
        write_messages(store, session_id, users)
    expected = Counter(user for users in authors.values() for user in users)

    projector = registered_projector(disk)
    projector.setup()
    assert projector.catch_up() == store.ping()
    assert counts(tables) == expected
    head = store.ping()
    assert {s.name: (s.position, s.lag) for s in projector.status()} == {
        "sessions": (head, 0),
        "connections": (head, 0),
        "messages_per_user": (head, 0),
    }

    # Rebuilt alone: its rows come back from the log (a wrong count is
    # corrected), the other projections' positions never move and their rows
    # are left as they are (a mark put in one survives).
    with tables.write() as c:
        c.execute("UPDATE example_messages_per_user SET messages = 99")
        c.execute("UPDATE sessiond_sessions SET view = '{\"marked\":true}'")
    others: list[dict[str, int]] = []

    def record_others(position: int, head: int) -> None:
        positions = tables.positions()
        others.append({name: positions[name] for name in ("sessions", "connections")})

    again = registered_projector(disk)
    again.setup()
    assert again.rebuild(record_others, names=["messages_per_user"]) == head
    assert counts(tables) == expected
    assert len(others) > 2, "the rebuild took more than one batch"
    assert all(seen == {"sessions": head, "connections": head} for seen in others)
    assert tables.session("s1") == {"marked": True}
    assert again.counts() == {"sessions": 3, "connections": 0, "messages_per_user": 3}

    # The service's projector, which does not know it, is not held back by it.
    with tables.write() as c:
        tables.lock_positions(c)
        reset(tables, c, [MESSAGES_PER_USER])
    service = make_projector(store, tables)
    service.setup()
    assert service.position == head
    assert [s.name for s in service.status()] == ["sessions", "connections"]

    # The one that does catches it up, and new writes reach all three.
    write_messages(store, "s4", ["dave"])
    again.catch_up()
    assert counts(tables) == {**expected, "dave": 1}
    assert again.positions == dict.fromkeys(again.positions, store.ping())


def test_projections_are_named_in_registration_order_and_an_unknown_name_is_refused() -> None:
    tables = SQLiteTables(None)
    projector = Projector(
        lambda start, limit: [], lambda: 0, lambda row: {}, tables, projections=REGISTERED
    )
    with pytest.raises(ValueError, match="'nope'; known: sessions, connections, messages_per_user"):
        projector.select(["sessions", "nope"])
    assert [p.name for p in projector.select(["messages_per_user", "sessions"])] == [
        "sessions",
        "messages_per_user",
    ]
    with pytest.raises(ValueError, match="distinct names"):
        Projector(
            lambda start, limit: [], lambda: 0, lambda row: {}, tables, projections=PROJECTIONS * 2
        )
    tables.close()
