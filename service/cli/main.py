"""``sessiond``: serve, mint tokens, replay history, follow a session, rebuild
projections, draw the lifecycle."""

from __future__ import annotations

import argparse
import errno
import gc
import logging
import socket
import sys
import time
from collections.abc import Callable, Sequence
from typing import TextIO

from domain.errors import InvalidId
from domain.ids import check_id
from domain.lifecycle import mermaid
from service.application import replay
from service.application.auth import (
    ROLES,
    KeyFileError,
    TokenSigner,
    load_or_create_key,
    read_key,
)
from service.runtime import logs
from service.runtime.settings import Settings, SettingsError
from service.storage.store import SessiondApplication, StoreError, open_store, parse_store_url
from service.storage.wire import dumps_str, wire_view

log = logging.getLogger("sessiond")


class CliError(Exception):
    """A readable error for the command line; exit status 2 unless given."""

    def __init__(self, message: str, status: int = 2) -> None:
        super().__init__(message)
        self.status = status


def _settings(args: argparse.Namespace) -> Settings:
    try:
        return Settings.from_env(
            store_url=getattr(args, "store", None),
            host=getattr(args, "host", None),
            port=getattr(args, "port", None),
            log_format=getattr(args, "log_format", None),
        )
    except SettingsError as e:
        raise CliError(str(e)) from None


def _check_port_free(host: str, port: int) -> None:
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
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
        config = parse_store_url(settings.store_url)
        open_store(config).close()  # fail fast, with a readable message
        if settings.secret is None:
            load_or_create_key(config.key_dir)  # the key `sessiond token` reads
    except (StoreError, KeyFileError) as e:
        raise CliError(str(e), 1) from None
    _check_port_free(settings.host, settings.port)
    # The server's imports (aiohttp, psycopg) load only when serving, so the
    # offline commands (token, replay, projections) start fast.
    from aiohttp import web

    from service.edge.app import create_app

    app = create_app(settings)
    tune_garbage_collector()

    def announce(_: object) -> None:
        print(
            f"sessiond serving on http://{settings.host}:{settings.port} "
            f"(store {settings.store_url}, node {settings.node_id})",
            flush=True,
        )

    try:
        web.run_app(
            app,
            host=settings.host,
            port=settings.port,
            print=announce,
            access_log=None,
            shutdown_timeout=settings.shutdown_timeout,
        )
    except OSError as e:
        raise CliError(f"cannot serve on {settings.host}:{settings.port}: {e}", 1) from None
    except StoreError as e:
        raise CliError(str(e), 1) from None
    return 0


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
    settings = _settings(args)
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


def _open(args: argparse.Namespace) -> SessiondApplication:
    """An existing store, for commands that read it (never create one)."""
    settings = _settings(args)
    try:
        config = parse_store_url(settings.store_url)
        if config.path is not None and not config.path.is_file():
            raise StoreError(f"no store at {config.path} (from {settings.store_url!r})")
        return open_store(config)
    except StoreError as e:
        raise CliError(str(e), 1) from None


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
    store = _open(args)
    try:
        if store.get_session(args.session_id, version=1) is None:
            raise CliError(f"no session {args.session_id!r} in {_settings(args).store_url}", 1)
        events = replay.iter_session_events(store, args.session_id, at=args.at)
        if args.json:
            replay.write_json_lines(events, sys.stdout.buffer)
            sys.stdout.buffer.flush()
        else:
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

    store = _open(args)
    config = parse_store_url(_settings(args).store_url)
    tables = open_tables(config)
    projector = make_projector(store, tables, batch_size=args.batch_size)
    try:
        try:
            chosen = [p.name for p in projector.select(args.names)]
        except ValueError as e:
            raise CliError(str(e)) from None
        projector.setup()
        if args.action == "rebuild":
            head = store.ping()
            bar = ProgressBar(head, sys.stderr)
            applied = projector.rebuild(
                lambda position, head: bar.update(position, head), names=chosen
            )
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
    finally:
        tables.close()
        store.close()
    return 0


class ProgressBar:
    def __init__(self, total: int, out: TextIO, width: int = 30) -> None:
        self.total = max(total, 1)
        self.out = out
        self.width = width
        self.started = time.monotonic()

    def update(self, position: int, head: int) -> None:
        self.total = max(head, 1)
        frac = min(1.0, position / self.total)
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
    print(mermaid())
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sessiond",
        description="Event-sourced sessions and connections: one ID, one lifecycle.",
    )
    sub = parser.add_subparsers(dest="command", required=True)

    serve = sub.add_parser("serve", help="run the service")
    serve.add_argument("--host", help="address to listen on (SESSIOND_HOST, default 127.0.0.1)")
    serve.add_argument("--port", type=int, help="port (SESSIOND_PORT, default 8080)")
    serve.add_argument(
        "--store",
        help="sqlite:///path.db (default sqlite:///./sessiond.db), memory://, postgresql://...",
    )
    serve.add_argument("--log-level", default="INFO", choices=["DEBUG", "INFO", "WARNING", "ERROR"])
    serve.add_argument(
        "--log-format",
        choices=["text", "json"],
        help="text (key=value) or json (one object a line) (SESSIOND_LOG_FORMAT, default text)",
    )
    serve.set_defaults(func=cmd_serve)

    token = sub.add_parser("token", help="print a signed token, with the key serve uses")
    token.add_argument("--user", required=True, help="the user ID (the token's sub)")
    token.add_argument(
        "--role", action="append", choices=ROLES, help="a role; repeat for several (default user)"
    )
    token.add_argument("--ttl", type=int, default=3600, help="seconds until it expires")
    token.add_argument("--store", help="the store whose key file to use (as for serve)")
    token.set_defaults(func=cmd_token)

    replay_cmd = sub.add_parser("replay", help="a session's audit history, from the store")
    replay_cmd.add_argument("session_id")
    replay_cmd.add_argument("--store", help="the store to read (as for serve)")
    replay_cmd.add_argument(
        "--at", type=positive_int, help="stop at this position, and show the state then"
    )
    replay_cmd.add_argument("--json", action="store_true", help="JSON lines instead of a timeline")
    replay_cmd.set_defaults(func=cmd_replay)

    proj = sub.add_parser("projections", help="rebuild or inspect the read models")
    actions = proj.add_subparsers(dest="action", required=True)
    for action, text in (
        ("rebuild", "rebuild projections from position 0 while the service keeps serving"),
        ("status", "each projection's position, the log's head, and the lag"),
    ):
        act = actions.add_parser(action, help=text)
        act.add_argument(
            "names", nargs="*", metavar="NAME", help="the projections to act on (default: all)"
        )
        act.add_argument("--store", help="the store (as for serve)")
        act.add_argument(
            "--batch-size", type=positive_int, default=5000, help="events per transaction"
        )
        act.set_defaults(func=cmd_projections)

    tail = sub.add_parser(
        "tail",
        help="follow a session live: its timeline, and a progress bar per running task",
        description=(
            "Follow a session through its event stream (GET /v1/sessions/ID/stream): one "
            "line per event, as sessiond replay prints it, and on a terminal a progress bar "
            "per running task. A dropped connection is resumed where it stopped. Exits 0 "
            "when the session ends, 1 when the server refuses, 130 on Ctrl-C."
        ),
    )
    tail.add_argument("session_id", metavar="SESSION_ID")
    tail.add_argument(
        "--after",
        type=position,
        default=0,
        help="the last position already seen (default 0: the whole history, then live)",
    )
    tail.add_argument(
        "--url",
        help="the server (default: SESSIOND_URL, else http://SESSIOND_HOST:SESSIOND_PORT, "
        "that is http://127.0.0.1:8080)",
    )
    tail.add_argument(
        "--token",
        help="a token that may read the session (default: SESSIOND_TOKEN; without either, an "
        "auditor token signed for a few minutes at a time with SESSIOND_SECRET or the key "
        "file serve made beside --store; no key is ever made)",
    )
    tail.add_argument(
        "--store",
        help="where to find that key file (default: SESSIOND_STORE, else sqlite:///./sessiond.db)",
    )
    tail.set_defaults(func=cmd_tail)

    lifecycle = sub.add_parser("lifecycle", help="print the connection lifecycle as Mermaid")
    lifecycle.set_defaults(func=cmd_lifecycle)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        status: int = args.func(args)
        return status
    except CliError as e:
        print(f"sessiond: error: {e}", file=sys.stderr)
        return e.status
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
