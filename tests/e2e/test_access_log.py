"""The access lines of a real ``sessiond serve``: one per HTTP request with the
route's template and never a token, one per socket end; JSON lines that
parse, with their fields and a time in UTC."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from tests.conftest import Api, ServerProcess
from tests.e2e.wsclient import SIGNER, connect, eventually, open_live

StartServer = Callable[..., ServerProcess]
Serve = Callable[..., Any]


def json_lines(path: Path) -> list[dict[str, Any]]:
    """Every log line of the server's output (its one banner line on stdout
    is not a log line)."""
    return [
        json.loads(line)
        for line in path.read_text().splitlines()
        if not line.startswith("sessiond serving on ")
    ]


def access_lines(path: Path) -> list[dict[str, Any]]:
    return [line for line in json_lines(path) if line["logger"] == "sessiond.access"]


async def test_json_lines_carry_an_access_line_per_request_with_the_route_template(
    sqlite_url: str, server_process: StartServer
) -> None:
    server = server_process(sqlite_url, SESSIOND_LOG_FORMAT="json")
    assert server.log_path is not None
    token = SIGNER.mint("alice", ["user"])
    async with aiohttp.ClientSession() as http:
        api = Api(server.base_url, http, SIGNER)
        headers = {"Authorization": f"Bearer {token}"}
        status, _ = await api.call(
            "POST", "/v1/sessions", json={"session_id": "s-log"}, user=None, headers=headers
        )
        assert status == 201
        status, _ = await api.call(
            "POST",
            "/v1/sessions/s-log/messages?token=" + token,
            json={"role": "user", "content": "hello"},
            user=None,
            headers=headers,
        )
        assert status == 201
        status, _ = await api.call("GET", "/v1/sessions/s-log", user=None)
        assert status == 401
        status, _ = await api.call("GET", "/no/such/path", user=None)
        assert status == 404

        async def logged() -> list[dict[str, Any]]:
            return [a for a in access_lines(server.log_path) if a["path"] == "-"]

        await eventually(logged, "the 404's access line")

    text = server.log_path.read_text()
    assert token not in text and "Bearer" not in text
    lines = json_lines(server.log_path)
    assert any(line["message"] == "store open" for line in lines)
    for line in lines:
        assert {"time", "level", "logger", "message"} <= set(line), line
        stamp = datetime.fromisoformat(line["time"])
        assert stamp.utcoffset() == timedelta(0), line["time"]
        assert abs(datetime.now(UTC) - stamp) < timedelta(minutes=5)

    access = access_lines(server.log_path)
    by_path = {(a["method"], a["path"]): a for a in access}
    message = by_path[("POST", "/v1/sessions/{session_id}/messages")]
    assert message["level"] == "INFO"
    assert message["message"] == "POST /v1/sessions/{session_id}/messages 201"
    assert message["status"] == 201
    assert message["session_id"] == "s-log"
    assert message["user"] == "alice"
    assert isinstance(message["duration_ms"], float) and message["duration_ms"] >= 0
    assert "connection_id" not in message

    refused = by_path[("GET", "/v1/sessions/{session_id}")]
    assert refused["status"] == 401 and "user" not in refused
    assert refused["session_id"] == "s-log"
    assert by_path[("GET", "-")]["status"] == 404
    assert by_path[("POST", "/v1/sessions")]["status"] == 201


async def test_a_socket_end_is_one_access_line_with_its_ids_user_code_and_duration(
    sqlite_url: str, server_process: StartServer
) -> None:
    server = server_process(sqlite_url, SESSIOND_LOG_FORMAT="json")
    assert server.log_path is not None
    async with aiohttp.ClientSession() as http:
        api = Api(server.base_url, http, SIGNER)
        client = await open_live(api, "s-sock", user="bob", connection_id="c-sock")
        await client.close(1000)
        refused = await connect(api, "s-sock", connection_id="c-refused")
        await refused.until_state("ACCEPTED")
        await refused.send({"type": "auth", "token": "not-a-token"})
        assert await refused.until_closed() == 4401

        def ended(connection_id: str) -> Callable[[], Any]:
            async def check() -> list[dict[str, Any]]:
                return [
                    a
                    for a in access_lines(server.log_path)  # type: ignore[arg-type]
                    if a["message"] == "connection closed" and a["connection_id"] == connection_id
                ]

            return check

        [live] = await eventually(ended("c-sock"), "the socket's end line")
        [bad] = await eventually(ended("c-refused"), "the refused socket's end line")

    assert live["session_id"] == "s-sock"
    assert live["user"] == "bob"
    assert live["code"] == 1000
    assert live["reason"] == "normal"
    assert live["duration_ms"] > 0
    assert bad["code"] == 4401 and "user" not in bad
    assert bad["reason"].startswith("unauthenticated")

    async def upgrades_logged() -> list[dict[str, Any]]:
        found = [a for a in access_lines(server.log_path) if a.get("path") == "/v1/ws"]  # type: ignore[arg-type]
        return found if len(found) == 2 else []

    upgrades = await eventually(upgrades_logged, "the two upgrades' access lines")
    assert {(a["connection_id"], a["status"]) for a in upgrades} == {
        ("c-sock", 101),
        ("c-refused", 101),
    }
    assert {a.get("user") for a in upgrades} == {"bob", None}


async def test_access_lines_can_be_silenced_alone(
    sqlite_url: str, serve: Serve, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO)
    api = await serve(sqlite_url)
    status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "s-quiet"})
    assert status == 201
    assert [r.getMessage() for r in caplog.records if r.name == "sessiond.access"] == [
        "POST /v1/sessions 201"
    ]
    caplog.clear()
    caplog.set_level(logging.WARNING, logger="sessiond.access")
    status, _ = await api.call("GET", "/v1/sessions/s-quiet")
    assert status == 200
    assert [r for r in caplog.records if r.name == "sessiond.access"] == []
