"""The read-only event stream (PROTOCOL.md v1.1, ``GET /v1/sessions/{id}/stream``)
against real servers on real sockets: the messages' shape, the backlog/live
seam, resume, who may read, that a watcher records nothing, heartbeats, the
bounds, the token's end, the session's end and the server's shutdown.

The stream is read with the event-stream parser alone (never the watcher
client, which drops repeats), so a repeated or missing position fails here."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import socket
from collections.abc import AsyncIterator, Callable
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest

from service.client.stream import Comment, Message, read_event_stream
from service.edge.context import WATCHERS
from service.edge.responses import StreamEvent
from tests.conftest import Api
from tests.e2e.wsclient import AUDITOR, GUARD, eventually, open_live, post_messages, report_progress

Serve = Callable[..., Any]


class Stream:
    """One open stream: its response and everything read from it so far."""

    def __init__(self, response: aiohttp.ClientResponse) -> None:
        self.response = response
        self.items: AsyncIterator[Message | Comment] = read_event_stream(response.content)
        self.messages: list[Message] = []
        self.comments: list[str] = []

    @property
    def positions(self) -> list[int]:
        return [int(m.id or 0) for m in self.messages]

    async def next(self) -> Message | Comment:
        async with asyncio.timeout(GUARD):
            item = await anext(self.items)
        if isinstance(item, Message):
            self.messages.append(item)
        else:
            self.comments.append(item.text)
        return item

    async def until_position(self, position: int) -> None:
        while not self.messages or int(self.messages[-1].id or 0) < position:
            await self.next()

    async def until_comment(self, prefix: str) -> str:
        while True:
            item = await self.next()
            if isinstance(item, Comment) and item.text.startswith(prefix):
                return item.text

    async def to_the_end(self) -> None:
        """Read until the server ends the response."""
        with contextlib.suppress(StopAsyncIteration):
            while True:
                await self.next()


@contextlib.asynccontextmanager
async def stream(
    api: Api,
    session_id: str,
    *,
    user: str = "alice",
    roles: tuple[str, ...] = (),
    headers: dict[str, str] | None = None,
    query: str = "",
) -> AsyncIterator[Stream]:
    sent = {**api.auth(user, *roles), **(headers or {})}
    url = api.url(f"/v1/sessions/{session_id}/stream{query}")
    async with api.http.get(url, headers=sent) as response:
        assert response.status == 200, await response.text()
        yield Stream(response)


async def new_session(api: Api, session_id: str) -> None:
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": session_id})
    assert status == 201, body


async def http_events(api: Api, session_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/v1/sessions/{session_id}/events?limit=1000", **AUDITOR)
    assert status == 200, body
    return list(body["events"])


def assert_dense(positions: list[int], first: int, last: int) -> None:
    assert positions == list(range(first, last + 1)), positions


async def test_each_event_is_a_message_with_its_position_type_and_the_same_object_as_over_http(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url)
    await new_session(api, "st-1")
    await post_messages(api.http, api.base_url, "st-1", 3, "before")
    async with stream(api, "st-1") as s:
        assert s.response.headers["Content-Type"] == "text/event-stream"
        assert s.response.headers["Cache-Control"] == "no-cache"
        await s.until_position(4)
        live = await post_messages(api.http, api.base_url, "st-1", 3, "live")
        await report_progress(api.http, api.base_url, "st-1", "t-1", 2)
        last = (await http_events(api, "st-1"))[-1]["position"]
        await s.until_position(last)
    assert_dense(s.positions, 1, last)
    assert live[0] == 5
    over_http = await http_events(api, "st-1")
    for message, event in zip(s.messages, over_http, strict=True):
        assert orjson.loads(message.data) == event
        assert (message.id, message.event) == (str(event["position"]), event["type"])
        msgspec.json.decode(message.data, type=StreamEvent)  # the declared shape


async def test_the_seam_drops_and_repeats_nothing_while_producers_keep_writing(
    store_url: str, serve: Serve
) -> None:
    api = await serve(store_url)
    await new_session(api, "st-seam")
    started = asyncio.Event()

    async def producer(n: int) -> list[int]:
        started.set()
        if n % 2:
            return await post_messages(api.http, api.base_url, "st-seam", 30, f"p{n}")
        return await report_progress(api.http, api.base_url, "st-seam", f"task-{n}", 25)

    producers = [asyncio.create_task(producer(n)) for n in range(4)]
    await started.wait()
    async with stream(api, "st-seam") as s:
        acked = [p for done in await asyncio.gather(*producers) for p in done]
        last = (await http_events(api, "st-seam"))[-1]["position"]
        assert max(acked) <= last
        await s.until_position(last)
    assert_dense(s.positions, 1, last)


async def test_last_event_id_wins_over_after_and_a_bad_one_is_refused(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    await new_session(api, "st-2")
    await post_messages(api.http, api.base_url, "st-2", 6, "m")  # positions 2..7
    async with stream(api, "st-2", query="?after=3") as s:
        await s.until_position(7)
    assert_dense(s.positions, 4, 7)
    async with stream(api, "st-2", query="?after=3", headers={"Last-Event-ID": "5"}) as s:
        await s.until_position(7)
    assert_dense(s.positions, 6, 7)
    for bad in ("-1", "five", "99999999999999999999"):
        status, body = await api.call(
            "GET", "/v1/sessions/st-2/stream", headers={"Last-Event-ID": bad}
        )
        assert (status, body["error"]["code"]) == (400, "invalid_query"), bad
    status, body = await api.call("GET", "/v1/sessions/st-2/stream?after=x")
    assert (status, body["error"]["code"]) == (400, "invalid_query")


async def test_a_last_event_id_of_digits_other_than_ascii_is_refused_as_a_bad_query(
    sqlite_url: str, serve: Serve
) -> None:
    """A position is written in ASCII digits: a superscript two or an
    Arabic-Indic three (digits to Python's str.isdigit) is no position the
    stream sent, refused 400 like any other, never a 500 nor read as a number."""
    api = await serve(sqlite_url)
    await new_session(api, "st-digits")
    await post_messages(api.http, api.base_url, "st-digits", 4, "m")
    for bad in ("\u00b2", "\u0663", "1\u00b9"):
        status, body = await api.call(
            "GET", "/v1/sessions/st-digits/stream", headers={"Last-Event-ID": bad}
        )
        assert (status, body["error"]["code"]) == (400, "invalid_query"), (bad, status, body)


async def test_the_owner_a_service_and_an_auditor_read_it_and_no_one_else_nor_a_token_in_the_url(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    await new_session(api, "st-3")
    for who in ({"user": "alice"}, {"user": "w", "roles": ("service",)}, AUDITOR):
        async with stream(api, "st-3", **who) as s:
            await s.until_position(1)
    status, body = await api.call("GET", "/v1/sessions/st-3/stream", user="bob")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await api.call("GET", "/v1/sessions/st-3/stream", user=None)
    assert (status, body["error"]["code"]) == (401, "unauthenticated")
    token = api.signer.mint("alice")
    for name in ("access_token", "token"):
        status, body = await api.call("GET", f"/v1/sessions/st-3/stream?{name}={token}", user=None)
        assert (status, body["error"]["code"]) == (401, "unauthenticated"), name
    status, body = await api.call("GET", "/v1/sessions/nobody/stream")
    assert (status, body["error"]["code"]) == (404, "session_not_found")


async def test_a_page_on_an_allowed_origin_may_read_the_stream_and_resume_it(
    sqlite_url: str, serve: Serve
) -> None:
    page = "http://127.0.0.1:3000"
    api = await serve(sqlite_url, cors_origins=(page,))
    await new_session(api, "st-cors")
    asked = {
        "Origin": page,
        "Access-Control-Request-Method": "GET",
        "Access-Control-Request-Headers": "authorization, last-event-id",
    }
    async with api.http.options(api.url("/v1/sessions/st-cors/stream"), headers=asked) as r:
        assert r.status == 204
        allowed = r.headers["Access-Control-Allow-Headers"].lower()
        assert "authorization" in allowed and "last-event-id" in allowed
    async with stream(api, "st-cors", headers={"Origin": page, "Last-Event-ID": "0"}) as s:
        assert s.response.headers["Access-Control-Allow-Origin"] == page
        await s.until_position(1)


async def test_a_watcher_records_nothing(sqlite_url: str, serve: Serve) -> None:
    api = await serve(sqlite_url)
    await new_session(api, "st-4")
    before = await http_events(api, "st-4")
    async with stream(api, "st-4", **AUDITOR) as s:
        await s.until_position(1)
        assert len(api.server.app[WATCHERS]) == 1
    await eventually(lambda: asyncio.sleep(0, not api.server.app[WATCHERS]), "the watcher to end")
    assert await http_events(api, "st-4") == before
    status, view = await api.call("GET", "/v1/sessions/st-4")
    assert status == 200
    assert view["connections"] == [] and view["position"] == before[-1]["position"]


async def test_an_idle_stream_sends_heartbeat_comments(sqlite_url: str, serve: Serve) -> None:
    api = await serve(sqlite_url, stream_heartbeat=0.05)
    await new_session(api, "st-5")
    async with stream(api, "st-5") as s:
        await s.until_position(1)
        assert await s.until_comment("ping") == "ping"
        await post_messages(api.http, api.base_url, "st-5", 1, "after a ping")
        await s.until_position(2)


async def test_an_ended_session_ends_the_stream_and_asked_again_from_its_end_answers_204(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    await new_session(api, "st-6")
    async with stream(api, "st-6") as s:
        await s.until_position(1)
        status, _ = await api.call("DELETE", "/v1/sessions/st-6")
        assert status == 200
        await s.to_the_end()
    assert s.messages[-1].event == "SessionEnded"
    assert s.comments[-1] == "end session_ended"
    last = s.messages[-1].id
    status, _ = await api.call(
        "GET", "/v1/sessions/st-6/stream", headers={"Last-Event-ID": str(last)}
    )
    assert status == 204
    # From earlier, the rest of its history, then the end again.
    async with stream(api, "st-6", query="?after=0") as s:
        await s.to_the_end()
    assert s.messages[-1].event == "SessionEnded"


async def test_a_stream_started_past_the_sessions_end_still_ends_with_the_session(
    sqlite_url: str, serve: Serve
) -> None:
    """``after`` past the session's last position: nothing up to it is sent,
    but the session's end, at a position among them, still ends the stream."""
    api = await serve(sqlite_url)
    await new_session(api, "st-past")
    async with stream(api, "st-past", query="?after=1000") as s:
        await s.until_comment("session")
        status, _ = await api.call("DELETE", "/v1/sessions/st-past")
        assert status == 200
        await asyncio.wait_for(s.to_the_end(), GUARD)
    assert s.messages == []
    assert s.comments[-1] == "end session_ended"


async def test_the_stream_ends_at_its_tokens_exp(sqlite_url: str, serve: Serve) -> None:
    api = await serve(sqlite_url)
    await new_session(api, "st-7")
    short = {"Authorization": "Bearer " + api.signer.mint("alice", ["user"], ttl=1)}
    async with api.http.get(api.url("/v1/sessions/st-7/stream"), headers=short) as response:
        s = Stream(response)
        await s.to_the_end()
    assert s.positions == [1]
    assert s.comments[-1] == "end token_expired"


async def test_a_users_watchers_past_the_budget_get_429_with_retry_after(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url, user_watchers=1)
    await new_session(api, "st-8")
    async with stream(api, "st-8") as s:
        await s.until_position(1)
        async with api.http.get(
            api.url("/v1/sessions/st-8/stream"), headers=api.auth("alice")
        ) as refused:
            assert refused.status == 429
            assert refused.headers["Retry-After"] == "1"
            assert (await refused.json())["error"]["code"] == "rate_limited"
        # Another user's budget is their own; a socket is not a watcher.
        async with stream(api, "st-8", **AUDITOR) as other:
            await other.until_position(1)
        sock = await open_live(api, "st-8", connection_id="st-8-tab")
        await sock.close()
    await eventually(lambda: asyncio.sleep(0, not api.server.app[WATCHERS]), "the watcher to end")
    async with stream(api, "st-8") as again:
        await again.until_position(1)


async def unread_watcher(
    api: Api, session_id: str, *, receive_buffer: int | None = None
) -> tuple[asyncio.StreamReader, asyncio.StreamWriter]:
    """A watcher of ``session_id``'s stream that reads nothing (with a small
    kernel receive buffer when ``receive_buffer`` is given), once the node
    counts it among its watchers."""
    host, port = api.server.host, api.server.port  # type: ignore[attr-defined]
    sock = socket.socket()
    if receive_buffer is not None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
    sock.setblocking(False)
    await asyncio.get_running_loop().sock_connect(sock, (host, port))
    reader, writer = await asyncio.open_connection(sock=sock)
    token = api.signer.mint("alice")
    writer.write(
        (
            f"GET /v1/sessions/{session_id}/stream HTTP/1.1\r\nHost: {host}\r\n"
            f"Authorization: Bearer {token}\r\n\r\n"
        ).encode()
    )
    watchers = api.server.app[WATCHERS]  # type: ignore[attr-defined]
    await eventually(lambda: asyncio.sleep(0, len(watchers) == 1), "the watcher")
    return reader, writer


async def test_a_watcher_that_stops_reading_is_ended_and_resumes_with_last_event_id(
    sqlite_url: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger="sessiond.stream")
    api = await serve(sqlite_url, send_queue_bytes=64 * 1024, send_queue_limit=50)
    await new_session(api, "st-9")
    reader, writer = await unread_watcher(api, "st-9")
    content = "x" * 32 * 1024
    # It reads nothing: its queue and the buffers fill until it is ended.
    for _ in range(200):
        if not api.server.app[WATCHERS]:
            break
        await post_messages(api.http, api.base_url, "st-9", 5, "big", content=content)
    await eventually(lambda: asyncio.sleep(0, not api.server.app[WATCHERS]), "its end")
    ended = [r for r in caplog.records if r.getMessage() == "stream ended"]
    assert [getattr(r, "reason", None) for r in ended] == ["slow_consumer"]
    # The server let go of it: what it had sent, then the end of the connection.
    async with asyncio.timeout(GUARD):
        await reader.read()
    writer.close()
    last = (await http_events(api, "st-9"))[-1]["position"]
    async with stream(api, "st-9", headers={"Last-Event-ID": "1"}) as s:
        await s.until_position(last)
    assert_dense(s.positions, 2, last)


async def test_a_watcher_that_never_reads_its_backlog_is_ended_at_the_answer_deadline(
    sqlite_url: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    """A watcher that asked for a backlog of large events and read nothing
    held its page (some 10 MB of the node's memory for 4 MiB of events) for
    as long as it kept its connection: 90 of them took a node to 1 GB. Its
    backlog has the same deadline as any large answer."""
    caplog.set_level(logging.INFO, logger="sessiond.stream")
    api = await serve(sqlite_url, answer_timeout=0.5)
    await new_session(api, "st-slow")
    await post_messages(api.http, api.base_url, "st-slow", 4, "big", content="x" * 1_000_000)
    _, writer = await unread_watcher(api, "st-slow", receive_buffer=4096)
    await eventually(lambda: asyncio.sleep(0, not api.server.app[WATCHERS]), "its end")
    ended = [r for r in caplog.records if r.getMessage() == "stream ended"]
    assert [getattr(r, "reason", None) for r in ended] == ["slow_consumer"]
    writer.close()


async def test_the_stream_ends_cleanly_at_shutdown(sqlite_url: str, serve: Serve) -> None:
    api = await serve(sqlite_url)
    await new_session(api, "st-10")
    async with stream(api, "st-10") as s:
        await s.until_position(1)
        closing = asyncio.create_task(api.server.close())
        await s.to_the_end()
        await closing
    assert s.comments[-1] == "end server_shutdown"


@pytest.mark.postgres
async def test_a_stream_on_one_node_sees_what_another_records_in_order(
    postgres_url: str, serve: Serve
) -> None:
    a = await serve(postgres_url, node_id="node-a")
    b = await serve(postgres_url, node_id="node-b")
    await new_session(b, "st-far")
    async with stream(a, "st-far", **AUDITOR) as s:
        acked = await post_messages(b.http, b.base_url, "st-far", 20, "from-b")
        await s.until_position(acked[-1])
    assert_dense(s.positions, 1, acked[-1])


async def test_the_python_watcher_reads_an_event_of_a_megabyte(
    sqlite_url: str, serve: Serve
) -> None:
    """An event's data line holds the whole event: a message of 1,000,000
    characters (the body limit allows it) is one line far past aiohttp's
    readline limit, and the watcher still yields it, then the session's end."""
    from service.client.stream import StreamWatcher

    api = await serve(sqlite_url)
    await new_session(api, "st-big")
    content = "x" * 1_000_000
    status, _ = await api.call(
        "POST", "/v1/sessions/st-big/messages", json={"role": "user", "content": content}
    )
    assert status == 201
    status, _ = await api.call("DELETE", "/v1/sessions/st-big")
    assert status == 200
    seen: list[dict[str, Any]] = []
    async with StreamWatcher(api.base_url, "st-big", api.signer.mint("alice", ["user"])) as w:
        async with asyncio.timeout(GUARD):
            async for event in w:
                seen.append(event)
    assert [e["type"] for e in seen] == ["SessionCreated", "MessageRecorded", "SessionEnded"]
    assert seen[1]["data"]["content"] == content
