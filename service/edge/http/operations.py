"""What operators and their tools ask a node: is it healthy, and its metrics."""

from __future__ import annotations

from aiohttp import web

from service.edge.context import METRICS, SETTINGS, STORE, STORE_CONFIG
from service.edge.errors import ApiError
from service.edge.http.node import read_store_figures
from service.edge.metrics import CONTENT_TYPE
from service.edge.requests import json_response, run_read

routes = web.RouteTableDef()


@routes.get("/healthz")
async def healthz(request: web.Request) -> web.Response:
    store = request.app[STORE]
    try:
        await run_read(request, store.ping)
    except ApiError as e:
        raise ApiError("unavailable", e.message) from None
    settings = request.app[SETTINGS]
    return json_response(
        {"status": "ok", "node": settings.node_id, "store": request.app[STORE_CONFIG].kind}
    )


@routes.get("/metrics")
async def metrics(request: web.Request) -> web.Response:
    await read_store_figures(request)
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})
