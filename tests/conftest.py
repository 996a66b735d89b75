"""Shared fixtures: real stores (memory, SQLite files, a real PostgreSQL
database made for the test and dropped after), real servers on real sockets.

PostgreSQL tests read the server's DSN from SESSIOND_TEST_POSTGRES_DSN (set by
.ci/run); without it, or when that server does not answer, they skip and say
why.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import AsyncIterator, Callable, Iterator
from pathlib import Path
from typing import Any, NoReturn
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import pytest
from aiohttp.test_utils import TestServer

from faults.pgcluster import ClusterUnavailable, ThrowawayPostgres
from service.application.auth import TokenSigner
from service.edge.app import create_app
from service.runtime.settings import Settings
from service.runtime.tracing import Tracer

TEST_SECRET = "test-secret-not-for-production-0123456789"
PG_ENV = "SESSIOND_TEST_POSTGRES_DSN"


def unavailable(reason: str, ci_hint: str) -> NoReturn:
    """Stop a test whose part of the machine is missing (a browser,
    PostgreSQL, a tool): skipped, saying why, except under CI (.ci/run sets
    ``CI``), which installs or starts every part, so there it fails."""
    if os.environ.get("CI", "").lower() not in ("", "0", "false"):
        pytest.fail(f"{reason}. CI is set, so this test must run: {ci_hint}")
    pytest.skip(reason)


# --- PostgreSQL -----------------------------------------------------------------


@pytest.fixture(scope="session")
def pg_dsn() -> str:
    dsn = os.environ.get(PG_ENV)
    if not dsn:
        unavailable(
            f"PostgreSQL tests need {PG_ENV} (e.g. postgresql://postgres@127.0.0.1:5432/postgres)",
            f".ci/run sets {PG_ENV}",
        )
    import psycopg

    try:
        with psycopg.connect(dsn, connect_timeout=3):
            pass
    except Exception as e:
        unavailable(f"PostgreSQL at {PG_ENV}={dsn} does not answer: {e}", ".ci/run starts it")
    return dsn


@pytest.fixture
def postgres_url(pg_dsn: str) -> Iterator[str]:
    """A fresh database on the shared server, dropped after the test."""
    import psycopg

    name = "sessiond_test_" + uuid.uuid4().hex[:12]
    with psycopg.connect(pg_dsn, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    parts = urlsplit(pg_dsn)
    url = urlunsplit((parts.scheme, parts.netloc, "/" + name, parts.query, ""))
    try:
        yield url
    finally:
        with psycopg.connect(pg_dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


# --- stores -----------------------------------------------------------------------


@pytest.fixture(params=["memory", "sqlite", "postgres"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """Each store backend in turn: the same test runs against all three."""
    if request.param == "memory":
        return "memory://"
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'sessiond.db'}"
    return str(request.getfixturevalue("postgres_url"))


@pytest.fixture
def sqlite_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'sessiond.db'}"


def make_settings(store_url: str, **overrides: Any) -> Settings:
    base = Settings(store_url=store_url, secret=TEST_SECRET, node_id="test-node")
    return base.with_overrides(**overrides)


@pytest.fixture
def signer() -> TokenSigner:
    return TokenSigner(TEST_SECRET)


@pytest.fixture
def token(signer: TokenSigner) -> Callable[..., str]:
    def mint(user: str = "alice", *roles: str, ttl: int = 3600) -> str:
        return signer.mint(user, list(roles) or ["user"], ttl=ttl)

    return mint


# --- servers ------------------------------------------------------------------------


class Api:
    """A thin client for tests: base URL, tokens, JSON in and out."""

    def __init__(self, base_url: str, http: aiohttp.ClientSession, signer: TokenSigner) -> None:
        self.base_url = base_url.rstrip("/")
        self.http = http
        self.signer = signer

    def url(self, path: str) -> str:
        return self.base_url + path

    def auth(self, user: str = "alice", *roles: str) -> dict[str, str]:
        return {"Authorization": "Bearer " + self.signer.mint(user, list(roles) or ["user"])}

    async def call(
        self,
        method: str,
        path: str,
        *,
        user: str | None = "alice",
        roles: tuple[str, ...] = (),
        **kwargs: Any,
    ) -> tuple[int, Any]:
        headers = dict(kwargs.pop("headers", {}))
        if user is not None:
            headers.update(self.auth(user, *roles))
        async with self.http.request(method, self.url(path), headers=headers, **kwargs) as r:
            text = await r.text()
            try:
                body = await r.json(content_type=None)
            except ValueError:
                body = text
            return r.status, body

    def ws_url(self, session_id: str, **params: Any) -> str:
        query = "&".join([f"session_id={session_id}"] + [f"{k}={v}" for k, v in params.items()])
        return self.url("/v1/ws?" + query)


@pytest.fixture
async def serve(
    signer: TokenSigner,
) -> AsyncIterator[Callable[..., Any]]:
    """Start real servers on real sockets: ``api = await serve(store_url, **settings)``
    (``tracer=``: where the app's spans go)."""
    servers: list[TestServer] = []
    sessions: list[aiohttp.ClientSession] = []

    async def start(store_url: str, *, tracer: Tracer | None = None, **overrides: Any) -> Api:
        app = create_app(make_settings(store_url, **overrides), tracer=tracer)
        server = TestServer(app, host="127.0.0.1")
        await server.start_server()
        servers.append(server)
        http = aiohttp.ClientSession()
        sessions.append(http)
        api = Api(str(server.make_url("/")), http, signer)
        api.server = server  # type: ignore[attr-defined]
        return api

    yield start
    for http in sessions:
        await http.close()
    for server in servers:
        await server.close()


# --- server processes -----------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def wait_for_port(port: int, proc: subprocess.Popen[bytes], log_path: Path) -> None:
    """Until ``proc`` listens on ``port``; its log in the error if it exits or never does."""
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"server exited: {log_path.read_text()}")
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=0.2):
                return
        except OSError:
            time.sleep(0.05)
    raise RuntimeError(f"server did not start: {log_path.read_text()}")


class ServerProcess:
    """``sessiond serve`` as a separate process, for kill and restart tests."""

    def __init__(self, store_url: str, *, port: int | None = None, **env: str) -> None:
        self.store_url = store_url
        self.port = port or free_port()
        # No drain on SIGTERM unless a test asks for one: the tests that stop
        # servers are about what happens after it.
        self.env = {
            **os.environ,
            "SESSIOND_SECRET": TEST_SECRET,
            "SESSIOND_DRAIN_SECONDS": "0",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path: Path | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def _spawn(self, log: Any) -> subprocess.Popen[bytes]:
        return subprocess.Popen(
            [
                sys.executable,
                "-m",
                "service",
                "serve",
                "--port",
                str(self.port),
                "--store",
                self.store_url,
            ],
            env=self.env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )

    def start(self, log_path: Path) -> None:
        self.log_path = log_path
        with open(log_path, "ab") as log:  # the child keeps its own copy of the fd
            self.proc = self._spawn(log)
        wait_for_port(self.port, self.proc, log_path)

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.kill()
        self.proc.wait(10)

    def terminate(self) -> int:
        assert self.proc is not None
        self.proc.terminate()
        return self.proc.wait(30)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)


@pytest.fixture
def server_process(tmp_path: Path) -> Iterator[Callable[..., ServerProcess]]:
    procs: list[ServerProcess] = []

    def start(store_url: str, **env: str) -> ServerProcess:
        p = ServerProcess(store_url, **env)
        p.start(tmp_path / f"server-{len(procs)}.log")
        procs.append(p)
        return p

    yield start
    for p in procs:
        p.stop()


# --- a throwaway PostgreSQL cluster, for tests that stop and restart it -------------


@pytest.fixture
def throwaway_postgres() -> Iterator[ThrowawayPostgres]:
    """A private cluster (faults/pgcluster.py); tests that stop or restart
    PostgreSQL use this, never the shared server."""
    try:
        pg = ThrowawayPostgres()
        pg.init()
        pg.start()
    except ClusterUnavailable as e:
        unavailable(
            f"cannot start a throwaway PostgreSQL cluster: {e}", "the machine's initdb and pg_ctl"
        )
    try:
        yield pg
    finally:
        pg.remove()
