"""Watching a session from Python through its event stream
(``GET /v1/sessions/{id}/stream``, Server-Sent Events), as ``sessiond tail``
does:

    async with StreamWatcher("http://127.0.0.1:8080", "session-1", token) as watcher:
        async for event in watcher:
            print(event["position"], event["type"], event["data"])

A watcher records nothing on the server. When the stream ends for a reason
that is not the session's end (the server restarts, a proxy cuts it, the
watcher fell behind, its token expired) it is asked for again with
``Last-Event-ID`` = the last position yielded, after a backoff with jitter,
so no position is yielded twice or skipped. Iteration ends when the session
has ended (its ``SessionEnded`` was yielded, or the server answers 204); an
answer of 400, 401, 403 or 404 stops it with :class:`~service.client.ClientRefused`.
``token`` is a string or a token provider, asked on every (re)connect.

The parsing follows the event-stream format of the HTML standard (fields,
comments, a blank line ends a message); the server writes one ``data`` line
per message.
"""

from __future__ import annotations

import asyncio
import logging
import random
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from typing import Any

import aiohttp
import orjson

from service.client import ClientRefused, HttpUser, TokenProvider, api_url, fresh_token

log = logging.getLogger("sessiond.client")

# Answers that end the watch for good: the token, the rights, the session.
REFUSALS = (400, 401, 403, 404)


@dataclass(frozen=True, slots=True)
class Message:
    """One message of an event stream."""

    event: str
    data: str
    id: str | None


@dataclass(frozen=True, slots=True)
class Comment:
    """A comment line (``: ping``, ``: end <reason>``)."""

    text: str


class EventStreamParser:
    """The event-stream format, a line at a time (line ends removed)."""

    def __init__(self) -> None:
        self._event = ""
        self._data: list[str] = []
        self._id: str | None = None

    def line(self, line: str) -> Message | Comment | None:
        if not line:
            return self._dispatch()
        if line.startswith(":"):
            return Comment(line[1:].strip())
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "event":
            self._event = value
        elif field == "data":
            self._data.append(value)
        elif field == "id" and "\0" not in value:
            self._id = value
        return None

    def _dispatch(self) -> Message | None:
        if not self._data:
            self._event = ""
            return None
        message = Message(self._event or "message", "\n".join(self._data), self._id)
        self._event, self._data = "", []
        return message


async def read_event_stream(
    content: aiohttp.StreamReader,
) -> AsyncIterator[Message | Comment]:
    """The messages and comments of an event-stream body, as they arrive."""
    parser = EventStreamParser()
    # Lines are split here, not by the reader's readline, which refuses a
    # line past its buffer's limit (512 KiB): an event's data line holds the
    # whole event, and a message may be 1 MiB.
    pending = bytearray()
    async for chunk in content.iter_any():
        pending += chunk
        lines = pending.split(b"\n")
        pending = lines.pop()
        for raw in lines:
            found = parser.line(raw.decode().rstrip("\r"))
            if found is not None:
                yield found


class StreamWatcher(HttpUser):
    def __init__(
        self,
        base_url: str,
        session_id: str,
        token: str | TokenProvider,
        *,
        after: int = 0,
        http: aiohttp.ClientSession | None = None,
        min_backoff: float = 0.2,
        max_backoff: float = 5.0,
        on_status: Callable[[str], None] | None = None,
    ) -> None:
        """``on_status`` is told, in a line of text, when the stream is lost
        and when it is asked for again."""
        self.base_url = base_url.rstrip("/")
        self.session_id = session_id
        self.token = token
        self.last_position = after
        self.ended = False  # the session has ended: nothing more will come
        self.end_reason = ""  # the server's last ``: end <reason>``
        self.connects = 0
        super().__init__(http)
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._on_status = on_status or (lambda text: None)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        backoff = self._min_backoff
        while not self.ended:
            delivered = False
            try:
                async for event in self._one_stream():
                    delivered = True
                    yield event
                why = self.end_reason or "the stream ended"
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                why = str(e) or type(e).__name__
            if self.ended:
                return
            if delivered:
                backoff = self._min_backoff
            wait = backoff * (0.5 + random.random())
            self._on_status(f"{why}; resuming after position {self.last_position} in {wait:.1f} s")
            await asyncio.sleep(wait)
            backoff = min(self._max_backoff, backoff * 2)

    async def _one_stream(self) -> AsyncIterator[dict[str, Any]]:
        assert self._http is not None, "use 'async with StreamWatcher(...)'"
        self.connects += 1
        self.end_reason = ""
        headers = {
            "Authorization": f"Bearer {await fresh_token(self.token)}",
            "Accept": "text/event-stream",
            "Last-Event-ID": str(self.last_position),
        }
        url = api_url(self.base_url, "v1", "sessions", self.session_id, "stream")
        timeout = aiohttp.ClientTimeout(total=None, sock_connect=10)
        async with self._http.get(url, headers=headers, timeout=timeout) as response:
            if response.status == 204:
                self.ended = True
                return
            if response.status in REFUSALS:
                raise ClientRefused(response.status, await _error_text(response))
            if response.status != 200:
                raise ConnectionError(f"the server answered {response.status}")
            if self.connects > 1:
                self._on_status(f"resumed after position {self.last_position}")
            async for item in read_event_stream(response.content):
                if isinstance(item, Comment):
                    if item.text.startswith("end "):
                        self.end_reason = item.text.removeprefix("end ")
                    continue
                event: dict[str, Any] = orjson.loads(item.data)
                position = event["position"]
                if position <= self.last_position:
                    continue
                if position != self.last_position + 1:
                    # Never skip: ask again from the last position seen.
                    raise ConnectionError(f"position {position} after {self.last_position}")
                self.last_position = position
                if event["type"] == "SessionEnded":
                    self.ended = True
                yield event


async def _error_text(response: aiohttp.ClientResponse) -> str:
    """The contract's error message, or the status when there is none."""
    try:
        body = await response.json(content_type=None)
        return f"{body['error']['code']}: {body['error']['message']}"
    except (ValueError, KeyError, TypeError, aiohttp.ClientError):
        return f"HTTP {response.status}"
