"""A page of events is bounded by bytes as well as by count, on every path
that reads pages of events on request: ``GET .../events`` of a session and
of a connection, the backlog of an event stream and of a socket, and the
fold of ``state?at=``. Each page holds at least one event, so a reader
always moves on, and a short page is not the end (an empty one is)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any

from domain.session import Session
from service.storage.store import SessiondApplication, open_store, parse_store_url
from tests.conftest import Api
from tests.e2e.test_stream import assert_dense, new_session, stream
from tests.e2e.wsclient import AUDITOR, GUARD, closed_record, open_live, post_messages

Serve = Callable[..., Any]

# The smallest bound the setting takes, and messages a few times larger
# than a third of it: a page holds two of them, or one alone.
PAGE_BYTES = 1024
CONTENT = "x" * 400
LARGE = "y" * 3000


async def pages(api: Api, path: str, limit: int = 1000) -> list[list[dict[str, Any]]]:
    """Every page of ``path`` from the start to the empty one, each checked
    against its ``next_after``."""
    found: list[list[dict[str, Any]]] = []
    after = 0
    while True:
        status, body = await api.call("GET", f"{path}?after={after}&limit={limit}", **AUDITOR)
        assert status == 200, body
        events = body["events"]
        assert body["next_after"] == (events[-1]["position"] if events else after), body
        if not events:
            return found
        found.append(events)
        after = body["next_after"]


async def test_a_page_of_session_events_is_bounded_by_bytes_and_never_empty_before_the_end(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url, page_bytes=PAGE_BYTES)
    await new_session(api, "pg-1")
    await post_messages(api.http, api.base_url, "pg-1", 6, "m", content=CONTENT)
    await post_messages(api.http, api.base_url, "pg-1", 2, "m", content=LARGE)
    found = await pages(api, "/v1/sessions/pg-1/events")
    assert_dense([e["position"] for page in found for e in page], 1, 9)
    # 1000 asked, far fewer served: the bytes ended each page.
    assert all(len(page) < 5 for page in found), [len(page) for page in found]
    # Each page fits the bound, but for a page of one event larger than it.
    for page in found:
        stored = sum(len(e["data"].get("content", "")) for e in page)
        assert len(page) == 1 or stored <= PAGE_BYTES, [e["position"] for e in page]
    assert [len(page) for page in found][-2:] == [1, 1]  # the two larger than the bound


async def test_a_page_of_connection_events_is_bounded_and_paged_like_a_sessions(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url, page_bytes=PAGE_BYTES)
    await new_session(api, "pg-c")
    client = await open_live(api, "pg-c", connection_id="pg-conn")
    await client.close()
    status, whole = await api.call("GET", "/v1/connections/pg-conn/events", **AUDITOR)
    assert status == 200, whole
    found = await pages(api, "/v1/connections/pg-conn/events", limit=2)
    assert [e for page in found for e in page] == whole["events"]
    assert all(len(page) <= 2 for page in found)
    assert whole["next_after"] == whole["events"][-1]["position"]


async def test_an_event_stream_sends_a_backlog_of_many_byte_bound_pages_on_a_quiet_session(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url, page_bytes=PAGE_BYTES)
    await new_session(api, "pg-s")
    await post_messages(api.http, api.base_url, "pg-s", 8, "m", content=CONTENT)
    # Nothing is written while the stream reads: a short page taken for the
    # backlog's end would leave the rest unsent until the next write.
    async with stream(api, "pg-s") as s, asyncio.timeout(GUARD):
        await s.until_position(9)
    assert_dense(s.positions, 1, 9)


async def test_a_socket_is_sent_a_backlog_of_many_byte_bound_pages_before_processing_ready(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url, page_bytes=PAGE_BYTES)
    await new_session(api, "pg-w")
    await post_messages(api.http, api.base_url, "pg-w", 8, "m", content=CONTENT)
    client = await open_live(api, "pg-w", after=0)
    ready = client.first("state", state="PROCESSING_READY")
    assert ready is not None
    assert_dense(client.positions[: ready["position"]], 1, ready["position"])
    assert ready["position"] >= 9
    await client.close()


def test_a_past_state_is_folded_from_byte_bound_pages(tmp_path: Any) -> None:
    store: SessiondApplication = open_store(parse_store_url(f"sqlite:///{tmp_path / 's.db'}"))
    try:
        session = Session.create("pg-at", "alice", {})
        for i in range(12):
            session.record_message(message_id=f"m-{i}", role="user", content=CONTENT, user_id="a")
        store.record_aggregates(session)
        reads: list[int] = []
        select = store.row_recorder.select_stream_rows

        def counted(*args: Any, **kwargs: Any) -> Any:
            rows = select(*args, **kwargs)
            reads.append(sum(len(row[3]) for row in rows))
            return rows

        store.row_recorder.select_stream_rows = counted  # type: ignore[method-assign]
        past = store.get_session("pg-at", 10, max_bytes=PAGE_BYTES)
        whole = store.repository.get(session.id, version=10)
        assert past is not None and past.view() == whole.view()
        assert len(reads) > 3 and all(size <= PAGE_BYTES for size in reads), reads
    finally:
        store.close()


async def test_a_connections_lifecycle_comes_whole_without_a_limit_past_a_hundred_events(
    sqlite_url: str, serve: Serve
) -> None:
    """The contract's connection events are "the connection's lifecycle, in
    order": a socket that refreshed its token many times still has all of it
    in one answer (up to the page's most, 1000 events)."""
    api = await serve(sqlite_url)
    await new_session(api, "pg-long")
    client = await open_live(api, "pg-long", connection_id="pg-long-conn")
    for _ in range(110):
        await client.send({"type": "auth", "token": api.signer.mint("alice")})
    while sum(f["type"] == "token" for f in client.frames) < 110:
        await client.receive()
    await client.close()
    await closed_record(api, "pg-long-conn")
    status, whole = await api.call("GET", "/v1/connections/pg-long-conn/events", **AUDITOR)
    assert status == 200, whole
    kinds = [e["type"] for e in whole["events"]]
    assert kinds.count("TokenRefreshed") == 110 and kinds[-1] == "CLOSED", kinds
    assert [e["position"] for e in whole["events"]] == list(range(1, len(kinds) + 1))
