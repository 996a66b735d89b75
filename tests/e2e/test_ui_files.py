"""GET /ui/: the dashboard's files as the package carries them, with their
content types, validators and a Content-Security-Policy; nothing else under
that prefix, however the name is spelled."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from yarl import URL

from service.edge.http.static import UI_POLICY, ui_files

Serve = Callable[..., Any]
UI = Path(__file__).resolve().parents[2] / "service" / "edge" / "ui"


async def test_the_index_and_every_file_are_served_with_their_type_and_policy(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    expected = {
        "index.html": "text/html; charset=utf-8",
        "app.js": "text/javascript; charset=utf-8",
        "style.css": "text/css; charset=utf-8",
        "favicon.svg": "image/svg+xml",
    }
    for name, content_type in expected.items():
        async with api.http.get(api.url(f"/ui/{name}")) as r:
            assert r.status == 200, name
            assert r.headers["Content-Type"] == content_type
            assert await r.read() == (UI / name).read_bytes()
            assert r.headers["Content-Security-Policy"] == UI_POLICY
            assert r.headers["X-Content-Type-Options"] == "nosniff"
            assert r.headers["Cache-Control"] == "no-cache"
    async with api.http.get(api.url("/ui/")) as r:
        assert r.status == 200
        assert await r.read() == (UI / "index.html").read_bytes()
    assert set(ui_files()) == {p.name for p in UI.iterdir() if p.is_file()}


async def test_the_policy_allows_this_origin_only_and_no_inline_script() -> None:
    directives = dict(d.strip().split(" ", 1) for d in UI_POLICY.split(";"))
    assert directives["default-src"] == "'self'"
    assert directives["script-src"] == "'self'"
    assert directives["connect-src"] == "'self'"
    assert "unsafe" not in UI_POLICY
    html = (UI / "index.html").read_text()
    assert "<script>" not in html and " style=" not in html and "onclick" not in html


async def test_a_copy_the_browser_has_is_answered_304(serve: Serve, sqlite_url: str) -> None:
    api = await serve(sqlite_url)
    async with api.http.get(api.url("/ui/app.js")) as r:
        etag = r.headers["ETag"]
    async with api.http.get(api.url("/ui/app.js"), headers={"If-None-Match": etag}) as r:
        assert r.status == 304
        assert r.headers["ETag"] == etag
        assert r.headers["Content-Security-Policy"] == UI_POLICY
    async with api.http.get(api.url("/ui/style.css"), headers={"If-None-Match": etag}) as r:
        assert r.status == 200


async def test_the_root_and_the_bare_prefix_lead_to_the_dashboard(
    serve: Serve, sqlite_url: str
) -> None:
    api = await serve(sqlite_url)
    for path in ("/", "/ui"):
        async with api.http.get(api.url(path), allow_redirects=False) as r:
            assert r.status in (301, 302), path
            assert r.headers["Location"] == "/ui/"


@pytest.mark.parametrize(
    "path",
    [
        "/ui/../pyproject.toml",
        "/ui/%2e%2e/pyproject.toml",
        "/ui/..%2fpyproject.toml",
        "/ui/..%2F..%2Fpyproject.toml",
        "/ui/%2e%2e%2fapp.py",
        "/ui/static.py",
        "/ui/__init__.py",
        "/ui/app.js%00.css",
        "/ui/app.js/",
        "/ui/./app.js.map",
        "/ui/nothing.js",
    ],
)
async def test_nothing_outside_the_dashboards_files_is_served(
    serve: Serve, sqlite_url: str, path: str
) -> None:
    api = await serve(sqlite_url)
    async with api.http.get(URL(api.url(path), encoded=True)) as r:  # sent as written
        body = await r.read()
        assert r.status == 404, (path, r.status, body[:200])
        assert b"[tool.setuptools" not in body and b"import" not in body
