"""Files sessiond serves from its own package: the browser client at
``GET /v1/client.js`` and the dashboard under ``/ui/``.

The client's bytes are those of the npm package's module,
clients/js/sessiond-client.js: service/edge/static/sessiond-client.js is a
symbolic link to it, declared as package data, and setuptools copies what the
link points at into the wheel and the sdist. So a source checkout, an editable
install and ``pip install .`` serve the same file, and there is no second
copy to drift.

The dashboard is the files of service/edge/ui/, also package data. Only the
names found in that folder are served (a lookup in a table, never a path
joined from the request), so nothing outside it can be reached. Its answers
carry a Content-Security-Policy that allows nothing but this origin's own
files and calls (no inline script or style, no other host, no framing): the
page holds a token.

Every answer has a strong ETag (the hash of the bytes, the same on every
node) and ``Cache-Control: no-cache``: browsers keep the file but ask each
time, so a deploy is picked up at once and an unchanged file costs a 304. A
page on another allowed origin may import the client: the edge middleware
adds ``Access-Control-Allow-Origin`` for the origins in SESSIOND_CORS_ORIGINS,
which a cross-origin module script needs; ``Vary: Origin`` keeps caches from
handing one origin's answer to another.
"""

from __future__ import annotations

import functools
import hashlib
from dataclasses import dataclass
from importlib import resources
from pathlib import PurePosixPath

from aiohttp import web
from aiohttp.helpers import ETAG_ANY, ETag

from service.edge.contract import operation
from service.edge.errors import ApiError

routes = web.RouteTableDef()

CLIENT_JS = ("static", "sessiond-client.js")
UI_FOLDER = "ui"
UI_INDEX = "index.html"
CONTENT_TYPES = {
    ".js": "text/javascript; charset=utf-8",
    ".html": "text/html; charset=utf-8",
    ".css": "text/css; charset=utf-8",
    ".svg": "image/svg+xml",
    ".png": "image/png",
}
UI_POLICY = (
    "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
    "connect-src 'self'; base-uri 'none'; form-action 'self'; frame-ancestors 'none'"
)
_COMMON = {"Cache-Control": "no-cache", "X-Content-Type-Options": "nosniff"}
_UI_HEADERS = {
    **_COMMON,
    "Content-Security-Policy": UI_POLICY,
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
}


@dataclass(frozen=True, slots=True)
class Asset:
    body: bytes
    content_type: str
    etag: str  # the strong validator's value, unquoted

    @classmethod
    def of(cls, name: str, body: bytes) -> Asset:
        content_type = CONTENT_TYPES[PurePosixPath(name).suffix]
        return cls(body, content_type, hashlib.sha256(body).hexdigest()[:32])

    def fresh_for(self, if_none_match: tuple[ETag, ...] | None) -> bool:
        """The caller's copy is this one (If-None-Match compares weakly, RFC 9110)."""
        return bool(if_none_match) and any(
            tag.value in (self.etag, ETAG_ANY) for tag in if_none_match or ()
        )

    def answer(self, request: web.Request, headers: dict[str, str]) -> web.Response:
        """200 with the bytes, or 304 when the caller already has them."""
        if self.fresh_for(request.if_none_match):
            response = web.Response(status=304, headers=headers)
        else:
            response = web.Response(
                body=self.body, headers={**headers, "Content-Type": self.content_type}
            )
        response.etag = self.etag
        return response


@functools.cache
def client_script() -> Asset:
    """The client module as installed with this package (read once: it cannot change)."""
    path = resources.files("service.edge").joinpath(*CLIENT_JS)
    return Asset.of(path.name, path.read_bytes())


@functools.cache
def ui_files() -> dict[str, Asset]:
    """The dashboard's files by name, as installed with this package."""
    folder = resources.files("service.edge").joinpath(UI_FOLDER)
    return {
        entry.name: Asset.of(entry.name, entry.read_bytes())
        for entry in folder.iterdir()
        if entry.is_file() and PurePosixPath(entry.name).suffix in CONTENT_TYPES
    }


@routes.get("/v1/client.js")
@operation(
    summary="The browser client, an ES module",
    answers={200: "text/javascript", 304: None},
    auth=False,
)
async def client_js(request: web.Request) -> web.Response:
    return client_script().answer(request, {**_COMMON, "Vary": "Origin"})


@routes.get("/")
@operation(summary="To the dashboard", answers={302: None}, auth=False)
async def root(request: web.Request) -> web.Response:
    raise web.HTTPFound("/ui/")


@routes.get("/ui")
@operation(summary="To the dashboard", answers={301: None}, auth=False)
async def ui_root(request: web.Request) -> web.Response:
    raise web.HTTPMovedPermanently("/ui/")


@routes.get("/ui/")
@operation(
    summary="The dashboard (sign in with a token)",
    answers={200: "text/html", 304: None},
    auth=False,
)
async def ui_index(request: web.Request) -> web.Response:
    return ui_files()[UI_INDEX].answer(request, _UI_HEADERS)


@routes.get("/ui/{name}")
@operation(
    summary="A file of the dashboard",
    answers={200: tuple(sorted(set(CONTENT_TYPES.values()))), 304: None},
    errors=("not_found",),
    auth=False,
)
async def ui_file(request: web.Request) -> web.Response:
    name = request.match_info["name"]
    asset = ui_files().get(name)
    if asset is None:
        raise ApiError("not_found", f"the dashboard has no file {name!r}")
    return asset.answer(request, _UI_HEADERS)
