"""Sessions: create, list, read, end; their messages, history and past states."""

from __future__ import annotations

import base64
import functools
import re
import uuid
from typing import Any

import orjson
from aiohttp import web

from domain.ids import is_valid_id, new_session_id, session_stream
from service.application import commands
from service.edge.context import BUDGETS, FOLDS, READMODELS, SETTINGS, STORE
from service.edge.contract import Link, operation
from service.edge.errors import ApiError
from service.edge.http.reads import caught_up, events_page, readable_session
from service.edge.requests import (
    body,
    json_response,
    path_id,
    principal,
    query,
    run_command,
    run_read,
    writer,
)
from service.edge.responses import MessageRecorded, SessionEvents, SessionPage, SessionView
from service.edge.schema import (
    CreateSession,
    EventsQuery,
    ListSessionsQuery,
    PostMessage,
    StateQuery,
)
from service.storage.wire import wire_view

routes = web.RouteTableDef()

# What a page of events is, for the OpenAPI document.
PAGE_DESCRIPTION = (
    "A page holds at most `limit` events and at most a few MiB of them "
    "(`SESSIOND_PAGE_BYTES`, 4 MiB unless set), but always one event when one "
    "is left: a page may be shorter than `limit` before the end. Ask again "
    "with `after` set to `next_after` (the last position returned); an empty "
    "`events` list is the end."
)

# What a client calls next with the session it created.
_SESSION = {"session_id": "$response.body#/session_id"}
SESSION_LINK = Link("get_session", _SESSION, "read the session")
MESSAGE_LINK = Link("post_message", _SESSION, "post a message to it")
TASK_LINK = Link("start_task", _SESSION, "start a task in it")


@routes.post("/v1/sessions")
@operation(
    summary="Create a session, or answer with the caller's own (idempotent)",
    body=CreateSession,
    answers={201: SessionView, 200: SessionView},
    errors=("forbidden", "session_owned_by_other"),
    links={201: {"session": SESSION_LINK, "post_message": MESSAGE_LINK, "start_task": TASK_LINK}},
)
async def create_session(request: web.Request) -> web.Response:
    actor = writer(request)
    sent = await body(request, CreateSession)
    session_id = sent.session_id or new_session_id()
    admit = request.app[BUDGETS].session_gate(actor.user_id)
    view, created = await run_command(
        request, commands.create_session(session_id, actor, sent.metadata, admit=admit)
    )
    return json_response(view, 201 if created else 200)


# Seconds a client asking for the session list while its tables are being
# rebuilt is told to wait (a rebuild refills about 100,000 events a second).
REBUILDING_RETRY = 1


@routes.get("/v1/sessions")
@operation(
    summary="The caller's sessions (an auditor's: all), newest first",
    query=ListSessionsQuery,
    answers={200: SessionPage},
)
async def list_sessions(request: web.Request) -> web.Response:
    actor = principal(request)
    asked = query(request, ListSessionsQuery)
    before = _decode_cursor(asked.cursor)
    head = await caught_up(request)
    owner = None if actor.is_auditor else actor.user_id
    limit = asked.limit
    rows, position = await run_read(
        request, request.app[READMODELS].tables.list_sessions_as_of, owner, limit + 1, before
    )
    if position < head:
        # The tables do not hold the head: this node's projector did not
        # reach it in time (it lags, or fails on a batch), or had it and the
        # tables are being rebuilt (``sessiond projections rebuild``). A list
        # has no other source; an incomplete one would be a wrong answer.
        # (Tables that hold the head answer, even with the projector failing.)
        raise ApiError(
            "unavailable",
            "the session list is behind the log (its tables lag or are being rebuilt); try again",
            retry_after=REBUILDING_RETRY,
        )
    next_cursor = _encode_cursor(rows[limit - 1]) if len(rows) > limit else None
    return json_response({"sessions": rows[:limit], "next_cursor": next_cursor})


def _encode_cursor(row: dict[str, Any]) -> str:
    raw = orjson.dumps([row["created_at"], row["session_id"]])
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


# A cursor's time, as the session view writes ``created_at``.
_CURSOR_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}\.[0-9]{6}Z")


def _decode_cursor(cursor: str | None) -> tuple[str, str] | None:
    """The (created_at, session_id) a cursor carries. Only what a cursor
    this service wrote can hold passes: anything else (a NUL, which
    PostgreSQL's text refuses, would be answered as the store's failure)
    is the client's mistake."""
    if not cursor:
        return None
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        created_at, session_id = orjson.loads(raw)
        if not isinstance(created_at, str) or not _CURSOR_TIME.fullmatch(created_at):
            raise ValueError
        if not is_valid_id(session_id):
            raise ValueError
    except (ValueError, TypeError, orjson.JSONDecodeError):
        raise ApiError("invalid_query", "cursor is not one this service handed out") from None
    return created_at, session_id


@routes.get("/v1/sessions/{session_id}")
@operation(
    summary="A session's view",
    answers={200: SessionView},
    errors=("invalid_id", "forbidden", "session_not_found"),
)
async def get_session(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    return json_response(await readable_session(request, session_id, actor))


@routes.delete("/v1/sessions/{session_id}")
@operation(
    summary="End a session (its owner only); its live sockets are closed 4403 session_ended",
    answers={200: SessionView},
    errors=("invalid_id", "forbidden", "session_not_found"),
)
async def end_session(request: web.Request) -> web.Response:
    actor = writer(request)
    session_id = path_id(request, "session_id")
    view = await run_command(request, commands.end_session(session_id, actor))
    return json_response(view)


@routes.post("/v1/sessions/{session_id}/messages")
@operation(
    summary="Record a message (a repeated message_id records nothing new)",
    body=PostMessage,
    answers={201: MessageRecorded, 200: MessageRecorded},
    errors=("forbidden", "session_not_found", "session_ended"),
)
async def post_message(request: web.Request) -> web.Response:
    actor = writer(request)
    session_id = path_id(request, "session_id")
    sent = await body(request, PostMessage)
    message_id = sent.message_id or "msg_" + uuid.uuid4().hex
    position, created = await run_command(
        request,
        commands.record_message(
            session_id,
            actor,
            message_id=message_id,
            role=sent.role,
            content=sent.content,
            model=sent.model,
            tokens=sent.token_count,
            metadata=sent.metadata,
        ),
    )
    return json_response({"position": position, "message_id": message_id}, 201 if created else 200)


@routes.get("/v1/sessions/{session_id}/events")
@operation(
    summary="A session's history in position order; an empty page is the end",
    query=EventsQuery,
    answers={200: SessionEvents},
    errors=("invalid_id", "forbidden", "session_not_found"),
    description=PAGE_DESCRIPTION,
)
async def session_events(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    asked = query(request, EventsQuery)
    await readable_session(request, session_id, actor)
    return await events_page(request, session_stream(session_id), asked.after, asked.limit)


@routes.get("/v1/sessions/{session_id}/state")
@operation(
    summary="A session's view as it stood right after position `at`",
    query=StateQuery,
    answers={200: SessionView},
    errors=("invalid_id", "forbidden", "session_not_found"),
)
async def session_state_at(request: web.Request) -> web.Response:
    actor = principal(request)
    session_id = path_id(request, "session_id")
    at = query(request, StateQuery).at
    current = await readable_session(request, session_id, actor)
    if at is None or at >= current["position"]:
        return json_response(current)
    read = functools.partial(
        request.app[STORE].get_session, session_id, at, max_bytes=request.app[SETTINGS].page_bytes
    )
    folds = request.app[FOLDS]
    async with folds.turn(actor.user_id):
        past = await run_read(request, read, executor=folds.executor)
    if past is None:
        raise ApiError("session_not_found", f"no session {session_id!r}")
    return json_response(wire_view(past.view()))
