"""``GET /v1/node``: one node at a glance, for dashboards and operators
(``service`` and ``auditor`` tokens). Every figure is read from the metrics
registry that ``/metrics`` exports (service/edge/metrics.py), so the view and
the scrape cannot disagree; the store's head and the projections' positions
are read from the store first, as for a scrape."""

from __future__ import annotations

import time
from datetime import UTC, datetime

from aiohttp import web

from service.edge.context import METRICS, READMODELS, SETTINGS, STORE_CONFIG
from service.edge.contract import operation
from service.edge.errors import ApiError
from service.edge.metrics import Samples
from service.edge.requests import principal, run_read
from service.edge.responses import NodeView, ProjectionFigures, respond
from service.storage.wire import timestamp

routes = web.RouteTableDef()


async def read_store_figures(request: web.Request) -> None:
    """The store's head and each projection's position, into the metrics
    (nothing, while the store does not answer)."""
    try:
        statuses = await run_read(request, request.app[READMODELS].projector.status)
    except ApiError:
        statuses = None
    request.app[METRICS].store_read(statuses)


def _by_label(samples: Samples, name: str, label: str) -> dict[str, float]:
    return {dict(labels)[label]: value for labels, value in samples.get(name, {}).items()}


def _value(samples: Samples, name: str) -> float | None:
    return samples.get(name, {}).get((), None)


@routes.get("/v1/node")
@operation(
    summary="This node at a glance (service and auditor tokens)",
    answers={200: NodeView},
    errors=("forbidden",),
)
async def node_view(request: web.Request) -> web.Response:
    actor = principal(request)
    if not (actor.is_service or actor.is_auditor):
        raise ApiError("forbidden", "the node view is for service and auditor tokens")
    await read_store_figures(request)
    samples = request.app[METRICS].samples()
    started = _value(samples, "sessiond_node_start_time_seconds") or 0.0
    head = _value(samples, "sessiond_store_head")
    lags = _by_label(samples, "sessiond_projection_lag", "projection")
    positions = _by_label(samples, "sessiond_projection_position", "projection")
    view = NodeView(
        node=request.app[SETTINGS].node_id,
        store=request.app[STORE_CONFIG].kind,
        started_at=timestamp(datetime.fromtimestamp(started, UTC)) or "",
        uptime_seconds=round(max(0.0, time.time() - started), 3),
        connections={
            state: int(n)
            for state, n in _by_label(samples, "sessiond_connections", "state").items()
        },
        watchers=int(_value(samples, "sessiond_stream_watchers") or 0),
        events_appended=int(_value(samples, "sessiond_events_appended_total") or 0),
        head=None if head is None else int(head),
        projections=[
            ProjectionFigures(name=name, position=int(position), lag=int(lags.get(name, 0)))
            for name, position in positions.items()
        ],
    )
    return respond(view)
