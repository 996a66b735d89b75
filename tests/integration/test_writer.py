"""The writer thread on real stores: group commit, no lost updates, conflicts
retried and never surfaced, errors kept to the command that caused them."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest

from domain.errors import InvalidTransition, SessionNotFound
from domain.ids import connection_stream, session_stream
from domain.session import Session
from service import commands
from service.auth import Principal
from service.store import SessiondApplication, open_store, parse_store_url
from service.writer import UnitOfWork, Writer

ALICE = Principal("alice", frozenset({"user"}))


class Running:
    def __init__(self, store: SessiondApplication, writer: Writer) -> None:
        self.store = store
        self.writer = writer
        self.published: list[Any] = []


async def start(url: str) -> Running:
    store = open_store(parse_store_url(url))
    running = Running(store, None)  # type: ignore[arg-type]
    writer = Writer(store, on_commit=running.published.extend, max_batch=64)
    writer.start(asyncio.get_running_loop())
    running.writer = writer
    return running


@pytest.fixture
async def running(store_url: str) -> AsyncIterator[Running]:
    r = await start(store_url)
    yield r
    await r.writer.stop()
    r.store.close()


async def test_concurrent_messages_on_one_session_lose_no_update(running: Running) -> None:
    w = running.writer
    await w.execute(commands.create_session("hot", ALICE, None))
    results = await asyncio.gather(
        *(
            w.execute(
                commands.record_message(
                    "hot", ALICE, message_id=f"m{i}", role="user", content=str(i)
                )
            )
            for i in range(200)
        )
    )
    positions = sorted(p for p, created in results if created)
    assert positions == list(range(2, 202))
    events = running.store.stream_events(session_stream("hot"))
    assert [e.originator_version for e in events] == list(range(1, 202))
    assert w.transactions < 200, "commands shared transactions (group commit)"


async def test_forty_concurrent_creates_of_one_id_record_one_session(running: Running) -> None:
    results = await asyncio.gather(
        *(running.writer.execute(commands.create_session("once", ALICE, None)) for _ in range(40))
    )
    assert sorted(created for _, created in results) == [False] * 39 + [True]
    assert [e.type_name() for e in running.store.stream_events(session_stream("once"))] == [
        "SessionCreated"
    ]


async def test_a_failing_command_does_not_affect_the_others_in_its_batch(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.create_session("mixed", ALICE, None))
    ok_1 = w.execute(
        commands.record_message("mixed", ALICE, message_id="a", role="user", content="a")
    )
    bad = w.execute(
        commands.record_message("missing", ALICE, message_id="b", role="user", content="b")
    )

    def explode(uow: UnitOfWork) -> None:
        session = uow.session("mixed")
        assert session is not None
        session.record_message(message_id="half", role="user", content="x", user_id="alice")
        raise RuntimeError("a bug after recording")

    buggy = w.execute(explode)
    ok_2 = w.execute(
        commands.record_message("mixed", ALICE, message_id="c", role="user", content="c")
    )
    results = await asyncio.gather(ok_1, bad, buggy, ok_2, return_exceptions=True)
    assert isinstance(results[1], SessionNotFound)
    assert isinstance(results[2], RuntimeError)
    kinds = [
        e.payload().get("message_id") for e in running.store.stream_events(session_stream("mixed"))
    ]
    assert "half" not in kinds, "a failed command's events were committed"
    assert {"a", "c"} <= set(kinds)


async def test_a_refused_transition_is_recorded_even_though_the_command_raised(
    running: Running,
) -> None:
    w = running.writer
    await w.execute(commands.open_connection("c-ref", "s", node="n", proposed=True))
    with pytest.raises(InvalidTransition):
        await w.execute(commands.go_live("c-ref", 0))
    types = [e.type_name() for e in running.store.stream_events(connection_stream("c-ref"))]
    assert types == ["CONNECTING", "TransitionRefused"]


async def test_a_connection_id_can_be_recorded_only_once(running: Running) -> None:
    w = running.writer
    await w.execute(commands.open_connection("dup", "s", node="n", proposed=True))
    with pytest.raises(Exception, match="already recorded"):
        await w.execute(commands.open_connection("dup", "s", node="n", proposed=True))


async def test_committed_events_are_published_after_the_commit(running: Running) -> None:
    await running.writer.execute(commands.create_session("pub", ALICE, None))
    assert [e.type_name() for e in running.published] == ["SessionCreated"]


async def test_a_conflict_with_another_writer_is_retried_and_never_surfaced(
    store_url: str,
) -> None:
    if store_url == "memory://":
        pytest.skip("two writers need a shared store; memory:// lives in one application")
    first = await start(store_url)
    second = await start(store_url)
    try:
        await first.writer.execute(commands.create_session("shared", ALICE, None))
        # Both writers now hold the session; each write makes the other's stale.
        for i in range(10):
            writer = first.writer if i % 2 == 0 else second.writer
            await writer.execute(
                commands.record_message(
                    "shared", ALICE, message_id=f"m{i}", role="user", content=str(i)
                )
            )
        results = await asyncio.gather(
            *(
                (first.writer if i % 2 else second.writer).execute(
                    commands.record_message(
                        "shared", ALICE, message_id=f"x{i}", role="user", content=str(i)
                    )
                )
                for i in range(40)
            )
        )
        assert all(created for _, created in results)
        events = first.store.stream_events(session_stream("shared"))
        assert [e.originator_version for e in events] == list(range(1, 52))
        assert first.writer.conflicts + second.writer.conflicts > 0
        again = first.store.get_session("shared")
        assert isinstance(again, Session) and again.message_count == 50
    finally:
        for r in (first, second):
            await r.writer.stop()
            r.store.close()
