"""The HTTP API of docs/PROTOCOL.md, one module per resource.

Handlers are short: who is calling, what they sent (the one schema), then a
command on the writer or a read on the reader pool."""

import re

from aiohttp import web
from aiohttp.web_routedef import AbstractRouteDef, RouteDef

from service.edge.http import (
    connections,
    documents,
    node,
    operations,
    sessions,
    socket,
    static,
    stream,
    tasks,
)

ROUTES: list[web.RouteTableDef] = [
    sessions.routes,
    stream.routes,
    socket.routes,
    tasks.routes,
    connections.routes,
    operations.routes,
    node.routes,
    static.routes,
    documents.routes,
]

# The paths a busy node is asked for most: a worker's progress, a message.
# aiohttp tries the patterns under one prefix (``/v1/sessions``: ten of them)
# in the order they were added, so these go first (a progress report was
# tried against seven patterns before its own: 6.3 against 1.2 µs to route).
BUSIEST = (
    "/v1/sessions/{session_id}/tasks/{task_id}/progress",
    "/v1/sessions/{session_id}/messages",
)


def route_defs() -> list[AbstractRouteDef]:
    """Every route of ROUTES, the busiest paths first, the others in order."""
    defs = [route for routes in ROUTES for route in routes]

    def rank(route: AbstractRouteDef) -> int:
        path = getattr(route, "path", None)
        return BUSIEST.index(path) if path in BUSIEST else len(BUSIEST)

    return sorted(defs, key=rank)


# An ID in a path: aiohttp's own pattern for ``{session_id}`` takes one
# character at least, so an empty one (``/v1/sessions//messages``,
# ``/v1/connections/``) matched no route and was answered 404 ``not_found``,
# a code the contract does not have. Matched empty, it reaches its handler,
# which refuses it as it refuses any ID outside 1 to 128 characters: 400
# ``invalid_id``. ``/v1/sessions`` (the list) is another route and stays so.
_ID_PARAMETER = re.compile(r"\{(\w+_id)\}")


def empty_ids_matched(routes: list[AbstractRouteDef]) -> list[AbstractRouteDef]:
    """``routes`` with each ID parameter of a path matching an empty segment too."""
    return [
        RouteDef(
            route.method,
            _ID_PARAMETER.sub(r"{\1:[^{}/]*}", route.path),
            route.handler,
            route.kwargs,
        )
        if isinstance(route, RouteDef)
        else route
        for route in routes
    ]
