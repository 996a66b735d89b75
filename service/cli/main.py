"""``sessiond``: serve, mint tokens, replay history, follow a session, rebuild
projections, draw the lifecycle."""

from __future__ import annotations

import argparse
import contextlib
import errno
import gc
import logging
import os
import resource
import socket
import sys
import textwrap
import time
from collections.abc import Callable, Collection, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO

from domain.errors import InvalidId
from domain.ids import check_id
from service.application import replay
from service.application.auth import (
    ROLES,
    KeyFileError,
    TokenSigner,
    load_or_create_key,
    read_key,
)
from service.runtime import eventloop, logs
from service.runtime.settings import DEFAULT_STORE, MIB, Settings, SettingsError
from service.storage.store import (
    SessiondApplication,
    StoreConfig,
    StoreError,
    open_store,
    parse_store_url,
)
from service.storage.wire import dumps_str, wire_view

if TYPE_CHECKING:
    from projections.projector import Projector

log = logging.getLogger("sessiond")


class CliError(Exception):
    """A readable error for the command line; exit status 2 unless given."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def one_line(text: str) -> str:
    """An error's text on one line: a driver's message may run over several
    (libpq adds a hint line to a refused connection), and a command's error
    is one line."""
    return " ".join(part.strip() for part in text.splitlines() if part.strip())


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return Settings.from_env(
            store_url=getattr(args, "store", None),
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            drain_seconds=getattr(args, "drain_seconds", None),
            log_format=getattr(args, "log_format", None),
        )
    except SettingsError as e:
        raise CliError(str(e)) from None


# What the offline commands (token, replay, projections) read of the
# environment: a setting only the server uses, badly set, must not stop them.
OFFLINE_ENV = ("SESSIOND_STORE", "SESSIOND_SECRET")


def _offline_settings(args: argparse.Namespace) -> Settings:
    env = {key: value for key, value in os.environ.items() if key in OFFLINE_ENV}
    try:
        return Settings.from_env(env, store_url=getattr(args, "store", None))
    except SettingsError as e:
        raise CliError(str(e)) from None


def _check_port_free(host: str, port: int) -> None:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise CliError(f"cannot listen on {host}:{port}: {e.strerror}", 1) from None
    for family, kind, proto, _, addr in infos[:1]:
        with socket.socket(family, kind, proto) as s:
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            try:
                s.bind(addr)
            except OSError as e:
                if e.errno == errno.EADDRINUSE:
                    raise CliError(f"port {port} on {host} is already in use", 1) from None
                raise CliError(f"cannot listen on {host}:{port}: {e.strerror}", 1) from None


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    logs.configure(args.log_level, settings.log_format, access=settings.access_log)
    try:
        eventloop.chosen(settings.event_loop)  # a loop asked for and missing: say so first
    except eventloop.EventLoopUnavailable as e:
        raise CliError(str(e)) from None
    try:
        config = parse_store_url(settings.store_url)
        open_store(config).close()  # fail fast, with a readable message
        if settings.secret is None:
            load_or_create_key(config.key_dir)  # the key `sessiond token` reads
    except (StoreError, KeyFileError) as e:
        raise CliError(str(e), 1) from None
    _check_port_free(settings.host, settings.port)
    # The server's imports (aiohttp, psycopg) load only when serving, so the
    # offline commands (token, replay, projections) start fast.
    from service.cli.serve import run
    from service.edge.app import create_app

    app = create_app(settings)
    tune_garbage_collector()
    raise_open_file_limit()

    def announce() -> None:
        print(
            f"sessiond serving on http://{settings.host}:{settings.port} "
            f"(store {settings.store_url}, node {settings.node_id})",
            flush=True,
        )

    try:
        run(app, settings, announce)
    except OSError as e:
        raise CliError(f"cannot serve on {settings.host}:{settings.port}: {e}", 1) from None
    except StoreError as e:
        raise CliError(str(e), 1) from None
    return 0


def raise_open_file_limit() -> int:
    """Raise this process's soft limit on open files to its hard limit; the
    soft limit now. Every socket is a file: at a soft limit of 1,024 (many
    systems' default) a node holds about a thousand sockets, and one caller
    holding that many idle connections leaves every other client refused,
    while the hard limit the administrator set is often far higher."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft == resource.RLIM_INFINITY or soft >= hard:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    except (ValueError, OSError):
        return soft
    return hard


# Collect the youngest generation every 10,000 net allocations instead of 700,
# and the older ones 20 times less often than that each (ADR 0017).
GC_THRESHOLDS = (10_000, 20, 20)


def tune_garbage_collector() -> None:
    """A server's garbage collector: what is loaded at start-up is frozen out
    of every collection, and collections are rarer.

    Every finished WebSocket leaves a reference cycle inside aiohttp (its
    response, request and protocol point at one another), and sessiond keeps
    thousands of long-lived aggregates in its writer's cache: with the default
    thresholds, collecting took about a sixth of a warm server's CPU under the
    handshake load (bench/), and under a fifth of that with these.
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(*GC_THRESHOLDS)


def cmd_token(args: argparse.Namespace) -> int:
    settings = _offline_settings(args)
    try:
        config = parse_store_url(settings.store_url)
    except StoreError as e:
        raise CliError(str(e)) from None
    try:
        secret = settings.secret or read_key(config.key_dir)
    except KeyFileError as e:
        raise CliError(str(e), 1) from None
    roles = args.role or ["user"]
    try:
        token = TokenSigner(secret).mint(args.user, roles, ttl=args.ttl)
    except ValueError as e:
        raise CliError(str(e)) from None
    print(token)
    return 0


def _open(args: argparse.Namespace) -> tuple[SessiondApplication, StoreConfig]:
    """An existing store, for commands that read it (never create one), and
    how it was opened."""
    settings = _offline_settings(args)
    try:
        config = parse_store_url(settings.store_url)
        if config.path is not None:
            if not config.path.is_file():
                raise StoreError(f"no store at {config.path} (from {settings.store_url!r})")
            _check_is_a_store(config.path, settings.store_url)
        elif config.conninfo is not None:
            _check_is_a_postgres_store(config)
        return open_store(config), config
    except StoreError as e:
        raise CliError(str(e), 1) from None


def _check_is_a_store(path: Path, url: str) -> None:
    """Refuse, before anything is written to it, a SQLite file that holds no
    sessiond store (opening one creates its tables): a command that reads
    must not change a file it was pointed at by mistake, or a copy kept as
    evidence. Read through a read-only connection."""
    import sqlite3

    try:
        with contextlib.closing(sqlite3.connect(f"{path.as_uri()}?mode=ro", uri=True)) as db:
            found = db.execute(
                "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'stored_events'"
            ).fetchone()
    except sqlite3.Error as e:
        raise StoreError(f"cannot open store {url!r}: {e}") from None
    if found is None:
        raise StoreError(f"{path} is not a sessiond store (from {url!r}): it has no events table")


def _check_is_a_postgres_store(config: StoreConfig) -> None:
    """The same refusal on PostgreSQL, before anything is created: a database
    with no sessiond events table (another program's, a wrong name) is left
    as it was."""
    import psycopg

    schema = config.env.get("POSTGRES_SCHEMA", "").strip() or "public"
    table = f"{SessiondApplication.name.lower()}_events"
    assert config.conninfo is not None
    try:
        with psycopg.connect(config.conninfo) as db:
            found = db.execute(
                "SELECT 1 FROM information_schema.tables"
                " WHERE table_schema = %s AND table_name = %s",
                (schema, table),
            ).fetchone()
    except psycopg.Error as e:
        raise StoreError(f"cannot open store {config.url!r}: {type(e).__name__}: {e}") from None
    if found is None:
        raise StoreError(f"{config.url} is not a sessiond store: it has no table {schema}.{table}")


def at_least(minimum: int) -> Callable[[str], int]:
    """An argparse type: a whole number, ``minimum`` or more."""

    def whole(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a whole number") from None
        if value < minimum:
            raise argparse.ArgumentTypeError(f"must be {minimum} or more, got {value}")
        return value

    return whole


positive_int = at_least(1)
position = at_least(0)


def cmd_replay(args: argparse.Namespace) -> int:
    # The history is decoded into fresh dicts and lists that hold no cycles:
    # the cycle collector would walk them again and again (a third of the
    # time of a long replay) for nothing, in a process that ends here.
    gc.disable()
    try:
        check_id(args.session_id, "session_id")
    except InvalidId as e:
        raise CliError(e.message) from None
    store, config = _open(args)
    try:
        if store.get_session(args.session_id, version=1) is None:
            raise CliError(f"no session {args.session_id!r} in {config.url}", 1)
        if args.json:
            pages = replay.iter_session_rows(store, args.session_id, at=args.at)
            replay.write_json_lines(pages, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
            events = replay.iter_session_events(store, args.session_id, at=args.at)
            replay.write_timeline(events, sys.stdout)
            if args.at is not None:
                state = store.get_session(args.session_id, version=args.at)
                if state is not None:
                    print(f"# state at position {state.version}:")
                    print(dumps_str(wire_view(state.view())))
    finally:
        store.close()
    return 0


def cmd_projections(args: argparse.Namespace) -> int:
    from service.application.readmodels import make_projector, open_tables

    store, config = _open(args)
    try:
        tables = open_tables(config)
        try:
            _projections(args, store, make_projector(store, tables, batch_size=args.batch_size))
        finally:
            tables.close()
    except CliError:
        raise
    except Exception as e:
        raise _store_failure(e, config.url) from e
    finally:
        store.close()
    return 0


def _projections(
    args: argparse.Namespace, store: SessiondApplication, projector: Projector
) -> None:
    try:
        chosen = [p.name for p in projector.select(args.names)]
    except ValueError as e:
        raise CliError(str(e)) from None
    projector.setup()
    if args.action == "rebuild":
        head = store.ping()
        bar = ProgressBar(head, sys.stderr)
        applied = rebuild(projector, chosen, bar.update)
        bar.done()
        rows = ", ".join(f"{n} {name}" for name, n in projector.counts(chosen).items())
        print(
            f"rebuilt {', '.join(chosen)} from position 0 to {projector.position}: "
            f"{applied} events, {rows}"
        )
    else:
        print(f"{'projection':<12} {'position':>10} {'head':>10} {'lag':>8}")
        for status in projector.status(chosen):
            print(f"{status.name:<12} {status.position:>10} {status.head:>10} {status.lag:>8}")


def _store_failure(e: Exception, url: str) -> Exception:
    """A store's error (locked, gone, refused) as one line; anything else
    as it is, a bug to see whole."""
    module = type(e).__module__.split(".", 1)[0]
    if module in ("sqlite3", "psycopg", "eventsourcing") or isinstance(e, StoreError):
        return CliError(f"the store {url} failed: {type(e).__name__}: {e}", 1)
    return e


# Events a rebuild decodes, folds and writes per transaction: a batch's
# decoded events stay within the CPU's caches (5,000 were an eighth slower).
REBUILD_BATCH = 2000


def rebuild(
    projector: Projector,
    names: Collection[str] = (),
    on_progress: Callable[[int, int], None] | None = None,
) -> int:
    """``sessiond projections rebuild``: the projections named (all when none
    is) rebuilt from position 0; how many events the batches covered.

    The cycle collector is off meanwhile: a rebuild decodes every event into
    fresh dicts and lists that hold no cycles, so it would walk them again and
    again for nothing (a seventh of a rebuild's time, measured in bench/).
    It is on again afterwards, as it was."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return projector.rebuild(on_progress, names=names)
    finally:
        if was_enabled:
            gc.enable()


class ProgressBar:
    def __init__(self, total: int, out: TextIO, width: int = 30) -> None:
        self.total = max(total, 0)
        self.out = out
        self.width = width
        self.started = time.monotonic()

    def update(self, position: int, head: int) -> None:
        self.total = max(head, 0)
        # An empty log is rebuilt whole as soon as it is read.
        frac = min(1.0, position / self.total) if self.total else 1.0
        filled = int(frac * self.width)
        rate = position / max(time.monotonic() - self.started, 1e-9)
        self.out.write(
            f"\r[{'#' * filled}{' ' * (self.width - filled)}] {frac:6.1%} "
            f"{position}/{self.total} ({rate:,.0f} events/s)"
        )
        self.out.flush()

    def done(self) -> None:
        self.out.write("\n")
        self.out.flush()


def cmd_tail(args: argparse.Namespace) -> int:
    try:
        check_id(args.session_id, "session_id")
    except InvalidId as e:
        raise CliError(e.message) from None
    # The client's imports (aiohttp, rich) load only when tailing.
    from service.cli.tail import run

    return run(args)


def cmd_lifecycle(args: argparse.Namespace) -> int:
    from domain.lifecycle import mermaid  # the state machine's import, for this command alone

    print(mermaid())
    return 0


# Help text written by hand (descriptions, epilogs) is wrapped to this width.
WIDTH = 79


class HelpFormatter(argparse.RawDescriptionHelpFormatter, argparse.ArgumentDefaultsHelpFormatter):
    """Descriptions and epilogs as written (examples keep their lines), and
    each option's default shown, unless its help says it already (those that
    come from the environment do, naming the variable) or there is none."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None or action.default is False:
            return text
        return super()._get_help_string(action) or text


def version() -> str:
    """The installed package's version, as its metadata says."""
    # importlib.metadata is a fifth of the offline commands' import time: it
    # loads when a version is asked for, not before.
    from importlib import metadata

    try:
        return metadata.version("sessiond")
    except metadata.PackageNotFoundError:
        return "unknown (not installed as a package: pip install -e .)"


class ShowVersion(argparse.Action):
    """``--version``: the version is read when asked for (see ``version``)."""

    def __call__(self, parser: argparse.ArgumentParser, *_: Any) -> None:
        print(f"sessiond {version()}")
        parser.exit()


def environment(*pairs: tuple[str, str]) -> str:
    """An epilog section naming the environment variables a command reads."""
    if not pairs:
        return "environment:\n  none read"
    width = max(len(name) for name, _ in pairs) + 4
    lines = [
        textwrap.fill(
            meaning,
            WIDTH,
            initial_indent=f"  {name:<{width - 2}}",
            subsequent_indent=" " * width,
        )
        for name, meaning in pairs
    ]
    return "environment (flags win over these):\n" + "\n".join(lines)


def paragraph(text: str) -> str:
    return textwrap.fill(text, WIDTH)


STORE_ENV = ("SESSIOND_STORE", f"the store when --store is not given (else {DEFAULT_STORE})")
SECRET_ENV = ("SESSIOND_SECRET", "the token signing key (else the key file beside the store)")

# Everything `serve` reads (service/runtime/settings.py); the README's table
# says more about each.
SERVE_ENVIRONMENT = (
    STORE_ENV,
    ("SESSIOND_HOST", f"--host (else {Settings.host})"),
    ("SESSIOND_PORT", f"--port (else {Settings.port})"),
    (
        "SESSIOND_LISTEN_BACKLOG",
        f"connections queued before accepted (else {Settings.listen_backlog})",
    ),
    ("SESSIOND_DRAIN_SECONDS", f"--drain-seconds (else {Settings.drain_seconds:g})"),
    (
        "SESSIOND_EVENT_LOOP",
        f"uvloop, asyncio, or auto: uvloop if installed (else {Settings.event_loop})",
    ),
    SECRET_ENV,
    ("SESSIOND_NODE", "this node's name (else the host name)"),
    ("SESSIOND_CORS_ORIGINS", "comma-separated origins a browser may call from (else none)"),
    ("SESSIOND_MAX_CONNECTIONS_PER_SESSION", "live sockets per session before 4409 (else 1)"),
    ("SESSIOND_AUTH_TIMEOUT", f"seconds to send auth before 4401 (else {Settings.auth_timeout:g})"),
    ("SESSIOND_TOKEN_WARNING", "seconds before exp to send token_expiring (else 60; 0: never)"),
    ("SESSIOND_HEARTBEAT", f"WebSocket ping interval in seconds (else {Settings.heartbeat:g})"),
    ("SESSIOND_MAX_BODY_BYTES", f"largest HTTP body (else {Settings.max_body_bytes})"),
    ("SESSIOND_MAX_FRAME_BYTES", f"largest WebSocket frame (else {Settings.max_frame_bytes})"),
    ("SESSIOND_BAD_FRAMES_PER_MINUTE", "bad frames tolerated before 4400 (else 10)"),
    ("SESSIOND_SEND_QUEUE_LIMIT", "events queued per socket before 4408 (else 1000)"),
    ("SESSIOND_SEND_QUEUE_BYTES", f"bytes queued per socket before 4408 (else {4 * MIB})"),
    ("SESSIOND_STREAM_HEARTBEAT", "seconds an idle event stream waits to ping (else 15)"),
    (
        "SESSIOND_USER_WRITES",
        f"per user: HTTP writes and message frames (else {Settings.user_writes})",
    ),
    ("SESSIOND_USER_SESSIONS", f"per user: sessions created (else {Settings.user_sessions})"),
    ("SESSIOND_USER_SOCKETS", f"per user: live sockets (else {Settings.user_sockets})"),
    ("SESSIOND_USER_UPGRADES", f"per user: socket upgrades (else {Settings.user_upgrades})"),
    ("SESSIOND_USER_WATCHERS", f"per user: event streams (else {Settings.user_watchers})"),
    (
        "SESSIOND_ADDRESS_PENDING_UPGRADES",
        f"per address: upgrades awaiting a token (else {Settings.address_pending_upgrades})",
    ),
    (
        "SESSIOND_ADDRESS_FAILED_UPGRADES",
        f"per address: upgrades that never authenticated (else {Settings.address_failed_upgrades})",
    ),
    (
        "SESSIOND_ADDRESS_UNAUTHENTICATED",
        f"per address: requests without a valid token (else {Settings.address_unauthenticated})",
    ),
    ("SESSIOND_FORWARDED_HOPS", "proxies whose X-Forwarded-For names the client (else 0)"),
    (
        "SESSIOND_PAGE_BYTES",
        "bytes of stored events one page of events holds at most, one event always (else 4 MiB)",
    ),
    ("SESSIOND_BODIES_IN_FLIGHT_BYTES", "request body bytes read at once (else 64 MiB)"),
    (
        "SESSIOND_ADDRESS_BODIES_IN_FLIGHT_BYTES",
        "per address: request body bytes read at once (else 8 MiB)",
    ),
    (
        "SESSIOND_BODY_TIMEOUT",
        f"seconds a request body may take to arrive (else {Settings.body_timeout:g})",
    ),
    ("SESSIOND_ANSWERS_IN_FLIGHT_BYTES", "answer bytes over 64 KiB sent at once (else 64 MiB)"),
    (
        "SESSIOND_ADDRESS_ANSWERS_IN_FLIGHT_BYTES",
        "per address: answer bytes over 64 KiB sent at once (else 16 MiB)",
    ),
    (
        "SESSIOND_ANSWER_TIMEOUT",
        f"seconds an answer may take to leave (else {Settings.answer_timeout:g})",
    ),
    ("SESSIOND_WRITER_MAX_BATCH", "commands per transaction at most (else 256)"),
    ("SESSIOND_NODE_TIMEOUT", "seconds of silence before a node is dead (else 15)"),
    ("SESSIOND_POLL_INTERVAL", "seconds a lost NOTIFY delays delivery at most (else 1)"),
    ("SESSIOND_LOG_FORMAT", f"--log-format (else {Settings.log_format})"),
    ("SESSIOND_ACCESS_LOG", "off: no access lines, one per request and socket end (else on)"),
    (
        "OTEL_EXPORTER_OTLP_ENDPOINT",
        "with the otel extra: send traces there over OTLP/HTTP (else none; the other "
        "OTEL_* variables as OpenTelemetry defines them)",
    ),
)

SERVE_EXAMPLES = """\
examples:
  sessiond serve
      one node on 127.0.0.1:8080, everything in ./sessiond.db
  sessiond serve --host 0.0.0.0 --store sqlite:////var/lib/sessiond/sessiond.db
      one node for the network, its store in /var/lib/sessiond
  SESSIOND_SECRET=... SESSIOND_NODE=node-a sessiond serve --host 0.0.0.0 \\
      --store postgresql://sessiond@db.internal:5432/sessiond
      one node of several sharing a PostgreSQL store (same secret, own name)
  sessiond serve --store memory:// --drain-seconds 0
      a throwaway node that stops at once on SIGTERM

signals:
  SIGTERM  drain: /readyz and new upgrades answer 503 for --drain-seconds while
           open sockets carry on, then every socket is closed with 1001
  SIGINT   (Ctrl-C) stop at once; during a drain, SIGINT or a second SIGTERM
           ends it there"""


def seconds(text: str) -> float:
    """An argparse type: a number of seconds, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0 or value == float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds, got {text}")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description="Event-sourced sessions and connections: one ID, one lifecycle.",
        epilog=paragraph(
            "Run 'sessiond COMMAND --help' for a command's options, defaults and the "
            "environment variables it reads. With no command, sessiond prints this and exits 2."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("--version", action=ShowVersion, nargs=0, help="show the version and exit")
    sub = parser.add_subparsers(
        dest="command", title="commands", metavar="COMMAND", help="one of these:"
    )

    def command(
        name: str, summary: str, details: str = "", **kwargs: Any
    ) -> argparse.ArgumentParser:
        description = paragraph(summary[0].upper() + summary[1:] + "." + f" {details}".rstrip())
        return sub.add_parser(
            name, help=summary, description=description, formatter_class=HelpFormatter, **kwargs
        )

    serve = command(
        "serve",
        "run the service",
        "Serves the HTTP API and WebSockets (docs/PROTOCOL.md) on one store until stopped.",
        epilog=SERVE_EXAMPLES + "\n\n" + environment(*SERVE_ENVIRONMENT),
    )
    serve.add_argument(
        "--host", help=f"address to listen on (default: $SESSIOND_HOST, else {Settings.host})"
    )
    serve.add_argument(
        "--port",
        type=int,
        help=f"port to listen on (default: $SESSIOND_PORT, else {Settings.port})",
    )
    serve.add_argument(
        "--store",
        help=f"sqlite:///PATH.db, postgresql://USER@HOST:PORT/DB or memory:// "
        f"(default: $SESSIOND_STORE, else {DEFAULT_STORE})",
    )
    serve.add_argument(
        "--drain-seconds",
        type=seconds,
        metavar="SECONDS",
        help="on SIGTERM, how long to answer 503 to /readyz and new upgrades before closing "
        f"every socket (default: $SESSIOND_DRAIN_SECONDS, else {Settings.drain_seconds:g})",
    )
    serve.add_argument(
        "--log-level",
        default="INFO",
        choices=["DEBUG", "INFO", "WARNING", "ERROR"],
        help="the least severe log lines printed",
    )
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text (key=value) or json (one object a line) "
        f"(default: $SESSIOND_LOG_FORMAT, else {Settings.log_format})",
    )
    serve.set_defaults(func=cmd_serve)

    token = command(
        "token",
        "print a signed token, with the key serve uses",
        "Never makes a key: without SESSIOND_SECRET it reads the key file serve made beside "
        "the store, and says so when there is none.",
        epilog=environment(SECRET_ENV, STORE_ENV),
    )
    token.add_argument("--user", required=True, help="the user ID (the token's sub)")
    token.add_argument(
        "--role",
        action="append",
        choices=ROLES,
        help="a role; repeat for several (default: user)",
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument(
        "--store",
        help=f"the store whose key file to use (default: $SESSIOND_STORE, else {DEFAULT_STORE})",
    )
    token.set_defaults(func=cmd_token)

    replay_cmd = command(
        "replay",
        "a session's audit history, from the store",
        "Reads the store directly (the service need not run): one line per event, or JSON lines.",
        epilog=environment(STORE_ENV),
    )
    replay_cmd.add_argument("session_id", metavar="SESSION_ID", help="the session to replay")
    replay_cmd.add_argument(
        "--store",
        help=f"the store to read (default: $SESSIOND_STORE, else {DEFAULT_STORE})",
    )
    replay_cmd.add_argument(
        "--at",
        type=positive_int,
        metavar="N",
        help=(
            "stop at position N; the timeline then ends with the session's state at N "
            "(GET /v1/sessions/ID/state?at=N has it as JSON) (default: the whole history)"
        ),
    )
    replay_cmd.add_argument(
        "--json", action="store_true", help="JSON lines, one event each, instead of a timeline"
    )
    replay_cmd.set_defaults(func=cmd_replay)

    proj = command(
        "projections",
        "rebuild or inspect the read models",
        "The read models (sessions, connections) are projections of the event log.",
        epilog=environment(STORE_ENV),
    )
    actions = proj.add_subparsers(
        dest="action", required=True, title="actions", metavar="ACTION", help="what to do"
    )
    for action, text in (
        ("rebuild", "rebuild projections from position 0 while the service keeps serving"),
        ("status", "each projection's position, the log's head, and the lag"),
    ):
        act = actions.add_parser(
            action,
            help=text,
            description=text[0].upper() + text[1:] + ".",
            epilog=environment(STORE_ENV),
            formatter_class=HelpFormatter,
        )
        act.add_argument(
            "names", nargs="*", metavar="NAME", help="the projections to act on (default: all)"
        )
        act.add_argument(
            "--store", help=f"the store (default: $SESSIOND_STORE, else {DEFAULT_STORE})"
        )
        act.add_argument(
            "--batch-size",
            type=positive_int,
            default=REBUILD_BATCH,
            help="events per transaction",
        )
        act.set_defaults(func=cmd_projections)

    tail = command(
        "tail",
        "follow a session live: its timeline, and a progress bar per running task",
        "Follows a session through its event stream (GET /v1/sessions/ID/stream): one line "
        "per event, as sessiond replay prints it, and on a terminal a progress bar per "
        "running task. A dropped connection is resumed where it stopped. Exits 0 when the "
        "session ends, 1 when the server refuses, 130 on Ctrl-C.",
        epilog=environment(
            ("SESSIOND_URL", "the server when --url is not given"),
            ("SESSIOND_HOST", "else the server is http://SESSIOND_HOST:SESSIOND_PORT"),
            ("SESSIOND_PORT", "(else http://127.0.0.1:8080)"),
            ("SESSIOND_TOKEN", "the token when --token is not given"),
            SECRET_ENV,
            STORE_ENV,
        ),
    )
    tail.add_argument("session_id", metavar="SESSION_ID", help="the session to follow")
    tail.add_argument(
        "--after",
        type=position,
        default=0,
        metavar="N",
        help="the last position already seen (default: 0, the whole history, then live)",
    )
    tail.add_argument(
        "--url",
        help="the server (default: $SESSIOND_URL, else http://SESSIOND_HOST:SESSIOND_PORT, "
        "that is http://127.0.0.1:8080)",
    )
    tail.add_argument(
        "--token",
        help="a token that may read the session (default: $SESSIOND_TOKEN; without either, an "
        "auditor token signed for a few minutes at a time with $SESSIOND_SECRET or the key "
        "file serve made beside --store; no key is ever made)",
    )
    tail.add_argument(
        "--store",
        help=f"where to find that key file (default: $SESSIOND_STORE, else {DEFAULT_STORE})",
    )
    tail.set_defaults(func=cmd_tail)

    lifecycle = command(
        "lifecycle",
        "print the connection lifecycle as Mermaid",
        "The state diagram is drawn from the lifecycle class itself, so it never goes stale.",
        epilog=environment(),
    )
    lifecycle.set_defaults(func=cmd_lifecycle)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        status: int = args.func(args)
        return status
    except CliError as e:
        # After the log lines it follows (they may be waiting in a buffer).
        for handler in logging.getLogger().handlers:
            handler.flush()
        print(f"sessiond: error: {one_line(str(e))}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130
    except BrokenPipeError:
        # The output's reader went away (``| head``): nothing more to say.
        # Standard output points at /dev/null so that flushing it at exit
        # does not raise again (the recipe in Python's signal docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1


if __name__ == "__main__":
    sys.exit(main())
