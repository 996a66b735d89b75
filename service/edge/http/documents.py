"""``GET /v1/openapi.json`` and ``GET /v1/asyncapi.json``: the contract's
documents (service/edge/documents.py), generated from the code."""

from __future__ import annotations

from aiohttp import web

from service.edge.asyncapi import asyncapi
from service.edge.contract import openapi, operation
from service.edge.documents import encoded, package_version

routes = web.RouteTableDef()


def _json(document: dict[str, object]) -> web.Response:
    return web.Response(body=encoded(document), content_type="application/json")


@routes.get("/v1/openapi.json")
@operation(
    summary="This API as an OpenAPI 3.1 document",
    answers={200: "application/json"},
    auth=False,
)
async def openapi_document(request: web.Request) -> web.Response:
    return _json(openapi(request.app, version=package_version()))


@routes.get("/v1/asyncapi.json")
@operation(
    summary="The WebSocket protocol as an AsyncAPI 3 document",
    answers={200: "application/json"},
    auth=False,
)
async def asyncapi_document(request: web.Request) -> web.Response:
    return _json(asyncapi(version=package_version()))
