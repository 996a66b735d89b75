"""CORS for browser pages on other origins, and the Origin check on upgrades.

Allowed: the origins in SESSIOND_CORS_ORIGINS, and always the service's own
origin. A preflight from an allowed origin gets the CORS headers; from any
other, 403 ``forbidden_origin``.
"""

from __future__ import annotations

from aiohttp import web

from service.edge.context import SETTINGS
from service.edge.errors import error_response

ALLOW_METHODS = "GET, POST, DELETE, OPTIONS"
# Last-Event-ID: a page resuming an event stream with fetch() sends it;
# traceparent and tracestate: a page traced by OpenTelemetry sends them, and
# an HTTP request's span is their child (service/runtime/tracing.py).
ALLOW_HEADERS = "Authorization, Content-Type, Last-Event-ID, traceparent, tracestate"
MAX_AGE = "600"
# Response headers a page may read beyond the CORS-safelisted ones: how long
# to wait after a 429 or a 503.
EXPOSE_HEADERS = "Retry-After"


def own_origin(request: web.Request) -> str:
    return f"{request.scheme}://{request.host}"


def origin_allowed(request: web.Request, allowed: tuple[str, ...]) -> bool:
    origin = request.headers.get("Origin")
    if origin is None:
        return True
    origin = origin.rstrip("/")
    return origin == own_origin(request) or origin in allowed or "*" in allowed


def preflight(request: web.Request) -> web.StreamResponse | None:
    """The answer to a CORS preflight, or None for any other request."""
    if request.method != "OPTIONS" or "Access-Control-Request-Method" not in request.headers:
        return None
    origin = request.headers.get("Origin")
    if origin is None or not origin_allowed(request, request.app[SETTINGS].cors_origins):
        return error_response("forbidden_origin", f"origin {origin!r} is not allowed")
    return web.Response(
        status=204,
        headers={
            "Access-Control-Allow-Origin": origin,
            "Access-Control-Allow-Methods": ALLOW_METHODS,
            "Access-Control-Allow-Headers": ALLOW_HEADERS,
            "Access-Control-Max-Age": MAX_AGE,
            "Vary": "Origin",
        },
    )


def decorate(request: web.Request, response: web.StreamResponse) -> web.StreamResponse:
    """Let a page on an allowed origin read ``response`` (errors included).

    Every answer says ``Vary: Origin``, whether it carries the CORS headers
    or not: they depend on the request's Origin, so a cache (the browser's
    own) must not hand an answer made for one origin, or for none, to a
    request from another."""
    if response.prepared:
        return response
    vary = response.headers.get("Vary")
    if vary is None:
        response.headers["Vary"] = "Origin"
    elif "origin" not in {v.strip().lower() for v in vary.split(",")}:
        response.headers["Vary"] = f"{vary}, Origin"
    origin = request.headers.get("Origin")
    if origin is not None and origin_allowed(request, request.app[SETTINGS].cors_origins):
        response.headers["Access-Control-Allow-Origin"] = origin
        response.headers["Access-Control-Expose-Headers"] = EXPOSE_HEADERS
    return response
