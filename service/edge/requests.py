"""What every HTTP handler does at the edge: who is calling, what they sent
(decoded by the one schema, service/edge/schema.py), and how a command or a
read reaches the application. Every failure is an ApiError in the contract's
shape; a client's mistake is never a 500."""

from __future__ import annotations

from collections.abc import Callable
from concurrent.futures import Executor
from typing import Any, TypeVar

from aiohttp import web

from domain.errors import DomainError, InvalidId
from domain.ids import check_id
from service.application.auth import AuthError, Principal, bearer_token
from service.application.budgets import RateLimited
from service.application.writer import Command, StoreUnavailable
from service.edge.access import note_user
from service.edge.budgets import client_address, rate_limited, read_body
from service.edge.context import BUDGETS, HEALTH, READERS, SIGNER, WRITER
from service.edge.errors import ApiError
from service.edge.schema import SchemaError, decode_body, decode_query
from service.storage.wire import dumps

T = TypeVar("T")

_JSON_HEADERS = {"Content-Type": "application/json"}


def json_response(body: Any, status: int = 200) -> web.Response:
    return web.Response(body=dumps(body), status=status, headers=_JSON_HEADERS)


def principal(request: web.Request) -> Principal:
    """The caller, by its token. Without a valid one: 401, or 429 once the
    client's address has spent its budget of such requests."""
    try:
        token = bearer_token(request.headers.get("Authorization"))
        caller = request.app[SIGNER].verify(token)
    except AuthError as e:
        budget = request.app[BUDGETS].unauthenticated
        wait = budget.take(client_address(request))
        if wait:
            raise rate_limited(
                f"too many requests without a valid token from this address ({budget.rate})",
                wait,
            ) from None
        raise ApiError("unauthenticated", str(e)) from None
    note_user(request, caller.user_id)
    return caller


def writer(request: web.Request) -> Principal:
    """The caller of a write (every POST and DELETE), which spends one of its
    user's writes: 429 once they are spent."""
    actor = principal(request)
    budgets = request.app[BUDGETS]
    wait = budgets.write(actor.user_id)
    if wait:
        raise rate_limited(
            f"user {actor.user_id!r} is writing faster than {budgets.user_writes.rate} allows",
            wait,
        )
    return actor


async def run_command(request: web.Request, command: Command[T]) -> T:
    try:
        return await request.app[WRITER].execute(command)
    except RateLimited as e:
        raise rate_limited(e.message, e.retry_after) from None
    except DomainError as e:
        raise ApiError(e.code, e.message) from None
    except StoreUnavailable as e:
        raise ApiError("unavailable", str(e)) from None


async def run_read(
    request: web.Request, fn: Callable[..., T], *args: Any, executor: Executor | None = None
) -> T:
    """``fn(*args)`` on the read pool (or ``executor``); 503 at once while
    the store cannot be read."""
    try:
        return await request.app[HEALTH].read(executor or request.app[READERS], fn, *args)
    except DomainError as e:
        raise ApiError(e.code, e.message) from None
    except StoreUnavailable as e:
        raise ApiError("unavailable", str(e)) from None
    except Exception as e:
        raise ApiError("unavailable", f"store unavailable: {type(e).__name__}: {e}") from None


def path_id(request: web.Request, name: str) -> str:
    try:
        return check_id(request.match_info[name], name)
    except InvalidId as e:
        raise ApiError("invalid_id", e.message) from None


def query(request: web.Request, kind: type[T]) -> T:
    try:
        return decode_query(request.query, kind)
    except SchemaError as e:
        raise ApiError(e.code, e.message) from None


async def body(request: web.Request, kind: type[T]) -> T:
    """The request's JSON body as ``kind`` (an empty body counts as ``{}``)."""
    ctype = request.headers.get("Content-Type", "")
    raw = await read_body(request) if request.body_exists else b""
    if raw and ctype and not ctype.split(";")[0].strip().lower().endswith(("/json", "+json")):
        raise ApiError("unsupported_media_type", f"send application/json, not {ctype!r}")
    try:
        return decode_body(raw, kind)
    except SchemaError as e:
        raise ApiError(e.code, e.message) from None
