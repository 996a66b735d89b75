"""The one app factory: the CLI, the tests and the benchmarks all call it."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from concurrent.futures import Executor, ThreadPoolExecutor
from typing import Any

from aiohttp import web

from domain.base import Aggregate
from domain.connection import Connection
from domain.errors import DomainError
from domain.ids import SESSION_PREFIX
from domain.lifecycle import final_states, state_values
from projections.projector import PROJECTIONS
from service.application import commands
from service.application.auth import TokenSigner, load_or_create_key
from service.application.budgets import Budgets
from service.application.health import RETRY_AFTER, StoreHealth
from service.application.hub import Hub
from service.application.readmodels import ReadModels
from service.application.reconcile import UnrecordedCloses
from service.application.writer import Writer
from service.cluster.follower import LogFollower
from service.cluster.nodes import NodeRegistry
from service.edge import ws
from service.edge.access import CLIENT_GONE, access_middleware
from service.edge.budgets import send_answer
from service.edge.context import (
    BUDGETS,
    CLOSES,
    FOLDS,
    HEALTH,
    HUB,
    METRICS,
    READERS,
    READMODELS,
    SETTINGS,
    SIGNER,
    SOCKETS,
    STORE,
    STORE_CONFIG,
    TRACER,
    WATCHERS,
    WRITER,
)
from service.edge.cors import decorate, preflight
from service.edge.effects import Close
from service.edge.errors import ApiError, error_response
from service.edge.folds import Folds
from service.edge.http import empty_ids_matched, route_defs
from service.edge.http.stream import WatcherRegistry
from service.edge.metrics import Metrics, stamped
from service.runtime import tracing
from service.runtime.logs import hide_offered_subprotocols
from service.runtime.settings import Settings
from service.storage.lock import PostgresNodeLock, SqliteServeLock
from service.storage.store import StoreConfig, StoreError, open_store, parse_store_url
from service.storage.wire import wire_event

log = logging.getLogger("sessiond")

# How long the probe waits for the closes owed to the store to be recorded
# before it lets reads through again.
SETTLE_PATIENCE = 10.0

# The states a live socket can be in, as the lifecycle names them.
LIVE_STATES = [
    s for s in state_values(Connection.lifecycle) if s not in final_states(Connection.lifecycle)
]


@web.middleware
async def edge_middleware(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    """CORS (service/edge/cors.py) and the error shape of PROTOCOL.md, in one layer:
    every error answer, too, carries the CORS headers an allowed page needs
    to read it."""
    answer = preflight(request)
    if answer is None:
        answer = await _answer(request, handler)
        if answer.status == 503 and "Retry-After" not in answer.headers:
            answer.headers["Retry-After"] = str(RETRY_AFTER)
    answer = decorate(request, answer)
    try:
        return await send_answer(request, answer)
    except ApiError as e:
        request.app[METRICS].http_error(e.code)
        refusal = error_response(e.code, e.message, e.status, retry_after=e.retry_after)
        return decorate(request, refusal)


async def _answer(
    request: web.Request, handler: Callable[[web.Request], Awaitable[web.StreamResponse]]
) -> web.StreamResponse:
    metrics = request.app[METRICS]
    try:
        return await handler(request)
    except ApiError as e:
        metrics.http_error(e.code)
        return error_response(e.code, e.message, e.status, retry_after=e.retry_after)
    except DomainError as e:
        metrics.http_error(e.code)
        return error_response(e.code, e.message, retry_after=getattr(e, "retry_after", None))
    except web.HTTPRequestEntityTooLarge as e:
        metrics.http_error("too_large")
        return error_response("too_large", f"the body is larger than {e.text or 'allowed'}", 413)
    except web.HTTPException as e:
        if e.status < 400:
            raise
        code = {404: "not_found", 405: "method_not_allowed"}.get(e.status, "bad_request")
        metrics.http_error(code)
        answer = error_response(code, e.reason, e.status)
        if "Allow" in e.headers:  # a 405 says which methods the path takes (RFC 9110)
            answer.headers["Allow"] = e.headers["Allow"]
        return answer
    except asyncio.CancelledError:
        raise
    except ConnectionResetError:
        # The client went away before its answer (an upgrade it abandoned
        # mid-way): nobody to answer, and nothing wrong with the node. aiohttp
        # drops the answer quietly; the access line says 499.
        log.info("client left before its answer", extra={"path": request.path})
        return web.Response(status=CLIENT_GONE)
    except Exception:
        log.exception("unhandled error", extra={"path": request.path})
        metrics.http_error("internal")
        return error_response("internal", "internal error; nothing was recorded twice", 500)


def _publisher(app: web.Application) -> Callable[[list[dict[str, Any]], float | None], None]:
    """Wire events to the hub, grouped by session (connection events stay out);
    the last of each session's carries ``committed_at``, when known, for the
    delivery-lag histogram."""
    hub = app[HUB]

    def publish(events: list[dict[str, Any]], committed_at: float | None) -> None:
        by_session: dict[str, list[dict[str, Any]]] = {}
        for event in events:
            session_id = event.get("session_id")
            if session_id is not None:
                by_session.setdefault(session_id, []).append(event)
        for session_id, wire in by_session.items():
            if committed_at is not None:
                wire[-1] = stamped(wire[-1], committed_at)
            hub.publish(session_id, wire)

    return publish


def _node_lock(
    settings: Settings, config: StoreConfig
) -> SqliteServeLock | PostgresNodeLock | None:
    """The lock that makes this node the only one serving under its name."""
    holder = (
        f"pid {os.getpid()} on {socket.gethostname()}, node {settings.node_id}, "
        f"http://{settings.host}:{settings.port}"
    )
    if config.kind == "sqlite":
        assert config.path is not None
        return SqliteServeLock(config.path, holder)
    if config.conninfo is not None:
        return PostgresNodeLock(config.conninfo, settings.node_id)
    return None


async def _store_ctx(app: web.Application) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    config = app[STORE_CONFIG]
    loop = asyncio.get_running_loop()
    lock = _node_lock(settings, config)
    if lock is not None:
        await loop.run_in_executor(None, lock.acquire)
    try:
        async with contextlib.AsyncExitStack() as stack:
            try:
                unlocked_before = isinstance(lock, SqliteServeLock) and lock.created
                await stack.enter_async_context(_serving(app, unlocked_before))
            except StoreError:
                if isinstance(lock, SqliteServeLock):
                    lock.unmake()
                raise
            except Exception as e:
                # A store that opens but cannot be written (a read-only file,
                # a full disk, a role without rights): one line, not a traceback.
                raise StoreError(
                    f"cannot serve on store {config.url!r}: {type(e).__name__}: {e}"
                ) from e
            yield
    finally:
        if lock is not None:
            lock.release()


async def _refuse_a_lockless_node_still_serving(app: web.Application, nodes: NodeRegistry) -> None:
    """Exit, in one line, if a release that took no lock on its SQLite store
    (0.1.0) still serves it.

    Only asked when this start made the store's lock file, and only when a
    heartbeat row is younger than a node timeout: a dead run's row stays as
    it was, a live node's advances within a third of the timeout. Seen
    advancing, the store is another node's: serving beside it would take its
    live sockets for a dead run's and record them lost."""
    settings = app[SETTINGS]
    loop = asyncio.get_running_loop()
    seen = await loop.run_in_executor(app[READERS], nodes.heartbeats)
    fresh = {n: t for n, t in seen.items() if t > time.time() - settings.node_timeout}
    if not fresh:
        return
    log.info(
        "waiting for a heartbeat: the store had no lock file and a node's is recent",
        extra={"node": ", ".join(sorted(fresh))},
    )
    deadline = time.monotonic() + settings.node_timeout / 3 + 0.5
    while time.monotonic() < deadline:
        await asyncio.sleep(0.1)
        now = await loop.run_in_executor(app[READERS], nodes.heartbeats)
        beating = sorted(n for n, t in fresh.items() if now.get(n, t) > t)
        if beating:
            raise StoreError(
                f"another sessiond serves this store: node {beating[0]!r} heartbeats without "
                "holding its lock file (a sessiond from before the store lock, such as the "
                "0.1.0 release of 2026-11-25); stop it first"
            )


@contextlib.asynccontextmanager
async def _serving(app: web.Application, unlocked_before: bool = False) -> AsyncIterator[None]:
    settings = app[SETTINGS]
    config = app[STORE_CONFIG]
    loop = asyncio.get_running_loop()
    store = await loop.run_in_executor(None, open_store, config)
    app[STORE] = store
    readers = ThreadPoolExecutor(max_workers=4, thread_name_prefix="sessiond-read")
    app[READERS] = readers
    folds = app[FOLDS] = Folds()
    readmodels = ReadModels(store, config, batch_bytes=settings.page_bytes)
    await loop.run_in_executor(None, readmodels.start, loop)
    app[READMODELS] = readmodels
    publish = _publisher(app)

    hub = app[HUB]
    metrics = app[METRICS]

    def on_commit(events: list[Aggregate.Event]) -> None:
        committed_at = metrics.committed_at(events)
        # Only session events reach sockets, and only sessions with a socket
        # on this node need them in wire shape (the rest was half the cost).
        wire = [
            wire_event(e)
            for e in events
            if e.originator_id.startswith(SESSION_PREFIX)
            and hub.has_subscribers(e.originator_id[len(SESSION_PREFIX) :])
        ]
        if wire:
            publish(wire, committed_at)
        readmodels.notify()

    def on_followed(events: list[dict[str, Any]]) -> None:
        publish(events, None)
        readmodels.notify()

    nodes = NodeRegistry(readmodels.tables, settings.node_id)
    await loop.run_in_executor(app[READERS], nodes.setup)
    # The node's heartbeat has a thread of its own: on the read pool, reads
    # that hold every thread for a node timeout (long pages, many at once)
    # would let the other nodes take this one for dead and record its live
    # sockets as lost.
    beats = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sessiond-beat")

    def settle() -> None:
        # Before reads are let through again: the closes owed to the store.
        asyncio.run_coroutine_threadsafe(closes.flush(), loop).result(SETTLE_PATIENCE)

    health = StoreHealth(ping=store.ping, write_probe=nodes.heartbeat, settle=settle)
    app[HEALTH] = health
    writer = Writer(
        store,
        on_commit=on_commit,
        max_batch=settings.writer_max_batch,
        on_saved=metrics.saved,
        health=health,
        tracer=app[TRACER],
        shared=config.conninfo is not None,
    )
    writer.start(loop)
    app[WRITER] = writer
    closes = app[CLOSES] = UnrecordedCloses(writer, health)
    health.on_recovery(readmodels.notify)
    health.on_recovery(lambda: loop.call_soon_threadsafe(closes.wake))
    follower: LogFollower | None = None
    if config.conninfo is not None:
        # Other nodes' writes reach this node's sockets and projector.
        follower = LogFollower(
            store,
            config.conninfo,
            on_followed,
            poll_interval=settings.poll_interval,
            page_bytes=settings.page_bytes,
        )
        follower.start(loop)
    log.info("store open", extra={"store": config.kind, "node": settings.node_id})
    tasks: list[asyncio.Task[None]] = []
    try:
        if unlocked_before:
            # Before this node's own heartbeat could be taken for another's.
            await _refuse_a_lockless_node_still_serving(app, nodes)
        health.start()
        tasks.append(asyncio.create_task(closes.run()))
        # On a store only one serve may open (SQLite, memory), every
        # connection still open belongs to a dead run, whatever that run's
        # node name was (the host's by default, which a new container
        # changes); on a shared one, only those under this node's name.
        own = settings.node_id if config.conninfo is not None else None
        await _record_lost_connections(app, own)
        tasks.append(asyncio.create_task(_heartbeat(app, nodes, beats)))
        tasks.append(asyncio.create_task(_watch_nodes(app, nodes)))
        yield
    finally:
        for task in tasks:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await loop.run_in_executor(None, health.stop)
        await closes.last_try()
        if follower is not None:
            await loop.run_in_executor(None, follower.stop)
        await writer.stop()
        await loop.run_in_executor(None, readmodels.stop)
        readers.shutdown(wait=True)
        beats.shutdown(wait=True)
        await loop.run_in_executor(None, folds.shutdown)
        store.close()
        log.info("store closed", extra={"store": config.kind})


async def _heartbeat(app: web.Application, nodes: NodeRegistry, beats: Executor) -> None:
    """Heartbeat this node every third of ``node_timeout`` while the store is up.

    A task and a thread (``beats``) of its own: recording a dead peer's
    connections lost takes seconds for thousands of them, and reads may hold
    every thread of the read pool; a node that stopped heartbeating
    meanwhile would be taken for dead by the others, which would record its
    own live sockets lost."""
    settings = app[SETTINGS]
    health = app[HEALTH]
    loop = asyncio.get_running_loop()
    while True:
        try:
            if health.up:
                await loop.run_in_executor(beats, nodes.heartbeat)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("heartbeat failed", extra={"error": str(e)[:200]})
        await asyncio.sleep(settings.node_timeout / 3)


async def _watch_nodes(app: web.Application, nodes: NodeRegistry) -> None:
    """Record the connections of dead peers as lost.

    Not while the store is down (every node's heartbeat stops then), and not
    until a whole ``node_timeout`` after it came back: live peers have had
    their turn to heartbeat again by then, and none is taken for dead."""
    settings = app[SETTINGS]
    health = app[HEALTH]
    loop = asyncio.get_running_loop()
    while True:
        try:
            if health.up and time.monotonic() - health.up_since >= settings.node_timeout:
                timeout = settings.node_timeout
                for node in await loop.run_in_executor(app[READERS], nodes.dead_nodes, timeout):
                    log.warning("node presumed dead", extra={"node": node})
                    await _record_lost_connections(app, node)
                    await loop.run_in_executor(app[READERS], nodes.forget, node)
        except asyncio.CancelledError:
            raise
        except Exception as e:
            log.warning("node watch failed", extra={"error": str(e)[:200]})
        await asyncio.sleep(settings.node_timeout / 3)


async def _record_lost_connections(app: web.Application, node: str | None) -> None:
    """Connections ``node`` (None: any node) left open when it died are CLOSED ``lost``.

    At start this node holds no sockets, so every connection the read model
    still shows open on this node (on any node, on a store that only one
    serve opens) belonged to a previous run that did not shut down cleanly
    (kill -9, power loss); for a dead peer, every one of its open
    connections. Each is recorded CLOSED with code 1006 and reason ``lost``,
    and detached from its session.
    """
    loop = asyncio.get_running_loop()
    readmodels = app[READMODELS]
    head = await loop.run_in_executor(app[READERS], app[STORE].ping)
    await readmodels.wait_for(head, 10.0)
    leftovers = await loop.run_in_executor(app[READERS], readmodels.tables.open_connections, node)
    rows = [r for r in leftovers if r["connection_id"] not in app[SOCKETS].sockets]

    async def close(row: dict[str, Any]) -> None:
        await app[WRITER].execute(
            commands.close_connection(row["connection_id"], code=1006, reason="lost")
        )
        log.warning(
            "connection left open by a dead run recorded CLOSED lost",
            extra={"connection_id": row["connection_id"], "session_id": row["session_id"]},
        )

    # A writer's batch at a time, rather than a commit each: a node that held
    # thousands of sockets is then recorded in seconds' fraction, within the
    # bound docs/operations.md gives. A failure is raised once the rest are
    # done, so the dead node is not forgotten and the next round tries again.
    batch = app[SETTINGS].writer_max_batch
    for start in range(0, len(rows), batch):
        outcomes = await asyncio.gather(
            *(close(row) for row in rows[start : start + batch]), return_exceptions=True
        )
        failed = [o for o in outcomes if isinstance(o, BaseException)]
        if failed:
            raise failed[0]


async def drain(app: web.Application, seconds: float, *, until: asyncio.Event) -> None:
    """Take no new traffic for ``seconds`` (or until ``until`` is set) while
    serving what the node has: ``/readyz`` answers 503, so load balancers
    and Kubernetes take the node out of rotation, and new upgrades are
    refused with 503 (service/edge/http/socket.py), so clients reconnect
    elsewhere. Open sockets, HTTP calls and event streams carry on."""
    app[HEALTH].draining = True
    log.info(
        "draining",
        extra={
            "node": app[SETTINGS].node_id,
            "seconds": seconds,
            "sockets": len(app[SOCKETS].sockets),
        },
    )
    with contextlib.suppress(TimeoutError):
        async with asyncio.timeout(seconds):
            await until.wait()


async def _on_shutdown(app: web.Application) -> None:
    settings = app[SETTINGS]
    await app[WATCHERS].close_all(settings.shutdown_timeout)
    await app[SOCKETS].close_all(Close.GOING_AWAY, "server_shutdown", settings.shutdown_timeout)


def _metrics(app: web.Application) -> Metrics:
    return Metrics(
        states=LIVE_STATES,
        connections=lambda: app[SOCKETS].count_by_state(),
        writer=lambda: app.get(WRITER),
        watchers=lambda: len(app[WATCHERS]),
        projections=[p.name for p in PROJECTIONS],
    )


async def _stop_tracing(app: web.Application) -> None:
    """Send the spans still buffered (after the writer's last commit)."""
    await asyncio.get_running_loop().run_in_executor(None, app[TRACER].shutdown)


def create_app(
    settings: Settings | None = None, *, tracer: tracing.Tracer | None = None
) -> web.Application:
    """Build the whole service. Nothing connects until the app starts.

    ``tracer``: where spans go; by default OTLP when the environment names
    an endpoint and the ``otel`` extra is installed, else nowhere
    (service/runtime/tracing.py)."""
    settings = settings or Settings.from_env()
    # Here, not in the command's logging set-up: whatever runs this app, a
    # token a browser offers as a subprotocol never reaches its log.
    hide_offered_subprotocols()
    config: StoreConfig = parse_store_url(settings.store_url)
    secret = settings.secret or load_or_create_key(config.key_dir)
    app = web.Application(
        client_max_size=settings.max_body_bytes,
        # The access line sees the answer the edge made of any error.
        middlewares=[access_middleware, edge_middleware],
    )
    app[SETTINGS] = settings
    app[TRACER] = tracing.from_env() if tracer is None else tracer
    app[STORE_CONFIG] = config
    app[SIGNER] = TokenSigner(secret)
    app[HUB] = Hub()
    app[BUDGETS] = Budgets(settings)
    app[SOCKETS] = ws.SocketRegistry()
    app[WATCHERS] = WatcherRegistry()
    app[METRICS] = _metrics(app)
    app.cleanup_ctx.append(_store_ctx)
    app.on_cleanup.append(_stop_tracing)
    app.on_shutdown.append(_on_shutdown)
    app.router.add_routes(empty_ids_matched(route_defs()))
    return app
