"""The HTTP API of docs/PROTOCOL.md, one module per resource.

Handlers are short: who is calling, what they sent (the one schema), then a
command on the writer or a read on the reader pool."""

from aiohttp import web

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
