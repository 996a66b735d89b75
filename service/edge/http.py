"""HTTP handlers for the /v1 API of PROTOCOL.md.

Handlers are short: authenticate, validate, then either run a command on the
writer or a read on the reader pool. Every failure is an ApiError with the
documented shape; a client's mistake is never a 500.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import math
import uuid
from collections.abc import Callable
from typing import Any, TypeVar

import orjson
from aiohttp import web

from domain.errors import DomainError, InvalidId, SessionNotFound
from domain.ids import check_id, connection_stream, new_session_id, session_stream
from domain.session import MESSAGE_ROLES
from service.application import commands
from service.application.auth import AuthError, Principal, bearer_token
from service.application.writer import Command, StoreUnavailable
from service.edge.context import (
    METRICS,
    READERS,
    READMODELS,
    SETTINGS,
    SIGNER,
    STORE,
    STORE_CONFIG,
    WRITER,
)
from service.edge.errors import ApiError
from service.storage.wire import dumps, wire_view

T = TypeVar("T")

routes = web.RouteTableDef()

# How long a view waits for the projection to include the latest write before
# answering from the log instead.
VIEW_PATIENCE = 5.0

MISSING = object()


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, headers=_JSON_HEADERS)


_JSON_HEADERS = {"Content-Type": "application/json"}


# --- plumbing -------------------------------------------------------------------


def principal(request: web.Request) -> Principal:
    try:
        token = bearer_token(request.headers.get("Authorization"))
        return request.app[SIGNER].verify(token)
    except AuthError as e:
        raise ApiError("unauthenticated", str(e)) from None


async def run_command(request: web.Request, command: Command[T]) -> T:
    try:
        return await request.app[WRITER].execute(command)
    except DomainError as e:
        raise ApiError(e.code, e.message) from None
    except StoreUnavailable as e:
        raise ApiError("unavailable", str(e)) from None


async def run_read(request: web.Request, fn: Callable[..., T], *args: Any) -> T:
    loop = asyncio.get_running_loop()
    try:
        return await loop.run_in_executor(request.app[READERS], fn, *args)
    except DomainError as e:
        raise ApiError(e.code, e.message) from None
    except Exception as e:
        raise ApiError("unavailable", f"store unavailable: {type(e).__name__}: {e}") from None


def path_id(request: web.Request, name: str) -> str:
    try:
        return check_id(request.match_info[name], name)
    except InvalidId as e:
        raise ApiError("invalid_id", e.message) from None


def query_int(
    request: web.Request, name: str, default: int, *, minimum: int = 0, maximum: int | None = None
) -> int:
    raw = request.query.get(name)
    if raw is None or raw == "":
        return default
    try:
        value = int(raw)
    except ValueError:
        raise ApiError("invalid_query", f"{name} must be a whole number, got {raw!r}") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ApiError("invalid_query", f"{name} must be {bound}, got {value}")
    return value


async def json_body(request: web.Request, allowed: dict[str, str]) -> dict[str, Any]:
    """The request's JSON object, with only ``allowed`` fields, each of its kind.

    Kinds: "str", "id", "object", "int", "number", "any"; a trailing "!" marks a
    required field. An empty body counts as ``{}``.
    """
    ctype = request.headers.get("Content-Type", "")
    raw = await request.read()
    if raw and ctype and not ctype.split(";")[0].strip().lower().endswith(("/json", "+json")):
        raise ApiError("unsupported_media_type", f"send application/json, not {ctype!r}")
    if not raw.strip():
        body: Any = {}
    else:
        try:
            body = orjson.loads(raw)
        except orjson.JSONDecodeError as e:
            raise ApiError("invalid_json", f"the body is not valid JSON: {e}") from None
    if not isinstance(body, dict):
        raise ApiError("invalid_body", "the body must be a JSON object")
    if not body.keys() <= allowed.keys():
        unknown = sorted(set(body) - set(allowed))
        raise ApiError(
            "invalid_body",
            f"unknown field(s): {', '.join(unknown)}; allowed: {', '.join(sorted(allowed))}",
        )
    for name, kind, required in _specs(tuple(allowed.items())):
        value = body.get(name, MISSING)
        if value is MISSING:
            if required:
                raise ApiError("invalid_body", f"{name} is required")
            continue
        if value is None and not required and kind != "any":
            body.pop(name)
            continue
        _check_kind(name, kind, value)
    return body


@functools.cache
def _specs(allowed: tuple[tuple[str, str], ...]) -> tuple[tuple[str, str, bool], ...]:
    """Each field's (name, kind, required), parsed once per distinct spec."""
    return tuple((name, spec.rstrip("!"), spec.endswith("!")) for name, spec in allowed)


def _check_kind(name: str, kind: str, value: Any) -> None:
    problem = None
    if kind in ("str", "id") and not isinstance(value, str):
        problem = "must be a string"
    elif kind == "object" and not isinstance(value, dict):
        problem = "must be a JSON object"
    elif kind == "int" and (isinstance(value, bool) or not isinstance(value, int)):
        problem = "must be a whole number"
    elif kind == "number" and (
        isinstance(value, bool) or not isinstance(value, int | float) or not math.isfinite(value)
    ):
        problem = "must be a number"
    if problem is not None:
        raise ApiError("invalid_body", f"{name} {problem}")
    if kind == "id":
        try:
            check_id(value, name)
        except InvalidId as e:
            raise ApiError("invalid_id", e.message) from None


# --- sessions -------------------------------------------------------------------


@routes.post("/v1/sessions")
async def create_session(request: web.Request) -> web.Response:
    actor = principal(request)
    body = await json_body(request, {"session_id": "id", "metadata": "object"})
    session_id = body.get("session_id") or new_session_id()
    view, created = await run_command(
        request, commands.create_session(session_id, actor, body.get("metadata"))
    )
    return json_response(view, 201 if created else 200)


async def _caught_up(request: web.Request) -> bool:
    """Wait until the read models hold every event recorded so far (read your
    writes, also those made through another node); False if they lag."""
    head = await run_read(request, request.app[STORE].ping)
    return await request.app[READMODELS].wait_for(head, VIEW_PATIENCE)


async def _session_view(request: web.Request, session_id: str) -> dict[str, Any] | None:
    """The session view from the projection, or from the log if it lags."""
    if await _caught_up(request):
        return await run_read(request, request.app[READMODELS].tables.session, session_id)
    session = await run_read(request, request.app[STORE].get_session, session_id)
    return None if session is None else wire_view(session.view())


async def _readable_session(
    request: web.Request, session_id: str, actor: Principal
) -> dict[str, Any]:
    view = await _session_view(request, session_id)
    if view is None:
        raise ApiError("session_not_found", f"no session {session_id!r}")
    if not actor.can_read(view["owner"]):
        raise ApiError("forbidden", f"session {session_id!r} belongs to another user")
    return view


@routes.get("/v1/sessions")
async def list_sessions(request: web.Request) -> web.Response:
    actor = principal(request)
    limit = query_int(request, "limit", 50, minimum=1, maximum=500)
    before = _decode_cursor(request.query.get("cursor"))
    await _caught_up(request)
    owner = None if actor.is_auditor else actor.user_id
    rows = await run_read(
        request, request.app[READMODELS].tables.list_sessions, owner, limit + 1, before
    )
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return json_response({"sessions": rows[:limit], "next_cursor": next_cursor})


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = orjson.dumps([row["created_at"], row["session_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode_cursor(cursor: str | None) -> tuple[str, str] | None:
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, session_id = orjson.loads(raw)
        if not isinstance(created_at, str) or not isinstance(session_id, str):
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ApiError("invalid_query", "cursor is not one this service handed out") from None
    return created_at, session_id


@routes.get("/v1/sessions/{session_id}")
async def get_session(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    return json_response(await _readable_session(request, session_id, actor))


@routes.delete("/v1/sessions/{session_id}")
async def end_session(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    view = await run_command(request, commands.end_session(session_id, actor))
    return json_response(view)


@routes.post("/v1/sessions/{session_id}/messages")
async def post_message(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    body = await json_body(
        request,
        {
            "role": "str!",
            "content": "str!",
            "message_id": "id",
            "model": "str",
            "tokens": "int",
            "metadata": "object",
        },
    )
    if body["role"] not in MESSAGE_ROLES:
        raise ApiError("invalid_body", f"role must be one of {', '.join(MESSAGE_ROLES)}")
    message_id = body.get("message_id") or "msg_" + uuid.uuid4().hex
    position, created = await run_command(
        request,
        commands.record_message(
            session_id,
            actor,
            message_id=message_id,
            role=body["role"],
            content=body["content"],
            model=body.get("model"),
            tokens=body.get("tokens"),
            metadata=body.get("metadata"),
        ),
    )
    return json_response({"position": position, "message_id": message_id}, 201 if created else 200)


@routes.post("/v1/sessions/{session_id}/tasks")
async def start_task(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    body = await json_body(request, {"task_id": "id", "name": "str!", "total": "number"})
    task_id = body.get("task_id") or "task_" + uuid.uuid4().hex
    position, created = await run_command(
        request,
        commands.start_task(
            session_id, actor, task_id=task_id, name=body["name"], total=body.get("total")
        ),
    )
    return json_response({"task_id": task_id, "position": position}, 201 if created else 200)


@routes.post("/v1/sessions/{session_id}/tasks/{task_id}/progress")
async def task_progress(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    task_id = path_id(request, "task_id")
    body = await json_body(request, {"done": "number!", "total": "number", "note": "str"})
    position = await run_command(
        request,
        commands.report_progress(
            session_id,
            actor,
            task_id=task_id,
            done=body["done"],
            total=body.get("total"),
            note=body.get("note"),
        ),
    )
    return json_response({"position": position}, 202)


@routes.post("/v1/sessions/{session_id}/tasks/{task_id}/complete")
async def task_complete(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    task_id = path_id(request, "task_id")
    body = await json_body(request, {"result": "any"})
    position = await run_command(
        request,
        commands.complete_task(session_id, actor, task_id=task_id, result=body.get("result")),
    )
    return json_response({"position": position})


@routes.post("/v1/sessions/{session_id}/tasks/{task_id}/fail")
async def task_fail(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    task_id = path_id(request, "task_id")
    body = await json_body(request, {"error": "str!"})
    position = await run_command(
        request, commands.fail_task(session_id, actor, task_id=task_id, error=body["error"])
    )
    return json_response({"position": position})


@routes.get("/v1/sessions/{session_id}/events")
async def session_events(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    after = query_int(request, "after", 0)
    limit = query_int(request, "limit", 100, minimum=1, maximum=1000)
    await _readable_session(request, session_id, actor)
    app = request.app[STORE]
    read = functools.partial(
        app.stream_wire_events, session_stream(session_id), after=after, limit=limit
    )
    wire = await run_read(request, read)
    next_after = wire[-1]["position"] if wire else after
    return json_response({"events": wire, "next_after": next_after})


@routes.get("/v1/sessions/{session_id}/state")
async def session_state_at(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    at = query_int(request, "at", 0, minimum=1) if request.query.get("at") else None
    current = await _readable_session(request, session_id, actor)
    if at is None or at >= current["position"]:
        return json_response(current)
    app = request.app[STORE]
    past = await run_read(request, app.get_session, session_id, at)
    if past is None:
        raise SessionNotFound(f"no session {session_id!r}")
    return json_response(wire_view(past.view()))


# --- connections ------------------------------------------------------------------


async def _readable_connection(
    request: web.Request, connection_id: str, actor: Principal
) -> dict[str, Any]:
    if await _caught_up(request):
        view = await run_read(request, request.app[READMODELS].tables.connection, connection_id)
    else:
        connection = await run_read(request, request.app[STORE].get_connection, connection_id)
        view = None if connection is None else wire_view(connection.view())
    if view is None:
        raise ApiError("connection_not_found", f"no connection {connection_id!r}")
    if actor.is_auditor or actor.is_service or view["user_id"] == actor.user_id:
        return view
    session = await _session_view(request, view["session_id"])
    if session is not None and session["owner"] == actor.user_id:
        return view
    raise ApiError("forbidden", f"connection {connection_id!r} belongs to another user")


@routes.get("/v1/connections/{connection_id}")
async def get_connection(request: web.Request) -> web.Response:
    actor = principal(request)
    connection_id = path_id(request, "connection_id")
    return json_response(await _readable_connection(request, connection_id, actor))


@routes.get("/v1/connections/{connection_id}/events")
async def connection_events(request: web.Request) -> web.Response:
    actor = principal(request)
    connection_id = path_id(request, "connection_id")
    await _readable_connection(request, connection_id, actor)
    app = request.app[STORE]
    events = await run_read(request, app.stream_wire_events, connection_stream(connection_id))
    return json_response({"events": events})


# --- operations -------------------------------------------------------------------


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    app = request.app[STORE]
    try:
        await run_read(request, app.ping)
    except ApiError as e:
        raise ApiError("unavailable", e.message) from None
    settings = request.app[SETTINGS]
    return json_response(
        {"status": "ok", "node": settings.node_id, "store": request.app[STORE_CONFIG].kind}
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    return web.Response(
        text=request.app[METRICS].render(), content_type="text/plain", charset="utf-8"
    )
