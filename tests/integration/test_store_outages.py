"""The writer and the closes a node owes its store while the store is down,
on a real store (docs/adr/0028-fail-fast-while-the-store-is-down.md)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import pytest
from eventsourcing.persistence import OperationalError

from domain.ids import connection_stream
from service.application import commands
from service.application.health import StoreHealth, StoreUnavailable
from service.application.reconcile import UnrecordedCloses
from service.application.writer import Writer
from service.storage.store import SessiondApplication, open_store, parse_store_url
from tests.integration.test_writer import walk_to_live


class Outage:
    """A real store and writer, and a health view whose store the test can
    say is down (the probe's ping and write are the store's own, gated)."""

    def __init__(self, store: SessiondApplication) -> None:
        self.store = store
        self.down = False
        self.health = StoreHealth(ping=self._ping, write_probe=self._ping)
        self.writer = Writer(store, on_commit=lambda events: None, health=self.health)
        self.closes = UnrecordedCloses(self.writer, self.health, limit=3)

    def _ping(self) -> int:
        if self.down:
            raise OperationalError("connection refused")
        return self.store.ping()

    def stop_store(self) -> None:
        self.down = True
        self.health.failed(OperationalError("connection refused"), write=True)

    def types(self, connection_id: str) -> list[str]:
        return [e.type_name() for e in self.store.stream_events(connection_stream(connection_id))]


@pytest.fixture
async def outage(tmp_path: Any) -> AsyncIterator[Outage]:
    o = Outage(open_store(parse_store_url(f"sqlite:///{tmp_path / 'outage.db'}")))
    o.writer.start(asyncio.get_running_loop())
    yield o
    await o.writer.stop()
    o.store.close()


async def test_while_writes_are_down_commands_fail_fast_and_nothing_is_recorded(
    outage: Outage,
) -> None:
    await walk_to_live(outage.writer, "c-1", "s-1")
    outage.stop_store()
    before = outage.store.ping()
    with pytest.raises(StoreUnavailable):
        await outage.writer.execute(commands.close_connection("c-1", code=1000, reason="normal"))
    assert outage.store.ping() == before
    outage.down = False
    assert outage.health.probe()
    assert await outage.writer.execute(commands.close_connection("c-1", code=1000, reason="normal"))


async def test_closes_owed_to_a_down_store_are_recorded_with_their_codes_once_it_is_back(
    outage: Outage,
) -> None:
    for cid in ("c-1", "c-2"):
        await walk_to_live(outage.writer, cid, f"s-{cid}")
    outage.stop_store()
    outage.closes.keep("c-1", commands.close_connection("c-1", code=4321, reason="client_closed"))
    outage.closes.keep("c-2", commands.close_connection("c-2", code=1013, reason="store"))
    assert await outage.closes.flush() is False
    assert len(outage.closes) == 2
    assert outage.types("c-1")[-1] == "PROCESSING_READY"
    outage.down = False
    assert outage.health.probe()
    assert await outage.closes.flush() is True
    for cid, code in (("c-1", 4321), ("c-2", 1013)):
        connection = outage.store.get_connection(cid)
        assert connection is not None and connection.close_code == code
    # Owed twice (a close that did commit though its answer was lost):
    # recorded once.
    outage.closes.keep("c-1", commands.close_connection("c-1", code=4321, reason="again"))
    assert await outage.closes.flush() is True
    assert outage.types("c-1").count("CLOSED") == 1


async def test_the_closes_a_node_keeps_are_bounded_the_oldest_dropped_first(
    outage: Outage,
) -> None:
    outage.stop_store()
    for i in range(5):
        outage.closes.keep(f"c-{i}", commands.close_connection(f"c-{i}", code=1000, reason="x"))
    assert len(outage.closes) == 3
    outage.down = False
    outage.health.probe()
    await outage.closes.flush()
    assert len(outage.closes) == 0
