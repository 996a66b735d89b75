"""Store outages on real servers, real stores and real sockets
(docs/PROTOCOL.md v1.1 "Faults"; docs/adr/0028-fail-fast-while-the-store-is-down.md).

PostgreSQL is a private cluster that the test stops and starts (never the
shared server); SQLite faults are a full disk (a small tmpfs the test mounts),
a store file made immutable, and the store's folder moved away, removed or
replaced while the node runs. While the store cannot be reached or
written, every call that needs it answers 503 ``unavailable`` with
``Retry-After``, never 500; reads of what exists keep working where the
store can still be read; nothing false is left in the record; and once the
fault is gone everything works again without a restart.

One timing bound is asserted, because it is part of the contract: a call
that needs the store answers within ``BUDGET`` seconds while the store is
down. Every other wait has a guard that fails a test instead of hanging it.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import shutil
import sqlite3
import subprocess
import time
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from service.storage.store import open_store, parse_store_url
from tests.conftest import Api, ServerProcess, ThrowawayPostgres
from tests.e2e.wsclient import (
    AUDITOR,
    SIGNER,
    WsClient,
    closed_record,
    connect,
    eventually,
    open_live,
    refused_upgrade,
)

BUDGET = 5.0  # seconds: "answers 503 unavailable with Retry-After within 5 seconds"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as session:
        yield session


def api_of(node: ServerProcess, http: aiohttp.ClientSession) -> Api:
    return Api(node.base_url, http, SIGNER)


async def timed_call(
    api: Api, method: str, path: str, **kwargs: Any
) -> tuple[int, Any, dict[str, str], float]:
    """One call: its status, body, headers and how long its answer took."""
    headers = dict(kwargs.pop("headers", {}))
    if kwargs.pop("authorized", True):
        headers.update(api.auth("alice"))
    started = time.monotonic()
    async with api.http.request(method, api.url(path), headers=headers, **kwargs) as r:
        body = await r.json(content_type=None)
        return r.status, body, dict(r.headers), time.monotonic() - started


def assert_unavailable(
    what: str, status: int, body: Any, headers: dict[str, str], took: float
) -> None:
    assert status == 503, f"{what}: {status} {body}"
    assert body["error"]["code"] == "unavailable", f"{what}: {body}"
    assert headers.get("Retry-After", "").isdigit(), f"{what}: no Retry-After in {headers}"
    assert int(headers["Retry-After"]) >= 1, f"{what}: {headers['Retry-After']}"
    assert took < BUDGET, f"{what} took {took:.1f} s to answer 503"


def internal_errors(metrics_text: str) -> float:
    """How many HTTP answers the node's /metrics counts as ``internal`` (500)."""
    total = 0.0
    for line in metrics_text.splitlines():
        if line.startswith("sessiond_http_errors_total{") and 'code="internal"' in line:
            total += float(line.rsplit(" ", 1)[1])
    return total


async def no_internal_errors(api: Api) -> None:
    async with api.http.get(api.url("/metrics")) as r:
        assert r.status == 200
        text = await r.text()
    assert internal_errors(text) == 0, re.findall(r".*internal.*", text)


async def writes_succeed(api: Api, session_id: str, message_id: str) -> dict[str, Any]:
    """Post one message (the same ``message_id`` every try) until it is
    recorded; every answer on the way is 201/200 or 503, never anything else."""

    async def recorded() -> dict[str, Any] | None:
        status, body = await api.call(
            "POST",
            f"/v1/sessions/{session_id}/messages",
            json={"role": "user", "content": message_id, "message_id": message_id},
        )
        assert status in (200, 201, 503), (status, body)
        return body if status in (200, 201) else None

    body: dict[str, Any] = await eventually(recorded, f"a write to {session_id} to succeed", 30)
    return body


async def status_of(api: Api, path: str) -> int:
    async with api.http.get(api.url(path)) as r:
        return r.status


async def message_until_recorded(client: WsClient, message_id: str) -> dict[str, Any]:
    """Send a ``message`` frame (same ``message_id`` each time) until its event
    arrives; each try that the store cannot take is answered ``unavailable``."""
    deadline = time.monotonic() + 30
    attempt = 0
    while time.monotonic() < deadline:
        attempt += 1
        ref = f"{message_id}-{attempt}"
        await client.send(
            {"type": "message", "content": message_id, "message_id": message_id, "ref": ref}
        )
        frame = await client.until(
            lambda f, ref=ref: (
                (f.get("type") == "error" and f.get("ref") == ref)
                or (f.get("type") == "event" and f["event"]["data"].get("message_id") == message_id)
            )
        )
        if frame["type"] == "event":
            return dict(frame["event"])
        assert frame["code"] == "unavailable", frame
        await asyncio.sleep(0.2)
    raise AssertionError(f"{message_id} was never recorded")


# --- PostgreSQL stopped --------------------------------------------------------------


async def test_while_postgresql_is_down_every_call_answers_503_with_retry_after_within_the_budget(
    throwaway_postgres: ThrowawayPostgres,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    pg = throwaway_postgres
    # A session the next run's writer has never held (its aggregate is not in
    # the writer's cache): written by an earlier run of the node.
    earlier = await asyncio.to_thread(server_process, pg.url, SESSIOND_NODE="outage")
    api = api_of(earlier, http)
    assert (await api.call("POST", "/v1/sessions", json={"session_id": "cold-1"}))[0] == 201
    earlier.terminate()

    node = await asyncio.to_thread(server_process, pg.url, SESSIOND_NODE="outage")
    api = api_of(node, http)
    assert (await api.call("POST", "/v1/sessions", json={"session_id": "warm-1"}))[0] == 201
    status, _ = await api.call(
        "POST",
        "/v1/sessions/warm-1/tasks",
        json={"task_id": "job", "name": "job"},
        user="worker",
        roles=("service",),
    )
    assert status == 201
    steady = await open_live(api, "warm-1", connection_id="steady")
    assert await status_of(api, "/readyz") == 200

    pg.stop()
    message = {"role": "user", "content": "while down"}
    calls: list[tuple[str, str, Any]] = [
        ("POST", "/v1/sessions", {"session_id": "new-1"}),
        ("POST", "/v1/sessions/cold-1/messages", message),
        ("POST", "/v1/sessions/warm-1/messages", message),
        ("POST", "/v1/sessions/warm-1/tasks", {"task_id": "job-2", "name": "job-2"}),
        ("DELETE", "/v1/sessions/cold-1", None),
        ("GET", "/v1/sessions/warm-1", None),
        ("GET", "/v1/sessions/cold-1", None),
        ("GET", "/v1/sessions", None),
        ("GET", "/v1/sessions/warm-1/events", None),
        ("GET", "/v1/sessions/warm-1/state?at=1", None),
        ("GET", "/v1/connections/steady", None),
        ("GET", "/v1/connections/steady/events", None),
    ]
    # Under load: every call eight times at once, twice over. The node learns
    # of the outage from the first calls that fail (or its probe's ping);
    # from then on each is answered without trying.
    for _ in range(2):
        answers = await asyncio.gather(
            *(
                timed_call(api, method, path, json=body)
                for method, path, body in calls
                for _ in range(8)
            )
        )
        for (method, path, _body), answer in zip(
            [c for c in calls for _ in range(8)], answers, strict=True
        ):
            assert_unavailable(f"{method} {path}", *answer)

    status, body, headers, took = await timed_call(api, "GET", "/livez", authorized=False)
    assert status == 200, body
    assert took < 1.0, f"/livez took {took:.1f} s"
    for path in ("/readyz", "/healthz"):
        status, body, headers, took = await timed_call(api, "GET", path, authorized=False)
        assert_unavailable(path, status, body, headers, took)
        assert took < 1.0, f"{path} took {took:.1f} s"

    # An upgrade is refused before it happens, and records nothing.
    started = time.monotonic()
    status, body = await refused_upgrade(
        api, api.ws_url("warm-1", connection_id="never-1"), api.auth("alice")
    )
    assert (status, body["error"]["code"]) == (503, "unavailable")
    assert time.monotonic() - started < BUDGET

    pg.start()
    await writes_succeed(api, "warm-1", "after-outage")
    await writes_succeed(api, "cold-1", "after-outage-cold")

    async def ready() -> bool:
        return await status_of(api, "/readyz") == 200

    await eventually(ready, "/readyz to answer 200 again")
    status, _ = await api.call("GET", "/v1/connections/never-1", **AUDITOR)
    assert status == 404, "a refused upgrade recorded a connection"
    await steady.close()
    await no_internal_errors(api)


async def test_sockets_ride_out_a_postgresql_outage_and_every_close_is_recorded_with_its_code(
    throwaway_postgres: ThrowawayPostgres,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    pg = throwaway_postgres
    node = await asyncio.to_thread(
        server_process, pg.url, SESSIOND_NODE="sockets", SESSIOND_AUTH_TIMEOUT="120"
    )
    api = api_of(node, http)
    steady = await open_live(api, "talk-1", connection_id="steady")
    before = await message_until_recorded(steady, "before")
    leaver = await open_live(api, "talk-2", connection_id="leaver")
    # Upgraded, not yet authenticated: its handshake cannot go on while the
    # store is down.
    halfway = await connect(api, "talk-3", connection_id="halfway")
    await halfway.until_state("ACCEPTED")

    pg.stop()
    for ref in ("during-1", "during-2", "during-3"):
        started = time.monotonic()
        await steady.send({"type": "message", "content": ref, "ref": ref})
        error = await steady.until(lambda f, ref=ref: f.get("ref") == ref)
        assert (error["type"], error["code"]) == ("error", "unavailable"), error
        assert time.monotonic() - started < BUDGET
    assert not steady.ws.closed

    await leaver.close(code=4321)
    await halfway.send({"type": "auth", "token": SIGNER.mint("alice")})
    assert await halfway.until_closed() == 1013
    assert halfway.frames[-1]["state"] == "CLOSED" and halfway.frames[-1]["code"] == 1013

    pg.start()
    after = await message_until_recorded(steady, "after")
    assert after["position"] > before["position"]
    assert not steady.ws.closed, "the socket did not outlive the outage"

    left = await closed_record(api, "leaver", **AUDITOR)
    assert left["data"]["details"] == {"code": 4321, "reason": "client_closed"}
    stopped = await closed_record(api, "halfway", **AUDITOR)
    assert stopped["data"]["details"]["code"] == 1013
    for connection_id, session_id in (("leaver", "talk-2"), ("halfway", "talk-3")):
        status, view = await api.call("GET", f"/v1/connections/{connection_id}", **AUDITOR)
        assert (status, view["state"]) == (200, "CLOSED"), view
        status, session = await api.call("GET", f"/v1/sessions/{session_id}")
        assert connection_id not in session.get("connections", []), session
    status, view = await api.call("GET", "/v1/connections/steady", **AUDITOR)
    assert view["state"] == "PROCESSING_READY"
    await steady.close()
    await closed_record(api, "steady", **AUDITOR)
    await no_internal_errors(api)


# --- SQLite faults ---------------------------------------------------------------------


@contextlib.contextmanager
def small_disk(path: Path, size: str) -> Iterator[Path]:
    """A tmpfs of ``size`` mounted at ``path`` for as long as the block runs."""
    path.mkdir()
    mounted = subprocess.run(
        ["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
        capture_output=True,
        check=False,
    )
    if mounted.returncode:
        pytest.skip(f"cannot mount a tmpfs to fill (needs root): {mounted.stderr.decode().strip()}")
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def fill(disk: Path) -> Path:
    """Write a file until ``disk`` has no room left; the file."""
    filler = disk / "filler"
    with open(filler, "wb") as f, contextlib.suppress(OSError):
        while True:
            f.write(b"\0" * 65536)
            f.flush()
    return filler


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """``paths`` immutable (``chattr +i``: root writes through file modes) for
    as long as the block runs; always made writable again."""
    files = [str(p) for p in paths]
    if subprocess.run(["chattr", "+i", *files], capture_output=True, check=False).returncode:
        pytest.skip("this file system cannot mark a file immutable (chattr +i)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *files], check=True)


async def writes_answer_503(api: Api, session_id: str) -> None:
    """Write until the store refuses (a fault may leave room for a few more);
    then a few more, each 503 within the budget."""
    refused = 0
    for i in range(400):
        status, body, headers, took = await timed_call(
            api,
            "POST",
            f"/v1/sessions/{session_id}/messages",
            json={"role": "user", "content": "x" * 2000 + str(i)},
        )
        assert status in (201, 503), (status, body)
        if status == 503:
            assert_unavailable("a write", status, body, headers, took)
            refused += 1
            if refused == 5:
                return
    raise AssertionError("the store never refused a write")


async def reads_still_work(api: Api, session_id: str, *, writes_refused: bool = False) -> None:
    """Every read answers. While writes are refused, the projector may not
    have written the last events before the store stopped taking writes:
    the session list, which has no other source than its tables, is then
    refused 503 with a time to retry rather than answered short of them
    (ADR 0059); the other reads fold what the tables lack from the log."""
    for path in (
        f"/v1/sessions/{session_id}",
        f"/v1/sessions/{session_id}/events",
        f"/v1/sessions/{session_id}/state?at=1",
    ):
        status, body = await api.call("GET", path)
        assert status == 200, (path, status, body)
    async with api.http.get(api.url("/v1/sessions"), headers=api.auth()) as r:
        body = await r.json()
        if writes_refused and r.status == 503:
            assert body["error"]["code"] == "unavailable" and "Retry-After" in r.headers, body
        else:
            assert r.status == 200, body
            assert session_id in [s["session_id"] for s in body["sessions"]], body


async def test_a_full_disk_under_sqlite_refuses_writes_with_503_keeps_reads_and_heals(
    tmp_path: Path,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    with small_disk(tmp_path / "disk", "24m") as disk:
        node = await asyncio.to_thread(server_process, f"sqlite:///{disk / 'sessiond.db'}")
        try:
            api = api_of(node, http)
            assert (await api.call("POST", "/v1/sessions", json={"session_id": "full-1"}))[0] == 201
            await writes_succeed(api, "full-1", "before-full")
            filler = await asyncio.to_thread(fill, disk)
            await writes_answer_503(api, "full-1")
            await reads_still_work(api, "full-1", writes_refused=True)
            status, _ = await refused_upgrade(api, api.ws_url("full-1"), api.auth("alice"))
            assert status == 503
            filler.unlink()
            await writes_succeed(api, "full-1", "after-full")
            await reads_still_work(api, "full-1")
            await no_internal_errors(api)
        finally:
            node.stop()


async def test_a_read_only_sqlite_store_refuses_writes_with_503_keeps_reads_and_heals(
    tmp_path: Path,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    db = tmp_path / "ro.db"
    node = await asyncio.to_thread(server_process, f"sqlite:///{db}")
    api = api_of(node, http)
    assert (await api.call("POST", "/v1/sessions", json={"session_id": "ro-1"}))[0] == 201
    await writes_succeed(api, "ro-1", "before-read-only")
    # In WAL mode a write lands in the -wal file first: the store is read-only
    # when both are.
    with immutable(db, db.with_name(db.name + "-wal")):
        await writes_answer_503(api, "ro-1")
        await reads_still_work(api, "ro-1", writes_refused=True)
    await writes_succeed(api, "ro-1", "after-read-only")
    await reads_still_work(api, "ro-1")
    await no_internal_errors(api)


# --- the SQLite store's file gone from its path -----------------------------------------
# An open connection holds the file, not its path: before ADR 0051 a node whose
# store folder was removed or moved away went on answering 201 into a file
# nobody else would ever see, and lost all of it when it stopped.


async def message_ids(api: Api, session_id: str) -> list[str]:
    status, body = await api.call("GET", f"/v1/sessions/{session_id}/events")
    assert status == 200, body
    return [e["data"]["message_id"] for e in body["events"] if "message_id" in e["data"]]


async def every_write_refused(api: Api, session_id: str, tries: int = 8) -> None:
    """Each write, from the first, answered 503 ``unavailable`` in time."""
    for i in range(tries):
        answer = await timed_call(
            api,
            "POST",
            f"/v1/sessions/{session_id}/messages",
            json={"role": "user", "content": "while gone", "message_id": f"gone-{i}"},
        )
        assert_unavailable(f"write {i} after the store file went", *answer)


async def down_everywhere(api: Api, session_id: str) -> None:
    """/readyz and /healthz 503 (within a probe's round), then every call that
    needs the store 503, an upgrade refused before it happens."""

    async def not_ready() -> bool:
        return await status_of(api, "/readyz") == 503

    await eventually(not_ready, "/readyz to answer 503", 3 * BUDGET)
    answers = []
    for path in ("/readyz", "/healthz"):
        answers.append(await timed_call(api, "GET", path, authorized=False))
        assert_unavailable(path, *answers[-1])
    assert (await timed_call(api, "GET", "/livez", authorized=False))[0] == 200
    await every_write_refused(api, session_id)
    for path in (
        "/v1/sessions",
        f"/v1/sessions/{session_id}",
        f"/v1/sessions/{session_id}/events",
    ):
        answers.append(await timed_call(api, "GET", path))
        assert_unavailable(f"GET {path}", *answers[-1])
    # What callers are told names no file of the node's (/readyz needs no token).
    for _, body, _, _ in answers:
        assert ".db" not in str(body), body
    started = time.monotonic()
    status, body = await refused_upgrade(
        api, api.ws_url(session_id, connection_id="never-gone"), api.auth("alice")
    )
    assert (status, body["error"]["code"]) == (503, "unavailable")
    assert time.monotonic() - started < BUDGET


async def node_on_a_store_folder(
    tmp_path: Path,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
    session_id: str,
) -> tuple[Path, ServerProcess, Api]:
    """A node on a SQLite store in a folder of its own (``store/sessiond.db``),
    with ``session_id`` created and written to."""
    folder = tmp_path / "store"
    folder.mkdir()
    node = await asyncio.to_thread(server_process, f"sqlite:///{folder / 'sessiond.db'}")
    api = api_of(node, http)
    assert (await api.call("POST", "/v1/sessions", json={"session_id": session_id}))[0] == 201
    await writes_succeed(api, session_id, "before")
    return folder, node, api


async def test_a_sqlite_store_moved_away_is_down_until_it_is_back_and_nothing_acknowledged_is_lost(
    tmp_path: Path,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    folder, node, api = await node_on_a_store_folder(tmp_path, server_process, http, "moved-1")
    url = f"sqlite:///{folder / 'sessiond.db'}"
    client = await open_live(api, "moved-1", connection_id="rider")
    await message_until_recorded(client, "socket-before")

    # The folder with the .db, -wal, -shm and lock files moved away, and an
    # empty one where it was: the node must create nothing in it.
    away = tmp_path / "away"
    folder.rename(away)
    folder.mkdir()
    await every_write_refused(api, "moved-1")
    await client.send(
        {"type": "message", "content": "x", "message_id": "socket-gone", "ref": "gone"}
    )
    frame = await client.until(lambda f: f.get("type") == "error" and f.get("ref") == "gone")
    assert frame["code"] == "unavailable", frame
    await down_everywhere(api, "moved-1")
    await asyncio.sleep(1.5)  # a few of the probe's rounds, the projector's too
    assert list(folder.iterdir()) == [], "the node created files where its store was"
    await no_internal_errors(api)

    # The same file back at its path: everything works again, no restart.
    folder.rmdir()
    away.rename(folder)
    await writes_succeed(api, "moved-1", "after")
    await message_until_recorded(client, "socket-after")

    async def ready() -> bool:
        return await status_of(api, "/readyz") == 200

    await eventually(ready, "/readyz to answer 200 again")
    await reads_still_work(api, "moved-1")
    status, _ = await api.call("GET", "/v1/connections/never-gone", **AUDITOR)
    assert status == 404, "a refused upgrade recorded a connection"
    await client.close()
    await no_internal_errors(api)

    # Everything acknowledged is in the file, and nothing that was refused.
    expected = ["before", "socket-before", "after", "socket-after"]
    assert await message_ids(api, "moved-1") == expected
    assert node.terminate() == 0
    again = api_of(await asyncio.to_thread(server_process, url), http)
    assert await message_ids(again, "moved-1") == expected


async def test_a_sqlite_store_removed_or_replaced_stays_down_and_nothing_is_written_in_its_place(
    tmp_path: Path,
    server_process: Callable[..., ServerProcess],
    http: aiohttp.ClientSession,
) -> None:
    folder, _node, api = await node_on_a_store_folder(tmp_path, server_process, http, "removed-1")
    db = folder / "sessiond.db"
    # Another store, kept aside (a backup, a copy of another node's): it is
    # put where the removed one was.
    other = tmp_path / "other"
    other.mkdir()
    with contextlib.closing(open_store(parse_store_url(f"sqlite:///{other / 'sessiond.db'}"))):
        pass

    def rows(path: Path) -> int:
        with contextlib.closing(sqlite3.connect(path)) as c:
            return int(c.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])

    shutil.rmtree(folder)
    await every_write_refused(api, "removed-1")
    await down_everywhere(api, "removed-1")
    assert not folder.exists()
    await no_internal_errors(api)

    other.rename(folder)
    await asyncio.sleep(2.5)  # a few of the probe's rounds
    await down_everywhere(api, "removed-1")
    assert rows(db) == 0, "the node wrote into a file it did not open"
    await no_internal_errors(api)
