"""A Python client for aiohttp users.

    async with SessionClient("http://127.0.0.1:8080", "session-1", token) as client:
        async for event in client:
            print(event["position"], event["type"], event["data"])

It opens a WebSocket on the session, walks the lifecycle, and yields the
session's events in order. When the socket drops (the server restarts, a
proxy cuts it, the server closes a slow consumer with 4408 or shuts down with
1001) it reconnects by itself with exponential backoff, resuming with
``after`` = the last position it yielded, so no position is ever yielded twice
or skipped. It stops for good on 4401/4403 (raising :class:`ClientRefused`)
and when superseded by a newer connection of the session (4409, raising
:class:`Superseded`).

``token`` is a string, or a *token provider*: a function, plain or async,
that returns one. A provider is asked on every (re)connect and whenever the
server sends ``token_expiring``, and the token it gives is sent on the live
socket as a refresh, so the socket outlives its first token:

    async def fresh_token() -> str:
        return await my_auth_service.token_for("alice")

    SessionClient("http://127.0.0.1:8080", "session-1", fresh_token)

A socket whose token expired anyway (closed 4401 ``token_expired``) is
reconnected with a token asked for again, resuming with ``after``; a 4401 for
that new token stops the client with ClientRefused. An exception raised by
the provider ends the iteration with it, except a network error
(ConnectionError, TimeoutError, aiohttp's ClientError), which is taken as a
dropped connection and tried again after the backoff.

An upgrade the server refuses for good (HTTP 400, 401, 403 or 404: an ID it
does not take, an origin it does not allow, a session it does not know)
stops the client with ClientRefused too; one it refuses for now (429, 503) is
tried again after the ``Retry-After`` it sent, or the backoff if longer.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
import logging
import random
import uuid
from collections.abc import AsyncIterator, Awaitable, Callable
from types import TracebackType
from typing import Any, Self
from urllib.parse import quote

import aiohttp
from yarl import URL

log = logging.getLogger("sessiond.client")

RETRYABLE_CLOSES = {1001, 1006, 1011, 1012, 1013, 4408}
# HTTP answers to the upgrade that no retry of the same request changes.
REFUSED_UPGRADES = (400, 401, 403, 404)

TokenProvider = Callable[[], str] | Callable[[], Awaitable[str]]


def api_url(base_url: str, *segments: str) -> URL:
    """``base_url`` with ``/segment/...`` appended to its path, each segment
    percent-encoded on its own, as a URL aiohttp sends as it is.

    An ID may be ``.`` or ``..`` (the contract's grammar allows both), which a
    URL library takes for dot segments and removes: yarl turns
    ``/v1/sessions/./stream`` into ``/v1/sessions/stream``, a call on another
    resource. Such a segment is sent as ``%2E`` or ``%2E%2E``, which the
    server decodes back to the ID; every other character the grammar allows
    is sent as it is."""
    base = URL(base_url)
    path = base.raw_path.rstrip("/") + "".join("/" + _segment(s) for s in segments)
    return base.with_path(path, encoded=True)


def _segment(text: str) -> str:
    if text in (".", ".."):
        return "%2E" * len(text)
    return quote(text, safe="-._~:@!$&'()*+,;=")


async def fresh_token(token: str | TokenProvider) -> str:
    """``token``, or its provider's answer now."""
    if isinstance(token, str):
        return token
    answer = token()
    if inspect.isawaitable(answer):
        answer = await answer
    return answer


def _retry_after(headers: Any) -> float:
    """The seconds a refusal's ``Retry-After`` asks for (0 without one)."""
    try:
        return max(0.0, float((headers or {}).get("Retry-After", 0)))
    except (TypeError, ValueError):
        return 0.0


class ClientRefused(Exception):
    """The server refused this client for good: a bad or expired token (4401),
    another user's session, an ended session or a kick (4403, the reason
    says which), or an upgrade it will not take (HTTP 400, 401, 403, 404;
    ``code`` is then the status)."""

    def __init__(self, code: int | None, reason: str) -> None:
        super().__init__(f"refused with {code}: {reason}")
        self.code = code
        self.reason = reason


class Superseded(Exception):
    """A newer connection of the same session replaced this one (4409)."""


class HttpUser:
    """Holds an aiohttp session: the one it was given, or one of its own,
    opened on entering and closed by :meth:`close`."""

    def __init__(self, http: aiohttp.ClientSession | None) -> None:
        self._http = http
        self._own_http = http is None

    async def __aenter__(self) -> Self:
        if self._http is None:
            self._http = aiohttp.ClientSession()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        if self._own_http and self._http is not None:
            await self._http.close()
            self._http = None


class SessionClient(HttpUser):
    def __init__(
        self,
        base_url: str,
        session_id: str,
        token: str | TokenProvider,
        *,
        after: int = 0,
        connection_prefix: str | None = None,
        http: aiohttp.ClientSession | None = None,
        min_backoff: float = 0.05,
        max_backoff: float = 5.0,
        max_attempts: int | None = None,
        heartbeat: float | None = 30.0,
    ) -> None:
        """``max_attempts``: give up (ConnectionError) after that many attempts
        in a row that did not reach PROCESSING_READY (None: never give up).
        ``heartbeat``: ping the server this often, so a connection that died
        without a close (a vanished host, a NAT that forgot it) is noticed and
        resumed instead of waited on forever."""
        self.base_url = base_url.rstrip("/")
        self.session_id = session_id
        self.token = token
        # Until when the current socket's token holds (Unix seconds), as the
        # server last said (token_expiring, token); None before it has.
        self.token_exp: int | None = None
        self.last_position = after
        self.connection_prefix = connection_prefix or "py-" + uuid.uuid4().hex[:12]
        self.connection_id: str | None = None
        self.state = "CLOSED"
        # The server's last word on the current or last connection.
        self.close_code: int | None = None
        self.close_reason = ""
        self.attempts = 0  # connections tried, in all
        self.failures = 0  # attempts in a row that did not reach PROCESSING_READY
        self.reconnects = 0
        super().__init__(http)
        self._ws: aiohttp.ClientWebSocketResponse | None = None
        self._min_backoff = min_backoff
        self._max_backoff = max_backoff
        self._max_attempts = max_attempts
        self._heartbeat = heartbeat
        self._closed = False
        self._live = asyncio.Event()
        # Set once the client has stopped for good (refused, superseded,
        # given up, closed): nothing waits for a live socket after that.
        self._stopped = asyncio.Event()

    async def close(self) -> None:
        self._closed = True
        self._stopped.set()
        if self._ws is not None and not self._ws.closed:
            await self._ws.close()
        await super().close()
        self.state = "CLOSED"

    async def wait_live(self) -> None:
        """Wait until the current connection is in PROCESSING_READY; raise
        ConnectionError once the client has stopped for good (refused,
        superseded, given up or closed). The client connects while it is
        iterated: something must be iterating it."""
        if self._live.is_set():
            return
        live = asyncio.ensure_future(self._live.wait())
        stopped = asyncio.ensure_future(self._stopped.wait())
        try:
            await asyncio.wait({live, stopped}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            live.cancel()
            stopped.cancel()
        if not self._live.is_set():
            raise ConnectionError("the client has stopped; it will not be live again")

    async def send_message(
        self, content: str, *, role: str = "user", message_id: str | None = None
    ) -> str:
        """Send a message frame on the live socket; returns its message_id.

        The message comes back as an event like every other (the sender's
        socket included); a repeated message_id is recorded once. A frame the
        server refuses (too large, the store down) is answered with an error
        frame, which the client logs: the event coming back is what says the
        message was recorded.
        """
        await self.wait_live()
        assert self._ws is not None
        message_id = message_id or "msg_" + uuid.uuid4().hex
        await self._ws.send_json(
            {"type": "message", "role": role, "content": content, "message_id": message_id}
        )
        return message_id

    async def fresh_token(self) -> str:
        """A token to send: the string given, or the provider's answer now."""
        return await fresh_token(self.token)

    def __aiter__(self) -> AsyncIterator[dict[str, Any]]:
        return self._events()

    async def _events(self) -> AsyncIterator[dict[str, Any]]:
        try:
            async for event in self._connections():
                yield event
        finally:
            self._stopped.set()

    async def _connections(self) -> AsyncIterator[dict[str, Any]]:
        backoff = self._min_backoff
        while not self._closed:
            if self._max_attempts is not None and self.failures >= self._max_attempts:
                raise ConnectionError(f"gave up after {self.failures} attempts in a row")
            self.attempts += 1
            went_live = False
            wait = 0.0  # what the server asked for, if it refused the upgrade for now
            try:
                async for event in self._one_connection():
                    went_live = True
                    yield event
            except aiohttp.WSServerHandshakeError as e:
                self.close_code, self.close_reason = None, f"upgrade refused: HTTP {e.status}"
                if e.status in REFUSED_UPGRADES:
                    raise ClientRefused(e.status, self.close_reason) from None
                wait = _retry_after(e.headers)
                log.info("upgrade refused", extra={"session_id": self.session_id, "error": e})
            except (TimeoutError, aiohttp.ClientError, ConnectionError) as e:
                log.info("connection lost", extra={"session_id": self.session_id, "error": e})
            finally:
                went_live = went_live or self._live.is_set()
                self._live.clear()
                self.state = "CLOSED"
            if self._closed:
                return
            if went_live:
                # A connection that worked: the next attempt is a fresh start.
                self.failures = 0
                backoff = self._min_backoff
            else:
                self.failures += 1
            self.reconnects += 1
            await asyncio.sleep(max(wait, backoff * (0.5 + random.random())))
            backoff = min(self._max_backoff, backoff * 2)

    async def _one_connection(self) -> AsyncIterator[dict[str, Any]]:
        assert self._http is not None, "use 'async with SessionClient(...)'"
        self.connection_id = f"{self.connection_prefix}.{self.attempts}"
        url = (
            f"{self.base_url}/v1/ws?session_id={self.session_id}"
            f"&connection_id={self.connection_id}&after={self.last_position}"
        )
        self.close_code, self.close_reason = None, ""
        async with self._http.ws_connect(url, heartbeat=self._heartbeat) as ws:
            self._ws = ws
            async for msg in ws:
                if msg.type != aiohttp.WSMsgType.TEXT:
                    break
                frame = msg.json()
                kind = frame.get("type")
                if kind == "welcome":
                    self.state = frame.get("state", "ACCEPTED")
                    await ws.send_json({"type": "auth", "token": await self.fresh_token()})
                elif kind in ("token", "token_expiring"):
                    self.token_exp = frame.get("exp")
                    if kind == "token_expiring" and not isinstance(self.token, str):
                        # A refresh: the server answers with a ``token`` frame.
                        await ws.send_json({"type": "auth", "token": await self.fresh_token()})
                elif kind == "error":
                    log.info(
                        "error frame",
                        extra={"session_id": self.session_id, "code": frame.get("code")},
                    )
                elif kind == "state":
                    self.state = frame["state"]
                    if self.state == "PROCESSING_READY":
                        self._live.set()
                    elif self.state == "CLOSED":
                        self._live.clear()
                        self.close_reason = str(frame.get("reason") or "")
                elif kind == "event":
                    event = frame["event"]
                    position = event["position"]
                    if position <= self.last_position:
                        continue
                    if position != self.last_position + 1:
                        # Never skip: drop this socket and resume from the last one seen.
                        log.warning(
                            "gap in positions; resuming",
                            extra={"session_id": self.session_id, "position": position},
                        )
                        await ws.close()
                        return
                    self.last_position = position
                    yield event
            code = ws.close_code
            # The reason: the server's CLOSED frame says it best; else the
            # close frame's message, or the error that ended the socket.
            reason = self.close_reason
            if not reason:
                with contextlib.suppress(Exception):
                    reason = str(ws.exception() or "")
        self._ws = None
        self.close_code, self.close_reason = code, reason
        if code == 4409:
            raise Superseded(f"connection {self.connection_id} was superseded")
        if code == 4401 and reason == "token_expired":
            # Reconnect with a token asked for again (refused: ClientRefused).
            log.info("token expired", extra={"session_id": self.session_id})
            return
        if code in (4401, 4403):
            raise ClientRefused(code, reason)
        if code == 1000 and self._closed:
            return
        if code is not None and code not in RETRYABLE_CLOSES and code != 1000:
            log.info("closed", extra={"session_id": self.session_id, "code": code})
