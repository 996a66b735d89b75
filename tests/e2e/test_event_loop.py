"""The event loop ``sessiond serve`` runs on: uvloop where it is installed,
asyncio's own when asked (docs/adr/0045-run-the-server-on-uvloop-where-it-is-installed.md).

The other end-to-end tests drive server processes on the default loop and the
in-process ones run on pytest's asyncio loop, so both loops serve every test
of the contract; these check the choice itself.
"""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import aiohttp
import pytest

from service.runtime import eventloop
from service.runtime.settings import Settings, SettingsError
from tests.conftest import TEST_SECRET, Api, ServerProcess, unavailable
from tests.e2e.test_cli import sessiond
from tests.e2e.wsclient import SIGNER, open_socket


@pytest.mark.parametrize(
    ("asked", "runs"),
    [(None, "uvloop"), ("auto", "uvloop"), ("uvloop", "uvloop"), ("asyncio", "asyncio")],
    ids=["default", "auto", "uvloop", "asyncio"],
)
async def test_serve_runs_on_the_loop_asked_and_serves_a_socket_its_whole_life(
    server_process: Callable[..., ServerProcess], sqlite_url: str, asked: str | None, runs: str
) -> None:
    if eventloop.chosen("auto") != "uvloop":
        unavailable(
            "uvloop is not installed (it is built for CPython on Linux and macOS)",
            "pip install -e '.[test]' installs it with sessiond",
        )
    server = server_process(sqlite_url, **({} if asked is None else {"SESSIOND_EVENT_LOOP": asked}))
    async with aiohttp.ClientSession() as http:
        api = Api(server.base_url, http, SIGNER)
        status, _ = await api.call("POST", "/v1/sessions", json={"session_id": "looped"})
        assert status == 201
        client = await open_socket(http, server.base_url, "looped", connection_id="on-the-loop")
        status, body = await api.call(
            "POST",
            "/v1/sessions/looped/messages",
            json={"message_id": "m-1", "role": "user", "content": "hello"},
        )
        assert status in (200, 201), body
        event = await client.until_event(body["position"])
        assert event["data"]["message_id"] == "m-1"
        await client.close()
    assert server.terminate() == 0
    assert server.log_path is not None
    said = [
        line
        for line in server.log_path.read_text().splitlines()
        if " INFO sessiond serving " in line
    ]
    assert len(said) == 1 and f"event_loop={runs}" in said[0], said


def test_a_loop_that_is_not_installed_is_refused_before_anything_starts(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # A Python without uvloop (an import that fails, as on Windows or PyPy).
    monkeypatch.setitem(sys.modules, "uvloop", None)
    with pytest.raises(eventloop.EventLoopUnavailable, match="pip install uvloop"):
        eventloop.loop_factory("uvloop")
    # "auto" falls back to asyncio's own loop there.
    loop = eventloop.loop_factory("auto")()
    try:
        assert eventloop.loop_name(loop) == "asyncio"
    finally:
        loop.close()


def test_serve_without_the_loop_it_was_asked_for_exits_2_with_one_line(tmp_path: Path) -> None:
    # A directory that shadows uvloop with a module that fails to import.
    shadow = tmp_path / "shadow"
    shadow.mkdir()
    (shadow / "uvloop.py").write_text("raise ImportError('not built for this platform')\n")
    result = sessiond(
        "serve",
        "--store",
        f"sqlite:///{tmp_path / 'never.db'}",
        cwd=tmp_path,
        env={
            "SESSIOND_EVENT_LOOP": "uvloop",
            "SESSIOND_SECRET": TEST_SECRET,
            "PYTHONPATH": f"{shadow}:{Path(__file__).resolve().parents[2]}",
        },
    )
    assert result.returncode == 2, result.stderr
    assert result.stderr.strip().splitlines()[-1] == (
        "sessiond: error: SESSIOND_EVENT_LOOP is uvloop, but uvloop is not installed here "
        "(pip install uvloop; it is built for CPython on Linux and macOS)"
    )
    assert not (tmp_path / "never.db").exists(), "refused before the store was opened"


def test_the_event_loop_setting_takes_its_three_names_and_refuses_others() -> None:
    assert Settings.from_env({}).event_loop == "auto"
    for name in ("auto", "uvloop", "asyncio", " UVLOOP "):
        assert Settings.from_env({"SESSIOND_EVENT_LOOP": name}).event_loop == name.strip().lower()
    with pytest.raises(SettingsError, match="SESSIOND_EVENT_LOOP must be one of auto, uvloop"):
        Settings.from_env({"SESSIOND_EVENT_LOOP": "tokio"})
