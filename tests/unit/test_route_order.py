"""The routes are added busiest first, and nothing else about them changes:
the same routes, each request to the handler its path and method name."""

from __future__ import annotations

import pytest
from aiohttp import web
from aiohttp.test_utils import make_mocked_request
from aiohttp.web_routedef import RouteDef

from service.edge.app import create_app
from service.edge.http import BUSIEST, ROUTES, route_defs
from service.runtime.settings import Settings


def test_the_busiest_paths_come_first_and_no_route_is_lost() -> None:
    ordered = route_defs()
    declared = [route for routes in ROUTES for route in routes]
    assert sorted(map(repr, ordered)) == sorted(map(repr, declared))
    paths = [getattr(route, "path", None) for route in ordered]
    assert paths[: len(BUSIEST)] == list(BUSIEST)
    rest = [route for route in declared if getattr(route, "path", None) not in BUSIEST]
    assert ordered[len(BUSIEST) :] == rest  # the others in their declared order


@pytest.fixture
def app() -> web.Application:
    built = create_app(
        Settings.from_env({"SESSIOND_SECRET": "x" * 40, "SESSIOND_STORE": "memory://"})
    )
    built.freeze()
    return built


async def test_every_route_still_reaches_its_own_handler(app: web.Application) -> None:
    for route in route_defs():
        if not isinstance(route, RouteDef) or route.method == "*":
            continue
        path = route.path.replace("{session_id}", "s-1").replace("{task_id}", "t-1")
        path = path.replace("{connection_id}", "c-1").replace("{name}", "app.js")
        match = await app.router.resolve(make_mocked_request(route.method, path, app=app))
        assert match.http_exception is None, (route.method, route.path)
        assert match.route.handler is route.handler, (route.method, route.path)
