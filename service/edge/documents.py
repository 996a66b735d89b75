"""The contract's documents, generated from the code: the OpenAPI document
of the HTTP API (service/edge/contract.py) and the AsyncAPI document of the
WebSocket protocol (service/edge/asyncapi.py), as sessiond serves them and as
they are committed under docs/.

    python -m service.edge.documents docs    # rewrites docs/openapi.json, docs/asyncapi.json

A test fails when the committed copies are stale.
"""

from __future__ import annotations

import functools
from importlib.metadata import PackageNotFoundError, version

import orjson
from aiohttp import web

from service.edge.asyncapi import asyncapi
from service.edge.contract import openapi


@functools.cache
def package_version() -> str:
    try:
        return version("sessiond")
    except PackageNotFoundError:
        return "0+unknown"


def encoded(document: dict[str, object]) -> bytes:
    """A document as served and as committed: sorted keys, indented."""
    return orjson.dumps(document, option=orjson.OPT_INDENT_2 | orjson.OPT_SORT_KEYS) + b"\n"


def documents(app: web.Application) -> dict[str, bytes]:
    """The contract's documents of ``app``, by file name."""
    return {
        "openapi.json": encoded(openapi(app, version=package_version())),
        "asyncapi.json": encoded(asyncapi(version=package_version())),
    }


def main(folder: str = "docs") -> None:
    """Write the documents of a default app into ``folder`` (the committed copies)."""
    from pathlib import Path

    from service.edge.app import create_app
    from service.runtime.settings import Settings

    app = create_app(Settings(store_url="memory://", secret="documents-only"))
    for name, body in documents(app).items():
        (Path(folder) / name).write_bytes(body)
        print(f"wrote {Path(folder) / name}")


if __name__ == "__main__":
    import sys

    main(*sys.argv[1:2])
