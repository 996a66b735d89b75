"""One access line per HTTP request, and its span when tracing is on.

The line is in the logger ``sessiond.access`` (silenced alone by
``SESSIOND_ACCESS_LOG=off``) at INFO: the method, the route's path template
(``/v1/sessions/{session_id}/messages``, never the raw path: no query, so no
token, and a bounded set of values), the status, the duration in
milliseconds, and what the request is about when known: the user (the
token's subject, once a handler verified it), the session and the connection
(from the path, when they are valid IDs, or set by the handler, as the
WebSocket endpoint does). Headers are never logged. The line of a socket's
end is written by the shell (service/edge/ws.py).

See docs/adr/0035-log-json-lines-and-one-access-line-per-request.md.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

from aiohttp import web

from domain.ids import is_valid_id
from service.edge.context import TRACER
from service.runtime import tracing
from service.runtime.logs import ACCESS

access_log = logging.getLogger(ACCESS)

# What an access line says when no route matched (404, 405): the raw path is
# the client's, and not a template.
UNMATCHED = "-"
# nginx's status for a request whose client went away before its answer.
CLIENT_GONE = 499


@dataclass(slots=True)
class Access:
    """What a request is about, filled in as its handler learns it."""

    user: str | None = None
    session_id: str | None = None
    connection_id: str | None = None
    # The status already sent when the handler ends by cancellation (a
    # socket's 101, whose handler aiohttp cancels when its transport goes).
    sent: int | None = None


ACCESS_KEY = web.RequestKey("access", Access)


def about(request: web.Request) -> Access | None:
    """The request's access facts, for its handler to add to; None when
    neither the access line nor a span wants them."""
    return request.get(ACCESS_KEY)


def note_user(request: web.Request, user: str) -> None:
    facts = request.get(ACCESS_KEY)
    if facts is not None:
        facts.user = user


def route_template(request: web.Request) -> str:
    resource = request.match_info.route.resource
    return UNMATCHED if resource is None else resource.canonical


def _path_id(match_info: web.UrlMappingMatchInfo, name: str) -> str | None:
    value = match_info.get(name)
    return value if value is not None and is_valid_id(value) else None


def _fields(facts: Access) -> dict[str, Any]:
    fields: dict[str, Any] = {}
    if facts.user is not None:
        fields["user"] = facts.user
    if facts.session_id is not None:
        fields["session_id"] = facts.session_id
    if facts.connection_id is not None:
        fields["connection_id"] = facts.connection_id
    return fields


@web.middleware
async def access_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """The outermost layer: it sees every answer as sent, errors included."""
    tracer = request.app[TRACER]
    logged = access_log.isEnabledFor(logging.INFO)
    if not logged and not tracer.enabled:
        return await handler(request)
    started = time.monotonic()
    template = route_template(request)
    match_info = request.match_info
    facts = Access(
        session_id=_path_id(match_info, "session_id"),
        connection_id=_path_id(match_info, "connection_id"),
    )
    request[ACCESS_KEY] = facts
    status = 500
    with tracer.span(
        f"{request.method} {template}",
        {"http.request.method": request.method, "http.route": template},
        kind="server",
        carrier=request.headers,
    ) as span:
        try:
            response = await handler(request)
            status = response.status
            return response
        except web.HTTPException as e:
            status = e.status
            raise
        except asyncio.CancelledError:
            status = facts.sent or CLIENT_GONE
            raise
        finally:
            fields = _fields(facts)
            if tracer.enabled:
                span.set_attribute("http.response.status_code", status)
                for key, name in (
                    ("user", tracing.USER),
                    ("session_id", tracing.SESSION),
                    ("connection_id", tracing.CONNECTION),
                ):
                    if key in fields:
                        span.set_attribute(name, fields[key])
            if logged:
                access_log.info(
                    "%s %s %s",
                    request.method,
                    template,
                    status,
                    extra={
                        "method": request.method,
                        "path": template,
                        "status": status,
                        "duration_ms": round((time.monotonic() - started) * 1000, 3),
                        **fields,
                    },
                )
