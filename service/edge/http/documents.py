"""``GET /v1/openapi.json`` and ``GET /v1/asyncapi.json``: the contract's
documents (service/edge/documents.py), generated from the code."""

from __future__ import annotations

import weakref
from collections.abc import Callable

from aiohttp import web

from service.edge.asyncapi import asyncapi
from service.edge.contract import openapi, operation
from service.edge.documents import encoded, package_version

routes = web.RouteTableDef()

# Each app's documents, encoded once: they cannot change while it serves, and
# building one is milliseconds of the event loop that any caller, with no
# token, could otherwise ask for again and again.
_encoded: weakref.WeakKeyDictionary[web.Application, dict[str, bytes]] = weakref.WeakKeyDictionary()


def _json(app: web.Application, name: str, build: Callable[[], dict[str, object]]) -> web.Response:
    documents = _encoded.setdefault(app, {})
    body = documents.get(name)
    if body is None:
        body = documents[name] = encoded(build())
    return web.Response(body=body, content_type="application/json")


@routes.get("/v1/openapi.json")
@operation(
    summary="This API as an OpenAPI 3.1 document",
    answers={200: "application/json"},
    auth=False,
)
async def openapi_document(request: web.Request) -> web.Response:
    app = request.app
    return _json(app, "openapi", lambda: openapi(app, version=package_version()))


@routes.get("/v1/asyncapi.json")
@operation(
    summary="The WebSocket protocol as an AsyncAPI 3 document",
    answers={200: "application/json"},
    auth=False,
)
async def asyncapi_document(request: web.Request) -> web.Response:
    return _json(request.app, "asyncapi", lambda: asyncapi(version=package_version()))
