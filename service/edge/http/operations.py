"""What operators and their tools ask a node: is it alive, should it get
traffic, and its metrics. Liveness and readiness answer from what the node
already knows (service/application/health.py), never by waiting on the store."""

from __future__ import annotations

from aiohttp import web

from service.application.health import StoreHealth
from service.edge.context import HEALTH, METRICS, SETTINGS, STORE_CONFIG
from service.edge.contract import operation
from service.edge.errors import ApiError
from service.edge.http.node import read_store_figures
from service.edge.metrics import CONTENT_TYPE
from service.edge.requests import json_response
from service.edge.responses import Health, Liveness

routes = web.RouteTableDef()


@routes.get("/livez")
@operation(summary="200 while the process serves", answers={200: Liveness}, auth=False)
async def livez(request: web.Request) -> web.Response:
    """200 while the process serves, whatever its store says."""
    return json_response({"status": "live", "node": request.app[SETTINGS].node_id})


@routes.get("/readyz")
@routes.get("/healthz")
@operation(
    summary="200 when the store answers and the node is not draining, else 503",
    answers={200: Health},
    errors=("unavailable",),
    auth=False,
)
async def readyz(request: web.Request) -> web.Response:
    """200 when the store answers and the node is not draining, else 503."""
    health = request.app[HEALTH]
    if not health.ready:
        raise ApiError("unavailable", _not_ready(health))
    settings = request.app[SETTINGS]
    return json_response(
        {"status": "ok", "node": settings.node_id, "store": request.app[STORE_CONFIG].kind}
    )


def _not_ready(health: StoreHealth) -> str:
    if health.draining:
        return "the node is draining"
    side = "read" if not health.readable else "written"
    return f"the store cannot be {side}: {health.reason}"


@routes.get("/metrics")
@operation(summary="Prometheus text", answers={200: "text/plain; version=0.0.4"}, auth=False)
async def metrics(request: web.Request) -> web.Response:
    await read_store_figures(request)
    return web.Response(body=request.app[METRICS].render(), headers={"Content-Type": CONTENT_TYPE})
