"""The browser client, served as an ES module at ``GET /v1/client.js``.

The bytes are those of the npm package's module, clients/js/sessiond-client.js:
service/edge/static/sessiond-client.js is a symbolic link to it, declared as
package data, and setuptools copies what the link points at into the wheel
and the sdist. So a source checkout, an editable install and ``pip install .``
serve the same file, and there is no second copy to drift.

The answer has a strong ETag (the hash of the bytes, the same on every node)
and ``Cache-Control: no-cache``: browsers keep the file but ask each time, so
a deploy is picked up at once and an unchanged file costs a 304. A page on
another allowed origin may import it: the edge middleware adds
``Access-Control-Allow-Origin`` for the origins in SESSIOND_CORS_ORIGINS, which
a cross-origin module script needs; ``Vary: Origin`` keeps caches from
handing one origin's answer to another.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources

from aiohttp import web
from aiohttp.helpers import ETAG_ANY, ETag

routes = web.RouteTableDef()

CLIENT_JS = ("static", "sessiond-client.js")
CONTENT_TYPE = "text/javascript; charset=utf-8"


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    etag: str  # the strong validator's value, unquoted

    def fresh_for(self, if_none_match: tuple[ETag, ...] | None) -> bool:
        """The caller's copy is this one (If-None-Match compares weakly, RFC 9110)."""
        return bool(if_none_match) and any(
            tag.value in (self.etag, ETAG_ANY) for tag in if_none_match or ()
        )


@functools.cache
def client_script() -> Asset:
    """The client module as installed with this package (read once: it cannot change)."""
    body = resources.files("service.edge").joinpath(*CLIENT_JS).read_bytes()
    return Asset(body, hashlib.sha256(body).hexdigest()[:32])


@routes.get("/v1/client.js")
async def client_js(request: web.Request) -> web.Response:
    script = client_script()
    headers = {"Cache-Control": "no-cache", "Vary": "Origin", "X-Content-Type-Options": "nosniff"}
    if script.fresh_for(request.if_none_match):
        response = web.Response(status=304, headers=headers)
    else:
        response = web.Response(body=script.body, headers={**headers, "Content-Type": CONTENT_TYPE})
    response.etag = script.etag
    return response
