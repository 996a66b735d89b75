"""The contract as machine-readable documents, generated from the code.

Every HTTP handler declares its operation with :func:`operation` beside its
route: a summary, the Structs of its body and query (service/edge/schema.py)
and of its answers (service/edge/responses.py), the error codes it may give, and
the links a client follows from its answer. :func:`openapi` walks the app's
router and turns those declarations, and the Structs' own JSON Schema, into an
OpenAPI 3.1 document; a route without a declaration is an error, so the
document cannot leave one out. The WebSocket protocol's document is
service/edge/asyncapi.py. Nothing in either is written by hand.
"""

from __future__ import annotations

import re
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import msgspec
import msgspec.structs
from aiohttp import web

from service.edge.codes import STATUS_BY_CODE
from service.edge.responses import ErrorBody, SessionEvent

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]
H = TypeVar("H", bound=Handler)

COMPONENTS = "#/components/schemas/{name}"
# Answers any authenticated operation may give, whatever it does.
AUTH_ERRORS = ("unauthenticated", "rate_limited", "unavailable")
BODY_ERRORS = ("invalid_json", "invalid_body", "invalid_id", "too_large", "unsupported_media_type")


@dataclass(frozen=True)
class Link:
    """An OpenAPI link: the operation a client calls next with a value of this
    answer (``parameters``: the next call's parameter -> a runtime expression)."""

    operation_id: str
    parameters: Mapping[str, str]
    description: str = ""


@dataclass(frozen=True)
class Operation:
    summary: str
    answers: Mapping[int, Any]  # status -> Struct type, or a media type string
    body: type[msgspec.Struct] | None = None
    query: type[msgspec.Struct] | None = None
    errors: Sequence[str] = ()
    auth: bool = True
    links: Mapping[int, Mapping[str, Link]] = field(default_factory=dict)
    description: str = ""
    tags: Sequence[str] = ()


def operation(**declared: Any) -> Callable[[H], H]:
    """Declare the operation a handler serves (see :class:`Operation`)."""
    op = Operation(**declared)

    def mark(handler: H) -> H:
        handler.operation = op  # type: ignore[attr-defined]
        return handler

    return mark


def operation_of(handler: Any) -> Operation | None:
    op = getattr(handler, "operation", None)
    return op if isinstance(op, Operation) else None


def operation_ids(routes: list[tuple[str, str, Any]]) -> list[str]:
    """Each route's operationId: its handler's name, or, for a handler that
    serves several paths (``/readyz`` and ``/healthz``), its path's."""
    names = [str(handler.__name__) for _, _, handler in routes]
    shared = {n for n in names if names.count(n) > 1}
    return [
        re.sub(r"\W+", "_", path).strip("_") or "root" if name in shared else name
        for (_, path, _), name in zip(routes, names, strict=True)
    ]


def documented_routes(app: web.Application) -> list[tuple[str, str, Any]]:
    """(method, path template, handler) of every route a client can call;
    aiohttp's implied HEAD routes go with their GETs."""
    routes = []
    for route in app.router.routes():
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("formatter") or info.get("path")
        if path is None or route.method in ("HEAD", "*"):
            continue
        routes.append((route.method, path, route.handler))
    return routes


def _codes(op: Operation) -> list[str]:
    codes = list(op.errors)
    if op.body is not None:
        codes += BODY_ERRORS
    if op.query is not None:
        codes.append("invalid_query")
    if op.auth:
        codes += AUTH_ERRORS
    return list(dict.fromkeys(codes))


# What aiohttp's HTTP parser refuses before any handler runs, answered in the
# error shape on every operation (service/edge/errors.py, ADR 0046): a request
# target or a header over its limit, a body in an encoding the node cannot
# read, a malformed request.
PARSER_ERRORS = (
    (400, "bad_request"),
    (414, "too_large"),
    (415, "unsupported_media_type"),
    (431, "too_large"),
)


def _errors(op: Operation) -> dict[str, Any]:
    by_status: dict[int, list[str]] = {}
    for status, code in [(STATUS_BY_CODE[c], c) for c in _codes(op)] + list(PARSER_ERRORS):
        if code not in by_status.setdefault(status, []):
            by_status[status].append(code)
    answers: dict[str, Any] = {}
    for status, codes in sorted(by_status.items()):
        answer: dict[str, Any] = {
            "description": "error: " + ", ".join(f"`{c}`" for c in codes),
            "content": {"application/json": {"schema": {"$ref": _ref(ErrorBody)}}},
        }
        if status in (429, 503):
            answer["headers"] = {"Retry-After": {"$ref": "#/components/headers/RetryAfter"}}
        answers[str(status)] = answer
    return answers


def _ref(kind: type) -> str:
    return COMPONENTS.format(name=kind.__name__)


def _media_schema(media_type: str) -> dict[str, Any]:
    """The schema of an answer given only by its media type."""
    if media_type == "application/json":
        return {"type": "object"}
    if media_type == "text/event-stream":
        # Each message: its id (the position), its event (the type) and its
        # data (the event object, as JSON text).
        return {
            "type": "object",
            "properties": {
                "id": {"type": "string", "pattern": "^[0-9]+$"},
                "event": {"type": "string"},
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": {"$ref": COMPONENTS.format(name="SessionEvent")},
                },
            },
            "required": ["id", "event", "data"],
        }
    return {"type": "string"}


def _answer(status: int, kind: Any, links: Mapping[str, Link]) -> dict[str, Any]:
    answer: dict[str, Any] = {"description": _STATUS_TEXT.get(status, "answer")}
    if isinstance(kind, str):
        answer["content"] = {kind: {"schema": _media_schema(kind)}}
    elif isinstance(kind, tuple):  # one of several media types
        answer["content"] = {media: {"schema": _media_schema(media)} for media in kind}
    elif kind is not None:
        answer["content"] = {"application/json": {"schema": {"$ref": _ref(kind)}}}
    if links:
        answer["links"] = {
            name: {
                "operationId": link.operation_id,
                "parameters": dict(link.parameters),
                **({"description": link.description} if link.description else {}),
            }
            for name, link in links.items()
        }
    return answer


_STATUS_TEXT = {
    200: "done",
    201: "created",
    202: "accepted",
    204: "no content",
    304: "not modified",
    101: "switching protocols",
}

_PARAM = re.compile(r"\{(\w+)\}")


def _parameters(path: str, op: Operation, schemas: dict[str, Any]) -> list[dict[str, Any]]:
    params: list[dict[str, Any]] = []
    for name in _PARAM.findall(path):
        params.append(
            {
                "name": name,
                "in": "path",
                "required": True,
                "schema": {"$ref": "#/components/schemas/ID"},
            }
        )
    if op.query is not None:
        query = schemas[op.query.__name__]
        required = set(query.get("required", ()))
        for name, schema in query["properties"].items():
            params.append(
                {"name": name, "in": "query", "required": name in required, "schema": schema}
            )
    return params


def _structs(ops: list[Operation]) -> list[type]:
    kinds: list[type] = [ErrorBody, SessionEvent]
    for op in ops:
        kinds += [k for k in (op.body, op.query) if k is not None]
        kinds += [k for k in op.answers.values() if isinstance(k, type)]
    return list(dict.fromkeys(kinds))


def openapi(app: web.Application, *, version: str, servers: Sequence[str] = ()) -> dict[str, Any]:
    """The OpenAPI 3.1 document of ``app``'s HTTP API."""
    from service.edge.schema import ID, json_value_schema

    routes = documented_routes(app)
    missing = [f"{m} {p}" for m, p, h in routes if operation_of(h) is None]
    if missing:
        raise LookupError(f"routes without a declared operation: {', '.join(missing)}")
    ops = [op for _, _, h in routes if (op := operation_of(h)) is not None]
    (_, components) = msgspec.json.schema_components([*_structs(ops), ID], ref_template=COMPONENTS)
    components["ID"] = msgspec.json.schema(ID)
    components["JsonValue"] = json_value_schema()
    paths: dict[str, dict[str, Any]] = {}
    for (method, path, handler), op_id in zip(routes, operation_ids(routes), strict=True):
        op = operation_of(handler)
        assert op is not None
        entry: dict[str, Any] = {
            "operationId": op_id,
            "summary": op.summary,
            "parameters": _parameters(path, op, components),
            "responses": {
                **{
                    str(s): _answer(s, k, op.links.get(s, {}))
                    for s, k in sorted(op.answers.items())
                },
                **_errors(op),
            },
        }
        if op.description:
            entry["description"] = op.description
        if op.tags:
            entry["tags"] = list(op.tags)
        if op.body is not None:
            entry["requestBody"] = {
                # Required when it has required fields (an empty body is {}).
                "required": any(f.required for f in msgspec.structs.fields(op.body)),
                "content": {"application/json": {"schema": {"$ref": _ref(op.body)}}},
            }
        entry["security"] = [{"bearer": []}] if op.auth else []
        paths.setdefault(path, {})[method.lower()] = entry
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "sessiond",
            "version": version,
            "description": "Sessions and connections under one preserved ID (docs/PROTOCOL.md).",
            "license": {"name": "MIT", "identifier": "MIT"},
        },
        "servers": [{"url": s} for s in servers],
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer", "bearerFormat": "JWT"}
            },
            "headers": {
                "RetryAfter": {
                    "description": "seconds to wait before trying again",
                    "schema": {"type": "integer", "minimum": 1},
                }
            },
        },
    }
