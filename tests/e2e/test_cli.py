"""The ``sessiond`` command line as a new user meets it: real processes."""

from __future__ import annotations

import os
import socket
import sqlite3
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import aiohttp
import pytest

from domain.session import Session
from service.storage.store import open_store, parse_store_url
from tests.conftest import free_port


def sessiond(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    return subprocess.run(
        [sys.executable, "-m", "service", *args],
        cwd=cwd,
        env={**base, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def start_server(
    *args: str, cwd: Path, env: dict[str, str] | None = None
) -> tuple[subprocess.Popen[str], int]:
    port = free_port()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    # stop() is about what follows the drain
    env = {**base, "SESSIOND_DRAIN_SECONDS": "0", **(env or {})}
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--port", str(port), *args],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        assert proc.poll() is None, proc.communicate()[0]
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return proc, port
        except OSError:
            time.sleep(0.05)
    proc.kill()
    proc.communicate()
    raise AssertionError("server did not start")


def stop(proc: subprocess.Popen[str]) -> str:
    proc.terminate()
    output, _ = proc.communicate(timeout=30)
    assert proc.returncode == 0, output
    return output


async def test_a_token_from_sessiond_token_is_accepted_by_sessiond_serve_with_no_setup(
    tmp_path: Path,
) -> None:
    proc, port = start_server(cwd=tmp_path)
    try:
        minted = sessiond("token", "--user", "alice", cwd=tmp_path)
        assert minted.returncode == 0, minted.stderr
        token = minted.stdout.strip()
        async with (
            aiohttp.ClientSession() as http,
            http.post(
                f"http://127.0.0.1:{port}/v1/sessions",
                json={"session_id": "from-the-cli"},
                headers={"Authorization": f"Bearer {token}"},
            ) as r,
        ):
            assert r.status == 201
            assert (await r.json())["owner"] == "alice"
    finally:
        stop(proc)
    key = tmp_path / "sessiond.key"
    assert key.exists(), "the shared key file lives beside the default store"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert (tmp_path / "sessiond.db").exists()


def test_sessiond_token_never_makes_a_key_and_says_where_it_looked(tmp_path: Path) -> None:
    result = sessiond("token", "--user", "alice", cwd=tmp_path)
    assert result.returncode == 1
    assert result.stdout == ""
    assert f"no key file at {tmp_path / 'sessiond.key'}" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1
    assert not (tmp_path / "sessiond.key").exists()
    made = sessiond("token", "--user", "alice", cwd=tmp_path, env={"SESSIOND_SECRET": "s" * 40})
    assert made.returncode == 0 and made.stdout.count(".") == 2


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["serve", "--port", "99999"], "the port must be between 1 and 65535"),
        (["serve", "--port", "0"], "the port must be between 1 and 65535"),
        (["serve", "--store", "sqlite:///"], "bad store URL"),
        (["serve", "--host", "no-such-host.invalid", "--store", "memory://"], "cannot listen on"),
    ],
)
def test_a_bad_start_is_one_line_not_a_traceback(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = sessiond(*args, cwd=tmp_path)
    assert result.returncode != 0
    assert says in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--user", "alice", "--ttl", str(10**21)], "ttl must be at most"),
        (["--user", ""], "the user must be a non-empty string"),
    ],
    ids=["expiry-past-64-bits", "empty-user"],
)
def test_sessiond_token_refuses_a_token_the_server_would_refuse(
    tmp_path: Path, args: list[str], says: str
) -> None:
    result = sessiond("token", *args, cwd=tmp_path, env={"SESSIOND_SECRET": "k" * 40})
    assert result.returncode == 2
    assert says in result.stderr and result.stdout == ""
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_a_read_only_store_is_one_line_not_a_traceback(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'ro.db'}"
    proc, _ = start_server("--store", url, cwd=tmp_path)
    stop(proc)
    db = tmp_path / "ro.db"
    # Root writes through file modes; an immutable file it cannot write.
    if subprocess.run(["chattr", "+i", str(db)], capture_output=True, check=False).returncode:
        pytest.skip("this file system cannot mark a file immutable (chattr +i)")
    try:
        result = sessiond("serve", "--store", url, "--port", str(free_port()), cwd=tmp_path)
    finally:
        subprocess.run(["chattr", "-i", str(db)], check=True)
    assert result.returncode != 0
    assert "readonly" in result.stderr or "read-only" in result.stderr, result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_client_junk_is_one_line_at_info_without_a_traceback(tmp_path: Path) -> None:
    proc, port = start_server("--store", f"sqlite:///{tmp_path / 'j.db'}", cwd=tmp_path)
    try:
        for junk in (
            b"GET / HTTP/1.1\r\nHost: x\r\nContent-Length: abc\r\n\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03" + bytes(40),
            b"NOT HTTP AT ALL\r\n\r\n",
        ):
            with socket.create_connection(("127.0.0.1", port), timeout=5) as s:
                s.sendall(junk)
                assert s.recv(100).startswith(b"HTTP/1.")
    finally:
        output = stop(proc)
    assert "Traceback" not in output
    assert " ERROR " not in output
    assert "refused a malformed request" in output


async def test_a_token_offered_as_a_websocket_subprotocol_never_reaches_the_log(
    tmp_path: Path,
) -> None:
    """Browser code often offers its token as a subprotocol (``bearer, <JWT>``);
    aiohttp would log every value offered when none is one the server speaks."""
    url = f"sqlite:///{tmp_path / 'p.db'}"
    proc, port = start_server("--store", url, cwd=tmp_path)
    try:
        token = sessiond("token", "--user", "alice", "--store", url, cwd=tmp_path).stdout.strip()
        async with (
            aiohttp.ClientSession() as http,
            http.ws_connect(
                f"http://127.0.0.1:{port}/v1/ws?session_id=sub-1", protocols=("bearer", token)
            ) as ws,
        ):
            assert ws.protocol is None  # none is spoken, as before
            assert (await ws.receive_json(timeout=10))["type"] == "welcome"
    finally:
        output = stop(proc)
    signature = token.rsplit(".", 1)[1]
    assert token not in output and signature not in output, output
    assert "offered 2 WebSocket subprotocol(s)" in output, output
    assert "Traceback" not in output


async def test_a_token_for_another_store_folder_uses_that_stores_key(tmp_path: Path) -> None:
    store = tmp_path / "data"
    store.mkdir()
    url = f"sqlite:///{store / 'x.db'}"
    proc, port = start_server("--store", url, cwd=tmp_path)
    try:
        token = sessiond("token", "--user", "bob", "--store", url, cwd=tmp_path).stdout.strip()
        async with (
            aiohttp.ClientSession() as http,
            http.get(
                f"http://127.0.0.1:{port}/v1/sessions",
                headers={"Authorization": f"Bearer {token}"},
            ) as r,
        ):
            assert r.status == 200
    finally:
        stop(proc)
    assert (store / "sessiond.key").exists()


def test_a_bad_store_url_is_a_one_line_error_not_a_traceback(tmp_path: Path) -> None:
    result = sessiond("serve", "--store", "mysql://nope", "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode != 0
    assert "bad store URL" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_store_that_cannot_be_opened_is_a_readable_error(tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'missing-folder' / 'x.db'}"
    result = sessiond("serve", "--store", url, "--port", str(free_port()), cwd=tmp_path)
    assert result.returncode != 0
    assert "cannot open store" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_a_port_in_use_is_a_readable_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = sessiond("serve", "--port", str(port), cwd=tmp_path)
    assert result.returncode != 0
    assert "already in use" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


@pytest.mark.parametrize("role", ["admin", "Auditor", ""])
def test_an_unknown_role_is_refused_by_sessiond_token(tmp_path: Path, role: str) -> None:
    """The server refuses a token naming a role it does not know (or naming
    one miscapitalised), so the command does not make one."""
    result = sessiond("token", "--user", "u", "--role", role, cwd=tmp_path)
    assert result.returncode == 2
    assert "invalid choice" in result.stderr


def test_sessiond_lifecycle_prints_the_diagram_of_the_machine_class(tmp_path: Path) -> None:
    result = sessiond("lifecycle", cwd=tmp_path)
    assert result.returncode == 0
    assert result.stdout.startswith("stateDiagram-v2")
    for state in ("CONNECTING", "ACCEPTED", "AUTHENTICATED", "SERVICES_READY", "PROCESSING_READY"):
        assert state in result.stdout


async def live_socket(
    http: aiohttp.ClientSession, port: int, session_id: str, connection_id: str, token: str
) -> aiohttp.ClientWebSocketResponse:
    """A socket to the server on ``port``, walked to PROCESSING_READY with
    the token in its upgrade."""
    ws = await http.ws_connect(
        f"http://127.0.0.1:{port}/v1/ws?session_id={session_id}&connection_id={connection_id}",
        headers={"Authorization": f"Bearer {token}"},
    )
    while (await ws.receive_json()).get("state") != "PROCESSING_READY":
        pass
    return ws


async def test_a_second_serve_on_the_same_sqlite_store_exits_naming_the_first_and_touches_nothing(
    tmp_path: Path,
) -> None:
    url = f"sqlite:///{tmp_path / 'one.db'}"
    first, port = start_server("--store", url, cwd=tmp_path)
    try:
        token = sessiond("token", "--user", "alice", "--store", url, cwd=tmp_path).stdout.strip()
        async with aiohttp.ClientSession() as http:
            ws = await live_socket(http, port, "s-one", "conn-first", token)
            second = sessiond("serve", "--store", url, "--port", str(free_port()), cwd=tmp_path)
            assert second.returncode != 0
            assert "another sessiond already serves this store" in second.stderr
            assert f"pid {first.pid}" in second.stderr, second.stderr
            assert "Traceback" not in second.stderr + second.stdout
            assert len(second.stderr.strip().splitlines()) == 1, second.stderr
            # Named through a symbolic link, it is the same store.
            (tmp_path / "link.db").symlink_to(tmp_path / "one.db")
            linked = f"sqlite:///{tmp_path / 'link.db'}"
            third = sessiond("serve", "--store", linked, "--port", str(free_port()), cwd=tmp_path)
            assert third.returncode != 0
            assert "another sessiond already serves this store" in third.stderr, third.stderr
            # The first node's socket is live and recorded live, not lost.
            await ws.send_json({"type": "message", "content": "still here"})
            frame = await ws.receive_json()
            assert frame["type"] == "event" and frame["event"]["data"]["content"] == "still here"
            async with http.get(
                f"http://127.0.0.1:{port}/v1/connections/conn-first",
                headers={"Authorization": f"Bearer {token}"},
            ) as r:
                assert (await r.json())["state"] == "PROCESSING_READY"
            await ws.close()
    finally:
        stop(first)
    # Once the first has stopped, the store is free again.
    again, _ = start_server("--store", url, cwd=tmp_path)
    stop(again)


def serve_once(url: str, env: dict[str, str], cwd: Path) -> tuple[int, str, str]:
    """Start ``serve`` and wait for it to exit (a failure if it serves on)."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "service", "serve", "--store", url, "--port", str(free_port())],
        cwd=cwd,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    try:
        out, err = proc.communicate(timeout=15)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise AssertionError(f"it served on: {out} {err}") from None
    return proc.returncode, out, err


async def test_a_serve_on_a_sqlite_store_that_a_lockless_older_release_still_serves_exits(
    tmp_path: Path,
) -> None:
    """Release 0.1.0 took no lock on its SQLite store, only wrote its
    heartbeat row. A newer serve started while it still serves (an upgrade
    done in the wrong order) must not take its live sockets for a dead run's
    and record them lost: it waits for one more heartbeat and, seeing it,
    exits in one line, recording nothing."""
    url = f"sqlite:///{tmp_path / 'old.db'}"
    db = tmp_path / "old.db"
    first, port = start_server("--store", url, cwd=tmp_path)
    token = sessiond("token", "--user", "alice", "--store", url, cwd=tmp_path).stdout.strip()
    async with aiohttp.ClientSession() as http:
        ws = await live_socket(http, port, "s-old", "conn-old", token)
        # The store as the older release leaves it while it serves: no lock
        # file beside it, a connection open, a heartbeat row kept fresh.
        first.kill()
        first.communicate()
        await ws.close()
    (tmp_path / "old.db.lock").unlink()
    beating = threading.Event()
    done = threading.Event()

    def heartbeat() -> None:
        with sqlite3.connect(db) as conn:
            while not done.is_set():
                conn.execute("UPDATE sessiond_nodes SET last_seen = ?", (time.time(),))
                conn.commit()
                beating.set()
                done.wait(0.2)

    beater = threading.Thread(target=heartbeat)
    beater.start()
    try:
        assert beating.wait(10)

        def recorded() -> int:
            with sqlite3.connect(db) as conn:
                return int(conn.execute("SELECT COUNT(*) FROM stored_events").fetchone()[0])

        before = recorded()
        env = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
        env["SESSIOND_NODE_TIMEOUT"] = "1"
        # Twice: a refused start leaves no lock file that would let the next
        # one skip the question.
        for _ in range(2):
            returncode, out, err = serve_once(url, env, tmp_path)
            assert returncode != 0
            # The log lines of the start, then the error in one line.
            last = err.strip().splitlines()[-1]
            assert last.startswith("sessiond: error: another sessiond serves this store"), err
            assert "heartbeats without holding its lock file" in last, last
            assert "Traceback" not in out + err
        assert recorded() == before, "the older release's live socket was recorded lost"
    finally:
        done.set()
        beater.join()
    # Once the older release is gone (its last heartbeat still recent, but no
    # longer advancing), the store serves, and what it left open is recorded
    # lost.
    again, _ = start_server("--store", url, cwd=tmp_path, env={"SESSIOND_NODE_TIMEOUT": "1"})
    output = stop(again)
    assert "waiting for a heartbeat" in output, output
    with sqlite3.connect(db) as conn:
        (state,) = conn.execute(
            "SELECT state FROM sessiond_connections WHERE connection_id = 'conn-old'"
        ).fetchone()
    assert state == "CLOSED"


def test_sessiond_version_is_the_installed_packages(tmp_path: Path) -> None:
    from importlib.metadata import version

    result = sessiond("--version", cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == f"sessiond {version('sessiond')}"


def test_bare_sessiond_lists_every_command_with_a_line_each_and_exits_2(tmp_path: Path) -> None:
    result = sessiond(cwd=tmp_path)
    assert result.returncode == 2
    text = " ".join(result.stdout.split())
    for line in (
        "serve run the service",
        "token print a signed token",
        "replay a session's audit history",
        "projections rebuild or inspect the read models",
        "tail follow a session live",
        "lifecycle print the connection lifecycle",
    ):
        assert line in text, result.stdout
    assert "Traceback" not in result.stderr


def test_offline_commands_read_only_the_store_and_the_secret_of_the_environment(
    tmp_path: Path,
) -> None:
    """A setting only the server reads, badly set, stops the server with one
    line, and nothing else: a token, a replay, the projections' status."""
    url = f"sqlite:///{tmp_path / 'offline.db'}"
    open_store(parse_store_url(url)).close()
    bad = {"SESSIOND_PORT": "eighty", "SESSIOND_HEARTBEAT": "often", "SESSIOND_STORE": url}
    served = sessiond("serve", cwd=tmp_path, env=bad)
    assert served.returncode == 2 and "SESSIOND_PORT" in served.stderr, served.stderr
    token = sessiond(
        "token", "--user", "alice", cwd=tmp_path, env={**bad, "SESSIOND_SECRET": "s" * 40}
    )
    assert token.returncode == 0 and token.stdout.count(".") == 2, token.stderr
    replayed = sessiond("replay", "nobody", cwd=tmp_path, env=bad)
    assert replayed.returncode == 1, replayed.stderr
    assert replayed.stderr.strip() == f"sessiond: error: no session 'nobody' in {url}"
    status = sessiond("projections", "status", cwd=tmp_path, env=bad)
    assert status.returncode == 0, status.stderr
    assert status.stdout.splitlines()[0].split()[0] == "projection"


# Runs the command line in a fresh interpreter, then says on standard error
# which of the libraries named in its arguments the command imported.
_IMPORTS_PROBE = """
import sys
from service.cli.main import main
code = main(sys.argv[2:])
loaded = [name for name in sys.argv[1].split(",") if name in sys.modules]
print("LOADED", code, ",".join(loaded), file=sys.stderr)
"""


@pytest.mark.parametrize(
    "command",
    [
        ["replay", "audited", "--json"],
        ["replay", "audited"],
        ["projections", "status"],
        ["token", "--user", "alice"],
    ],
    ids=lambda command: " ".join(command),
)
def test_offline_commands_on_sqlite_start_without_the_servers_libraries(
    tmp_path: Path, command: list[str]
) -> None:
    """What only ``sessiond serve`` or a PostgreSQL store needs (aiohttp,
    psycopg) and what only the writer's lifecycle checks need (the state
    machine library) is not imported by an offline command on a SQLite
    store: those imports were a third of the start-up that every ``sessiond
    replay`` waits for."""
    url = f"sqlite:///{tmp_path / 'offline.db'}"
    store = open_store(parse_store_url(url))
    store.save(Session.create("audited", "alice"))
    store.close()
    base = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    env = {**base, "SESSIOND_STORE": url, "SESSIOND_SECRET": "s" * 40}
    probe = subprocess.run(
        [sys.executable, "-c", _IMPORTS_PROBE, "aiohttp,psycopg,statemachine", *command],
        cwd=tmp_path, env=env, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    said = [line for line in probe.stderr.splitlines() if line.startswith("LOADED ")]
    assert said == ["LOADED 0 "], probe.stderr
    assert probe.stdout, "the command printed nothing"


@pytest.mark.parametrize("command", [["replay", "s1"], ["projections", "status"]])
@pytest.mark.parametrize("content", ["empty", "another-database"])
def test_a_reading_command_refuses_a_file_that_is_no_store_and_leaves_it_as_it_was(
    tmp_path: Path, command: list[str], content: str
) -> None:
    """Pointed at a file that holds no sessiond store (an empty file, another
    program's database), ``replay`` and ``projections`` say so in one line and
    write nothing to it: opening a store creates its tables."""
    import sqlite3

    path = tmp_path / "foreign.db"
    if content == "empty":
        path.write_bytes(b"")
    else:
        with sqlite3.connect(path) as db:
            db.execute("CREATE TABLE x (a)")
        db.close()
    before = path.read_bytes()
    result = sessiond(*command, "--store", f"sqlite:///{path}", cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "is not a sessiond store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["foreign.db"]


def _a_store_with_a_session(tmp_path: Path, events: int) -> str:
    url = f"sqlite:///{tmp_path / 'store.db'}"
    store = open_store(parse_store_url(url))
    try:
        session = Session.create("s-long", "alice", None)
        for n in range(events):
            session.record_message(
                message_id=f"m{n}", role="user", content="x" * 200, user_id="alice"
            )
        store.save(session)
    finally:
        store.close()
    return url


def test_replay_into_a_pipe_closed_early_ends_without_a_traceback(tmp_path: Path) -> None:
    url = _a_store_with_a_session(tmp_path, 2000)
    base = {k: v for k, v in os.environ.items() if not k.startswith("SESSIOND_")}
    replay = subprocess.Popen(
        [sys.executable, "-m", "service", "replay", "s-long", "--store", url],
        cwd=tmp_path,
        env=base,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    assert replay.stdout is not None and replay.stderr is not None
    assert replay.stdout.readline()  # what ``| head -1`` reads, then it leaves
    replay.stdout.close()
    with replay.stderr:
        errors = replay.stderr.read().decode()
    replay.wait(timeout=60)
    assert "Traceback" not in errors and "BrokenPipeError" not in errors, errors
    assert replay.returncode == 1


def test_projections_on_a_store_locked_by_another_process_is_one_line(tmp_path: Path) -> None:
    import sqlite3

    url = _a_store_with_a_session(tmp_path, 1)
    holder = sqlite3.connect(tmp_path / "store.db", isolation_level=None)
    try:
        holder.execute("BEGIN IMMEDIATE")  # the write lock, held past the busy timeout
        result = sessiond("projections", "status", "--store", url, cwd=tmp_path)
    finally:
        holder.execute("ROLLBACK")
        holder.close()
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr + result.stdout
    assert "locked" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr


def test_replay_prints_a_user_id_with_its_control_characters_escaped(tmp_path: Path) -> None:
    """A user ID is a token's ``sub``, any text a token issuer put there: the
    timeline shows its escape sequences as text, so replaying a session cannot
    clear the reader's screen or retitle the window."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    owner = "\x1b[2J\x1b]0;pwned\x07eve"
    store = open_store(parse_store_url(url))
    try:
        store.save(Session.create("s-evil", owner, None))
    finally:
        store.close()
    result = sessiond("replay", "s-evil", "--store", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "\x1b" not in result.stdout and "\x07" not in result.stdout
    assert "owner=\\x1b[2J\\x1b]0;pwned\\x07eve" in result.stdout


@pytest.mark.parametrize(
    "command", [["replay", "s1"], ["projections", "status"], ["projections", "rebuild"]]
)
def test_a_reading_command_refuses_a_postgresql_database_that_is_no_store_and_adds_no_table(
    tmp_path: Path, postgres_url: str, command: list[str]
) -> None:
    """Pointed at a PostgreSQL database that holds no sessiond store (another
    program's, or the wrong name), ``replay`` and ``projections`` say so in
    one line and create none of sessiond's tables in it, as on SQLite."""
    import psycopg

    tables = "SELECT table_name FROM information_schema.tables WHERE table_schema = 'public'"
    with psycopg.connect(postgres_url, autocommit=True) as db:
        db.execute("CREATE TABLE orders (id int)")
        before = sorted(row[0] for row in db.execute(tables).fetchall())
    result = sessiond(*command, "--store", postgres_url, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "is not a sessiond store" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
    with psycopg.connect(postgres_url, autocommit=True) as db:
        assert sorted(row[0] for row in db.execute(tables).fetchall()) == before == ["orders"]


def test_rebuilding_an_empty_store_shows_its_progress_bar_complete(tmp_path: Path) -> None:
    """A store with no events is rebuilt in full at once: its bar says so,
    not 0.0% of one event."""
    url = f"sqlite:///{tmp_path / 'store.db'}"
    open_store(parse_store_url(url)).close()
    result = sessiond("projections", "rebuild", "--store", url, cwd=tmp_path)
    assert result.returncode == 0, result.stderr
    assert "0 events" in result.stdout
    assert "100.0% 0/0 " in result.stderr, result.stderr


@pytest.mark.parametrize("command", [["serve"], ["replay", "s1"], ["projections", "status"]])
def test_a_postgresql_server_that_refuses_connections_is_a_one_line_error(
    tmp_path: Path, command: list[str]
) -> None:
    """libpq words a refused connection on two lines (the second a tab and
    'Is the server running...'): the command still says it in one."""
    if command == ["serve"]:
        command += ["--port", str(free_port()), "--drain-seconds", "0"]
    url = f"postgresql://postgres@127.0.0.1:{free_port()}/sessiond"
    result = sessiond(*command, "--store", url, cwd=tmp_path)
    assert result.returncode == 1, result.stderr
    assert "Traceback" not in result.stderr and "Connection refused" in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1, result.stderr
