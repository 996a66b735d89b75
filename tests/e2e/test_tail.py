"""``sessiond tail`` as a person runs it: a real process following a real
server through its event stream, across a server restart, until the session
ends or Ctrl-C."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import sys
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.application.replay import timeline_line
from service.client import api_url
from tests.conftest import TEST_SECRET, ServerProcess
from tests.e2e.wsclient import GUARD, SIGNER, bearer, call, post_messages

Start = Callable[..., ServerProcess]


def tail_env(**extra: str) -> dict[str, str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return {**base, "PYTHONFAULTHANDLER": "1", **extra}


class Tail:
    """A ``sessiond tail`` process and the lines it has printed."""

    def __init__(self, proc: asyncio.subprocess.Process) -> None:
        self.proc = proc
        self.lines: list[str] = []

    async def line(self) -> str:
        assert self.proc.stdout is not None
        raw = await asyncio.wait_for(self.proc.stdout.readline(), GUARD)
        assert raw, f"tail ended early: {await self.stderr()}"
        text = raw.decode().rstrip("\n")
        self.lines.append(text)
        return text

    async def lines_until(self, position: int) -> None:
        while not self.lines or int(self.lines[-1].split()[1]) < position:
            await self.line()

    async def stderr(self) -> str:
        assert self.proc.stderr is not None
        return (await asyncio.wait_for(self.proc.stderr.read(), GUARD)).decode()

    async def exit_code(self) -> int:
        try:
            return await asyncio.wait_for(self.proc.wait(), GUARD)
        except TimeoutError:
            # Say where it hung: SIGABRT makes faulthandler (on in tail_env)
            # write every thread's stack to standard error before it dies.
            self.proc.send_signal(signal.SIGABRT)
            try:
                await asyncio.wait_for(self.proc.wait(), GUARD)
            except TimeoutError:
                self.proc.kill()
                await self.proc.wait()
            raise AssertionError(
                f"tail did not exit within {GUARD} s; its standard error:\n{await self.stderr()}"
            ) from None


@contextlib.contextmanager
def sigint(handler: Any) -> Iterator[None]:
    """SIGINT's disposition in this process, for the block."""
    before = signal.getsignal(signal.SIGINT)
    signal.signal(signal.SIGINT, handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, before)


async def start_tail(*args: str, env: dict[str, str]) -> Tail:
    # A person starts tail from a terminal, where Ctrl-C is not ignored. A test
    # run started in the background of a non-interactive shell, or under
    # nohup, ignores SIGINT, and an ignored signal is inherited across exec (a
    # handler is not): handled here while the process starts, it reaches the
    # tail at its default.
    with sigint(signal.default_int_handler):
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "service",
            "tail",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
    return Tail(proc)


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # No kept-alive connections: a restarted server must not meet a stale one.
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(force_close=True)) as session:
        yield session


async def history(http: aiohttp.ClientSession, base: str, session_id: str) -> list[dict[str, Any]]:
    status, body = await call(
        http, "GET", f"{base}/v1/sessions/{session_id}/events?limit=1000", roles=("auditor",)
    )
    assert status == 200, body
    return list(body["events"])


async def test_tail_prints_each_event_once_across_a_server_restart_and_exits_0_at_the_end(
    sqlite_url: str, server_process: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = server_process(sqlite_url)
    base = server.base_url
    status, _ = await call(http, "POST", f"{base}/v1/sessions", json={"session_id": "tail-1"})
    assert status == 201
    await post_messages(http, base, "tail-1", 2, "before")
    # No token given: it signs an auditor token of its own with the secret.
    tail = await start_tail("tail-1", "--url", base, env=tail_env(SESSIOND_SECRET=TEST_SECRET))
    await tail.lines_until(3)
    live = await post_messages(http, base, "tail-1", 2, "live")
    await tail.lines_until(live[-1])

    server.terminate()
    server.start(tmp_path / "server-again.log")
    worker = ("service",)
    tasks = f"{base}/v1/sessions/tail-1/tasks"
    status, _ = await call(
        http, "POST", tasks, user="w", roles=worker, json={"task_id": "t-1", "name": "export"}
    )
    assert status == 201
    status, _ = await call(
        http, "POST", f"{tasks}/t-1/progress", user="w", roles=worker, json={"done": 3}
    )
    assert status == 202
    status, _ = await call(http, "DELETE", f"{base}/v1/sessions/tail-1")
    assert status == 200

    assert await tail.exit_code() == 0
    assert tail.proc.stdout is not None
    tail.lines += (await tail.proc.stdout.read()).decode().splitlines()
    events = await history(http, base, "tail-1")
    assert tail.lines == [timeline_line(e) for e in events]
    assert events[-1]["type"] == "SessionEnded"
    said = await tail.stderr()
    assert "resum" in said and "Traceback" not in said


@pytest.mark.parametrize("session_id", [".", ".."])
async def test_tail_follows_a_session_whose_id_is_a_dot_segment(
    session_id: str, sqlite_url: str, server_process: Start, http: aiohttp.ClientSession
) -> None:
    """``.`` and ``..`` are IDs by the contract's grammar; in a URL they are
    dot segments, which a client removes unless they are percent-encoded."""
    server = server_process(sqlite_url)
    base = server.base_url
    status, _ = await call(http, "POST", f"{base}/v1/sessions", json={"session_id": session_id})
    assert status == 201
    messages = api_url(base, "v1", "sessions", session_id, "messages")
    async with http.post(messages, json={"role": "user", "content": "hi"}, headers=bearer()) as r:
        assert r.status == 201, await r.text()
    tail = await start_tail(session_id, "--url", base, env=tail_env(SESSIOND_SECRET=TEST_SECRET))
    await tail.lines_until(2)
    async with http.delete(api_url(base, "v1", "sessions", session_id), headers=bearer()) as r:
        assert r.status == 200, await r.text()
    assert await tail.exit_code() == 0
    assert tail.proc.stdout is not None
    tail.lines += (await tail.proc.stdout.read()).decode().splitlines()
    events = api_url(base, "v1", "sessions", session_id, "events")
    async with http.get(events, headers=bearer("auditor", "auditor")) as r:
        assert r.status == 200, await r.text()
        body = await r.json()
    assert tail.lines == [timeline_line(e) for e in body["events"]]
    assert [e["session_id"] for e in body["events"]] == [session_id] * 3


@pytest.mark.parametrize("test_run", ["handles SIGINT", "ignores SIGINT"])
async def test_ctrl_c_ends_tail_with_130_and_no_traceback(
    sqlite_url: str, server_process: Start, http: aiohttp.ClientSession, test_run: str
) -> None:
    server = server_process(sqlite_url)
    status, _ = await call(
        http, "POST", f"{server.base_url}/v1/sessions", json={"session_id": "tail-2"}
    )
    assert status == 201
    token = SIGNER.mint("alice")
    # As when the tests run in the background: the tail is still started as
    # from a terminal (it hung here, ignoring the Ctrl-C, before start_tail
    # saw to that).
    ignoring = test_run == "ignores SIGINT"
    with sigint(signal.SIG_IGN) if ignoring else contextlib.nullcontext():
        tail = await start_tail(
            "tail-2", "--url", server.base_url, env=tail_env(SESSIOND_TOKEN=token)
        )
    await tail.lines_until(1)
    tail.proc.send_signal(signal.SIGINT)
    assert await tail.exit_code() == 130
    assert "Traceback" not in await tail.stderr()


async def test_tail_refused_or_without_a_token_says_so_in_one_line_and_exits_1(
    sqlite_url: str, server_process: Start, http: aiohttp.ClientSession, tmp_path: Path
) -> None:
    server = server_process(sqlite_url)
    status, _ = await call(
        http, "POST", f"{server.base_url}/v1/sessions", json={"session_id": "tail-3"}
    )
    assert status == 201
    bob = bearer("bob")["Authorization"].removeprefix("Bearer ")
    for args, env, said in (
        (["--token", bob], tail_env(), "forbidden"),
        ([], tail_env(SESSIOND_TOKEN=bob), "forbidden"),
        (["--store", f"sqlite:///{tmp_path}/none/s.db"], tail_env(), "no token"),
    ):
        tail = await start_tail("tail-3", "--url", server.base_url, *args, env=env)
        assert await tail.exit_code() == 1
        err = await tail.stderr()
        assert said in err and "Traceback" not in err
        assert len(err.strip().splitlines()) == 1, err


async def test_tail_of_an_ended_session_past_its_end_says_nothing_came_after(
    sqlite_url: str, server_process: Start, http: aiohttp.ClientSession
) -> None:
    server = server_process(sqlite_url)
    base = server.base_url
    status, _ = await call(http, "POST", f"{base}/v1/sessions", json={"session_id": "tail-4"})
    assert status == 201
    status, _ = await call(http, "DELETE", f"{base}/v1/sessions/tail-4")
    assert status == 200
    env = tail_env(SESSIOND_SECRET=TEST_SECRET)
    tail = await start_tail("tail-4", "--url", base, "--after", "100", env=env)
    assert await tail.exit_code() == 0
    err = await tail.stderr()
    assert "has ended, with nothing after position 100" in err, err


@pytest.mark.parametrize("url", ["notaurl", "ftp://127.0.0.1:1", "http://"])
async def test_tail_with_a_url_that_is_no_server_is_a_usage_error(url: str) -> None:
    tail = await start_tail("s", "--url", url, env=tail_env(SESSIOND_SECRET=TEST_SECRET))
    assert await tail.exit_code() == 2
    err = await tail.stderr()
    assert "the server's URL must be http://" in err and "Traceback" not in err
    assert len(err.strip().splitlines()) == 1, err


async def test_tail_help_shows_its_defaults_and_environment_variables() -> None:
    tail = await start_tail("--help", env=tail_env())
    assert await tail.exit_code() == 0
    assert tail.proc.stdout is not None
    text = " ".join((await tail.proc.stdout.read()).decode().split())
    for shown in (
        "SESSIOND_URL",
        "SESSIOND_HOST",
        "SESSIOND_PORT",
        "http://127.0.0.1:8080",
        "SESSIOND_TOKEN",
        "SESSIOND_SECRET",
        "SESSIOND_STORE",
        "sqlite:///./sessiond.db",
        "default: 0",
    ):
        assert shown in text, shown


async def test_a_task_name_reaches_the_terminal_as_text_never_as_markup_or_control_codes(
    sqlite_url: str, server_process: Start, http: aiohttp.ClientSession
) -> None:
    """A task's name is whatever its writer sent: on a terminal its progress
    bar shows it as text, so a name that reads as rich markup cannot end the
    tail, and one holding escape sequences cannot clear the screen or retitle
    the window."""
    server = server_process(sqlite_url)
    base = server.base_url
    status, _ = await call(http, "POST", f"{base}/v1/sessions", json={"session_id": "tail-5"})
    assert status == 201
    name = "[/bold]\x1b[2J\x1b]0;pwned\x07export"
    status, _ = await call(
        http,
        "POST",
        f"{base}/v1/sessions/tail-5/tasks",
        user="w",
        roles=("service",),
        json={"task_id": "t-1", "name": name, "total": 4},
    )
    assert status == 201
    status, _ = await call(http, "DELETE", f"{base}/v1/sessions/tail-5")
    assert status == 200
    # TTY_COMPATIBLE: rich draws its bars as on a terminal though stdout is a pipe.
    env = tail_env(SESSIOND_SECRET=TEST_SECRET, TTY_COMPATIBLE="1")
    tail = await start_tail("tail-5", "--url", base, env=env)
    assert await tail.exit_code() == 0
    err = await tail.stderr()
    assert "Traceback" not in err, err
    assert tail.proc.stdout is not None
    out = (await tail.proc.stdout.read()).decode()
    assert "\x1b[2J" not in out and "\x1b]0;" not in out and "\x07" not in out
    assert "[/bold]\\x1b[2J\\x1b]0;pwned\\x07export (t-1)" in out
