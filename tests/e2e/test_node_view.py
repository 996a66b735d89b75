"""``GET /v1/node``: one node at a glance for the dashboard, from the same
figures ``/metrics`` exports (its shape is service/edge/responses.py's NodeView)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import msgspec
import pytest

from service.edge.responses import NodeView
from tests.conftest import Api
from tests.e2e.test_metrics import scrape, value
from tests.e2e.test_stream import stream
from tests.e2e.wsclient import AUDITOR, open_live, post_messages

Serve = Callable[..., Any]
SERVICE: dict[str, Any] = {"user": "dash", "roles": ("service",)}


async def node_view(api: Api, **who: Any) -> NodeView:
    status, body = await api.call("GET", "/v1/node", **(who or AUDITOR))
    assert status == 200, body
    return msgspec.convert(body, NodeView, strict=True)


async def test_service_and_auditor_tokens_read_the_node_view_and_no_one_else(
    sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url)
    for who in (SERVICE, AUDITOR):
        await node_view(api, **who)
    status, body = await api.call("GET", "/v1/node")
    assert (status, body["error"]["code"]) == (403, "forbidden")
    status, body = await api.call("GET", "/v1/node", user=None)
    assert (status, body["error"]["code"]) == (401, "unauthenticated")


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
async def test_the_node_view_shows_what_metrics_exports(
    kind: str, sqlite_url: str, serve: Serve
) -> None:
    api = await serve(sqlite_url if kind == "sqlite" else "memory://")
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "nv-1"})
    assert status == 201
    await post_messages(api.http, api.base_url, "nv-1", 3, "m")
    socket = await open_live(api, "nv-1", connection_id="nv-tab")
    async with stream(api, "nv-1", **AUDITOR) as watching:
        await watching.until_position(1)
        view = await node_view(api)
        scraped = await scrape(api)
    await socket.close()

    assert (view.node, view.store) == ("test-node", kind)
    assert view.uptime_seconds >= 0 and view.started_at.endswith("Z")
    assert view.connections["PROCESSING_READY"] == 1
    assert set(view.connections) == {
        "CONNECTING",
        "ACCEPTED",
        "AUTHENTICATED",
        "SERVICES_READY",
        "PROCESSING_READY",
    }
    assert view.watchers == 1
    assert value(scraped, "sessiond_stream_watchers") == 1
    assert view.events_appended >= 6  # created, 3 messages, connection events...
    assert view.events_appended <= value(scraped, "sessiond_events_appended_total")
    assert view.head is not None and view.head == value(scraped, "sessiond_store_head")
    assert [p.name for p in view.projections] == ["sessions", "connections"]
    for figures in view.projections:
        assert figures.position + figures.lag == view.head
        assert value(scraped, "sessiond_projection_position", projection=figures.name) <= (
            view.head
        )
