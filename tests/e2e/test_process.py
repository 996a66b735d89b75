"""`sessiond serve` as a real process: graceful shutdown, and kill -9 then
restart on the same SQLite file."""

from __future__ import annotations

import asyncio
import itertools
import os
import resource
import shutil
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.application.auth import TokenSigner
from service.runtime.settings import Settings
from tests.conftest import (
    TEST_SECRET,
    Api,
    ServerProcess,
    free_port,
    unavailable,
    wait_for_port,
)
from tests.e2e.wsclient import (
    AUDITOR,
    closed_record,
    connect,
    connection_states,
    open_live,
)

StartServer = Callable[..., ServerProcess]
SIGNER = TokenSigner(TEST_SECRET)


async def all_events(api: Api, session_id: str) -> list[dict[str, Any]]:
    """The session's whole history, page by page."""
    events: list[dict[str, Any]] = []
    after = 0
    while True:
        status, page = await api.call(
            "GET", f"/v1/sessions/{session_id}/events?after={after}&limit=1000", **AUDITOR
        )
        assert status == 200, page
        if not page["events"]:
            return events
        events.extend(page["events"])
        after = page["next_after"]


async def test_graceful_shutdown_closes_every_socket_with_1001_and_records_each(
    sqlite_url: str, server_process: StartServer
) -> None:
    server = server_process(sqlite_url)
    async with aiohttp.ClientSession() as http:
        api = Api(server.base_url, http, SIGNER)
        live_a = await open_live(api, "s-shut-a", connection_id="shut-live-a")
        live_b = await open_live(api, "s-shut-b", connection_id="shut-live-b")
        waiting = await connect(api, "s-shut-c", connection_id="shut-accepted")
        await waiting.until_state("ACCEPTED")
        sockets = {"shut-live-a": live_a, "shut-live-b": live_b, "shut-accepted": waiting}

        # Read every socket while the server shuts down, so each answers the
        # server's close frame as a client would.
        closing = [asyncio.create_task(s.until_closed(within=30)) for s in sockets.values()]
        exit_code = await asyncio.to_thread(server.terminate)
        codes = await asyncio.gather(*closing)
        assert exit_code == 0, server.log_path.read_text() if server.log_path else ""
        assert codes == [1001, 1001, 1001]
        for client in sockets.values():
            last = client.frames[-1]
            assert (last["type"], last["state"], last["code"]) == ("state", "CLOSED", 1001)

    restarted = server_process(sqlite_url)
    async with aiohttp.ClientSession() as http:
        api = Api(restarted.base_url, http, SIGNER)
        for cid in sockets:
            closed = await closed_record(api, cid)
            assert closed["data"]["details"] == {"code": 1001, "reason": "server_shutdown"}, cid
            states = await connection_states(api, cid)
            assert states.count("CLOSED") == 1 and states[-1] == "CLOSED", (cid, states)
        for sid in ("s-shut-a", "s-shut-b"):
            status, view = await api.call("GET", f"/v1/sessions/{sid}")
            assert status == 200 and view["connections"] == [], view


async def test_kill_9_loses_no_acknowledged_event_and_positions_stay_dense(
    sqlite_url: str, server_process: StartServer
) -> None:
    server = server_process(sqlite_url)
    sessions = ["s-kill-1", "s-kill-2"]
    # (session_id, message_id) -> the position the server acknowledged with 201
    acknowledged: dict[tuple[str, str], int] = {}
    enough = asyncio.Event()

    async with aiohttp.ClientSession() as http:
        api = Api(server.base_url, http, SIGNER)
        for sid in sessions:
            status, _ = await api.call("POST", "/v1/sessions", json={"session_id": sid})
            assert status == 201
        doomed = await open_live(api, "s-kill-socket", connection_id="conn-doomed")

        async def writer(worker: int) -> None:
            for i in itertools.count():
                sid = sessions[(worker + i) % len(sessions)]
                message_id = f"w{worker}-m{i}"
                try:
                    status, body = await api.call(
                        "POST",
                        f"/v1/sessions/{sid}/messages",
                        json={"role": "user", "content": message_id, "message_id": message_id},
                    )
                except (aiohttp.ClientError, OSError):
                    return  # the server is gone; this answer never came
                assert status == 201, body
                acknowledged[(sid, message_id)] = body["position"]
                if len(acknowledged) >= 150:
                    enough.set()

        writers = [asyncio.create_task(writer(w)) for w in range(6)]
        async with asyncio.timeout(30):
            await enough.wait()
        # kill -9 while the writers are still writing.
        await asyncio.to_thread(server.kill)
        async with asyncio.timeout(30):
            await asyncio.gather(*writers)
        await doomed.until_closed()

    restarted = server_process(sqlite_url)
    async with aiohttp.ClientSession() as http:
        api = Api(restarted.base_url, http, SIGNER)
        for sid in sessions:
            history = await all_events(api, sid)
            assert [e["position"] for e in history] == list(range(1, len(history) + 1)), sid
            recorded = {
                e["data"]["message_id"]: e["position"]
                for e in history
                if e["type"] == "MessageRecorded"
            }
            message_ids = [
                e["data"]["message_id"] for e in history if e["type"] == "MessageRecorded"
            ]
            assert len(message_ids) == len(set(message_ids)), "a message was recorded twice"
            mine = {mid: pos for (s, mid), pos in acknowledged.items() if s == sid}
            assert mine, "the writers wrote nothing to this session before the kill"
            missing = {mid: pos for mid, pos in mine.items() if recorded.get(mid) != pos}
            assert not missing, f"acknowledged but not recorded at its position: {missing}"
        # The socket that was live when the server died is recorded CLOSED lost.
        closed = await closed_record(api, "conn-doomed")
        assert closed["data"]["details"] == {"code": 1006, "reason": "lost"}
        status, view = await api.call("GET", "/v1/sessions/s-kill-socket")
        assert status == 200, view
        assert view["connections"] == []
        # The restarted server keeps numbering where the log left off.
        last = (await all_events(api, sessions[0]))[-1]["position"]
        status, body = await api.call(
            "POST", f"/v1/sessions/{sessions[0]}/messages", json={"role": "user", "content": "x"}
        )
        assert status == 201 and body["position"] == last + 1


def _listen_backlog(port: int) -> int:
    """A listening socket's backlog, as the kernel holds it (``ss``'s Send-Q)."""
    out = subprocess.run(
        ["ss", "-ltnH", f"sport = :{port}"], capture_output=True, text=True, check=True
    ).stdout.split()
    return int(out[2])


def test_the_server_listens_with_the_backlog_it_is_set_to(
    sqlite_url: str, server_process: Callable[..., ServerProcess]
) -> None:
    # A burst of clients beyond the backlog has its SYNs dropped, each client
    # then waiting a second to try again: aiohttp's own default is 128.
    if shutil.which("ss") is None:
        unavailable(
            "reading a listening socket's backlog needs iproute2's ss", ".ci/run installs it"
        )
    somaxconn = int(Path("/proc/sys/net/core/somaxconn").read_text())
    default = server_process(sqlite_url)
    assert _listen_backlog(default.port) == min(Settings.listen_backlog, somaxconn)
    chosen = server_process(sqlite_url.replace(".db", "-2.db"), SESSIOND_LISTEN_BACKLOG="777")
    assert _listen_backlog(chosen.port) == min(777, somaxconn)


def _open_file_limits(pid: int) -> tuple[int, int]:
    for line in Path(f"/proc/{pid}/limits").read_text().splitlines():
        if line.startswith("Max open files"):
            soft, hard = line.split()[3:5]
            return int(soft), int(hard)
    raise AssertionError("no open-file limit in /proc/PID/limits")


def test_serve_raises_its_open_file_limit_to_the_hard_one(tmp_path: Path) -> None:
    """Every socket is a file: a node started under a soft limit of 256 (many
    systems' default is 1,024) would hold only that many sockets, and one
    caller's idle connections could take them all, with the administrator's
    hard limit far higher."""
    hard = resource.getrlimit(resource.RLIMIT_NOFILE)[1]
    if hard != resource.RLIM_INFINITY and hard <= 256:
        pytest.skip(f"the hard open-file limit here is {hard}: nothing to raise to")

    def low_soft_limit() -> None:
        resource.setrlimit(resource.RLIMIT_NOFILE, (256, hard))

    port = free_port()
    log_path = tmp_path / "serve.log"
    with log_path.open("wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "service", "serve", "--port", str(port),
             "--store", f"sqlite:///{tmp_path / 'limits.db'}"],
            env={**os.environ, "SESSIOND_SECRET": TEST_SECRET},
            stdout=log, stderr=subprocess.STDOUT, preexec_fn=low_soft_limit,
        )  # fmt: skip
    try:
        wait_for_port(port, proc, log_path)
        soft, raised_hard = _open_file_limits(proc.pid)
        assert raised_hard == hard
        assert soft == hard, f"soft limit {soft}, hard {hard}"
    finally:
        proc.terminate()
        proc.wait(30)
