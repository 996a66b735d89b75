"""The contract as documents, checked: /v1/openapi.json and /v1/asyncapi.json
are generated from the code, valid by their specifications' own validators,
committed under docs/ as they are served, cover every route, and describe
what the server really does: Schemathesis runs the OpenAPI document against a
real ``sessiond serve`` (quick mode here; the long mode is in
docs/contract-testing.md), and the frames a socket is sent fit the AsyncAPI
document's declarations."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import aiohttp
import jsonschema
import msgspec
import pytest
from openapi_spec_validator import validate as validate_openapi

from service.application.auth import TokenSigner
from service.edge.app import create_app
from service.edge.contract import documented_routes
from service.edge.documents import documents
from service.edge.schema import SERVER_FRAMES
from tests.conftest import TEST_SECRET, ServerProcess, make_settings
from tests.unit.protocol_world import Socket, World

ROOT = Path(__file__).resolve().parent.parent.parent
ASYNCAPI_SCHEMA = ROOT / "tests" / "data" / "asyncapi-3.0.0.schema.json"
QUICK_EXAMPLES = "8"


@pytest.fixture(scope="module")
def generated() -> dict[str, Any]:
    app = create_app(make_settings("memory://"))
    return {name: json.loads(body) for name, body in documents(app).items()}


def test_the_openapi_document_is_valid_openapi_3_1(generated: dict[str, Any]) -> None:
    document = generated["openapi.json"]
    assert document["openapi"] == "3.1.0"
    validate_openapi(document)


def test_the_asyncapi_document_is_valid_asyncapi_3(generated: dict[str, Any]) -> None:
    document = generated["asyncapi.json"]
    assert document["asyncapi"] == "3.0.0"
    jsonschema.validate(document, json.loads(ASYNCAPI_SCHEMA.read_text()))
    messages = set(document["components"]["messages"])
    assert {"AuthFrame", "MessageFrame"} <= messages
    assert {kind.__name__ for kind in SERVER_FRAMES} <= messages
    assert {"4401", "4403", "4408", "4409", "4429", "1013"} <= set(document["x-close-codes"])


def test_the_committed_documents_are_the_generated_ones(generated: dict[str, Any]) -> None:
    for name, document in generated.items():
        committed = json.loads((ROOT / "docs" / name).read_text())
        assert committed == document, (
            f"docs/{name} is stale: run `python -m service.edge.documents docs`"
        )


def test_every_route_of_the_router_is_in_the_document(generated: dict[str, Any]) -> None:
    app = create_app(make_settings("memory://"))
    routes = {(m.lower(), p) for m, p, _ in documented_routes(app)}
    paths = generated["openapi.json"]["paths"]
    documented = {(m, p) for p, ops in paths.items() for m in ops}
    assert routes == documented


def test_every_operation_declares_what_the_http_parser_answers_before_it(
    generated: dict[str, Any],
) -> None:
    """Any request can be refused by the parser (a header over 8,190 bytes: a
    long bearer token is enough), so every operation says so."""
    for path, operations in generated["openapi.json"]["paths"].items():
        for method, op in operations.items():
            for status in ("400", "414", "415", "431"):
                assert status in op["responses"], (method, path, status)


def test_every_frame_a_socket_is_sent_fits_its_declaration() -> None:
    world = World()
    socket = Socket(world, "c-doc", "s-doc").upgrade()
    socket.send({"type": "message", "content": "too early", "ref": "r"})
    socket.send({"type": "auth", "token": world.token()})
    socket.send({"type": "message", "content": "hello"})
    socket.send("{not json")
    socket.run(socket.protocol.end(1000, "normal"))
    frames = socket.frames
    assert {f["type"] for f in frames} == {"welcome", "state", "event", "error"}
    union: Any = SERVER_FRAMES[0]
    for kind in SERVER_FRAMES[1:]:
        union = union | kind
    for frame in frames:
        msgspec.convert(frame, union)


def test_the_asyncapi_document_tells_a_right_frame_from_a_wrong_one(
    generated: dict[str, Any],
) -> None:
    """Every frame a socket is sent fits the document's own schema of it, and
    the state frames' fields are the ones their state comes with."""
    document = generated["asyncapi.json"]

    def fits(name: str, frame: dict[str, Any]) -> bool:
        schema = {"$ref": f"#/components/schemas/{name}", "components": document["components"]}
        return not list(jsonschema.Draft202012Validator(schema).iter_errors(frame))

    world = World()
    socket = Socket(world, "c-doc", "s-doc").upgrade()
    socket.send({"type": "message", "content": "too early", "ref": "r"})
    socket.send({"type": "auth", "token": world.token()})
    socket.send({"type": "message", "content": "hello"})
    socket.send("{not json")
    socket.run(socket.protocol.end(1000, "normal"))
    names = {kind.__name__: kind for kind in SERVER_FRAMES}
    by_type = {
        "welcome": "WelcomeFrame",
        "state": "StateFrame",
        "event": "EventFrame",
        "error": "ErrorFrame",
    }
    for frame in socket.frames:
        assert by_type[frame["type"]] in names
        assert fits(by_type[frame["type"]], frame), frame
    live = next(f for f in socket.frames if f.get("state") == "PROCESSING_READY")
    assert not fits("StateFrame", {k: v for k, v in live.items() if k != "position"})
    assert not fits("StateFrame", {**live, "state": "NOT_A_STATE"})
    closed = socket.frames[-1]
    assert closed["state"] == "CLOSED" and not fits("StateFrame", {**closed, "code": None})
    assert not fits("WelcomeFrame", {**socket.frames[0], "state": "PROCESSING_READY"})
    # An error frame's code is one of the codes sessiond has, never free text.
    errors = [f for f in socket.frames if f["type"] == "error"]
    assert {f["code"] for f in errors} == {"not_ready", "bad_frame"}
    assert not fits("ErrorFrame", {**errors[0], "code": "something went wrong"})
    # An event is the same object over HTTP and on a socket: its time too.
    event = next(f for f in socket.frames if f["type"] == "event")
    assert not fits("EventFrame", {**event, "event": {**event["event"], "at": "yesterday"}})


def whole_number_schemas(node: Any) -> list[dict[str, Any]]:
    """Every schema in ``node`` that allows whole numbers written as floats."""
    found: list[dict[str, Any]] = []
    if isinstance(node, dict):
        if node.get("type") == "number" and node.get("multipleOf") == 1:
            found.append(node)
        for value in node.values():
            found.extend(whole_number_schemas(value))
    elif isinstance(node, list):
        for value in node:
            found.extend(whole_number_schemas(value))
    return found


def test_a_whole_number_the_documents_allow_fits_in_64_bits_however_it_is_compared(
    generated: dict[str, Any],
) -> None:
    """A count given as a whole float (``tokens: 3.0``) is declared with a
    float bound. Schemathesis turns a whole-number float branch into integers
    up to that bound: an exclusive 2**63 let it generate 2**63 + 191, which
    the server rightly refuses, and so its positive-data check failed. The
    bound is the largest float below 2**63, inclusive, which a float and an
    exact comparison read the same way."""
    for name, document in generated.items():
        schemas = whole_number_schemas(document)
        assert schemas, name
        for schema in schemas:
            assert "exclusiveMaximum" not in schema, (name, schema)
            assert int(schema["maximum"]) <= 2**63 - 1, (name, schema)
            assert float(schema["maximum"]) == schema["maximum"], (name, schema)


@pytest.fixture
def contract_server(tmp_path: Path, request: pytest.FixtureRequest) -> ServerProcess:
    store = request.param
    url = f"sqlite:///{tmp_path / 'contract.db'}"
    if store == "postgres":
        url = str(request.getfixturevalue("postgres_url"))
    server = ServerProcess(url)
    server.start(tmp_path / "server.log")
    request.addfinalizer(server.stop)
    return server


async def open_connection(base: str, token: str) -> str:
    """A connection for the run to name (no HTTP operation makes one)."""
    async with aiohttp.ClientSession() as http:
        url = f"{base}/v1/ws?session_id=contract-s&connection_id=contract-c"
        async with http.ws_connect(url, headers={"Authorization": f"Bearer {token}"}) as ws:
            while (await ws.receive_json()).get("state") != "PROCESSING_READY":
                pass
    return "contract-c"


@pytest.mark.parametrize("contract_server", ["sqlite", "postgres"], indirect=True)
async def test_schemathesis_finds_nothing_against_a_live_server(
    contract_server: ServerProcess,
) -> None:
    st = shutil.which("st", path=str(Path(sys.executable).parent)) or shutil.which("st")
    assert st is not None, "schemathesis is in the test extra: pip install -e '.[test]'"
    token = TokenSigner(TEST_SECRET).mint("alice", ["user", "service"])
    connection = await open_connection(contract_server.base_url, token)
    result = await asyncio.to_thread(
        subprocess.run,
        [
            st,
            "run",
            f"{contract_server.base_url}/v1/openapi.json",
            "-H",
            f"Authorization: Bearer {token}",
            "--max-examples",
            QUICK_EXAMPLES,
            "--seed",
            "20261201",
            "--no-color",
        ],
        cwd=ROOT,
        env={**os.environ, "SESSIOND_CONTRACT_CONNECTION": connection},
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-2000:]
    assert " passed" in result.stdout and "failures" not in result.stdout.lower()


async def test_a_node_builds_its_documents_once_however_often_they_are_asked_for(
    sqlite_url: str, serve: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Anyone may ask for the documents, with no token: each is built once per
    node and served from then on as the bytes it was."""
    import service.edge.http.documents as served

    built: list[str] = []
    for name in ("openapi", "asyncapi"):
        build = getattr(served, name)
        monkeypatch.setattr(
            served, name, lambda *a, _b=build, _n=name, **k: built.append(_n) or _b(*a, **k)
        )
    api = await serve(sqlite_url)
    bodies: dict[str, set[bytes]] = {}
    for path in ("/v1/openapi.json", "/v1/asyncapi.json") * 3:
        async with api.http.get(api.url(path)) as response:
            assert response.status == 200
            bodies.setdefault(path, set()).add(await response.read())
    assert sorted(built) == ["asyncapi", "openapi"]
    assert [len(each) for each in bodies.values()] == [1, 1]
    assert json.loads(next(iter(bodies["/v1/openapi.json"])))["openapi"].startswith("3.1")
