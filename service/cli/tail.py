"""``sessiond tail SESSION_ID``: follow a session in the terminal through its
event stream (``GET /v1/sessions/{id}/stream``).

One line per event, the same line as ``sessiond replay`` prints; on a
terminal, a progress bar per running task below them. A dropped stream (the
server restarted, the network blinked) is asked for again with
``Last-Event-ID`` after a backoff, so no line is missed or printed twice.

The token: ``--token``, else ``SESSIOND_TOKEN``, else an ``auditor`` token
this command signs itself, for a few minutes at a time, with the key ``serve``
uses (``SESSIOND_SECRET``, or the key file beside ``--store``) when it can
read it; it never makes a key. It exits 0 when the session has ended, 1 when
the server refuses it (401, 403, 404) and 130 on Ctrl-C.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable, Mapping
from typing import Any
from urllib.parse import urlsplit

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

from service.application.auth import KeyFileError, TokenSigner, read_key
from service.application.replay import printable, timeline_line
from service.client import ClientRefused
from service.client.stream import StreamWatcher
from service.runtime.settings import Settings, SettingsError
from service.storage.store import StoreError, parse_store_url

# An auditor token of its own lasts this long; a fresh one is signed for
# every (re)connect, so a long tail outlives each.
MINTED_TTL = 300
MINTED_USER = "sessiond-tail"
UNSPECIFIED_HOSTS = ("", "0.0.0.0", "::")


class TailError(Exception):
    """A readable reason the tail cannot start or go on; exit status given."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def default_url(env: Mapping[str, str] = os.environ) -> str:
    """SESSIOND_URL, else the address ``serve`` listens on (SESSIOND_HOST,
    SESSIOND_PORT; a wildcard host is reached on 127.0.0.1)."""
    if env.get("SESSIOND_URL"):
        return env["SESSIOND_URL"]
    try:
        settings = Settings.from_env(env)
    except SettingsError:
        settings = Settings()
    host = "127.0.0.1" if settings.host in UNSPECIFIED_HOSTS else settings.host
    if ":" in host:
        host = f"[{host}]"
    return f"http://{host}:{settings.port}"


def token_source(args: argparse.Namespace) -> str | Callable[[], str]:
    """The token to send, or a function signing a fresh auditor token."""
    given = args.token or os.environ.get("SESSIOND_TOKEN")
    if given:
        return str(given)
    secret = os.environ.get("SESSIOND_SECRET")
    if not secret:
        try:
            store = args.store or os.environ.get("SESSIOND_STORE") or Settings().store_url
            secret = read_key(parse_store_url(store).key_dir)
        except (KeyFileError, StoreError) as e:
            raise TailError(
                f"no token: give --token or SESSIOND_TOKEN, or run where the key is ({e})", 1
            ) from None
    signer = TokenSigner(secret)
    return lambda: signer.mint(MINTED_USER, ["auditor"], ttl=MINTED_TTL)


class TaskBars:
    """A progress bar per running task, on a terminal only."""

    def __init__(self, console: Console) -> None:
        self.progress: Progress | None = None
        self.bars: dict[str, Any] = {}
        if console.is_terminal:
            self.progress = Progress(
                # A task's name is its writer's text: shown as such, never
                # read as markup (a stray "[/b]" would end the tail).
                TextColumn("{task.description}", markup=False),
                BarColumn(),
                MofNCompleteColumn(),
                console=console,
                transient=True,
            )

    def __enter__(self) -> TaskBars:
        if self.progress is not None:
            self.progress.start()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.progress is not None:
            self.progress.stop()

    def show(self, event: dict[str, Any]) -> None:
        progress = self.progress
        if progress is None:
            return
        data, kind = event["data"], event["type"]
        task_id = data.get("task_id")
        if task_id is None:
            return
        if kind in ("TaskCompleted", "TaskFailed"):
            bar = self.bars.pop(task_id, None)
            if bar is not None:
                progress.remove_task(bar)
            return
        if task_id not in self.bars:
            # A task started before --after is known by its ID alone.
            name = data.get("name")
            label = f"{printable(str(name))} ({task_id})" if name else str(task_id)
            self.bars[task_id] = progress.add_task(label, total=None)
        total = data.get("total")
        done = data.get("done") if kind == "TaskProgressed" else None
        if total is not None:
            progress.update(self.bars[task_id], total=total)
        if done is not None:
            progress.update(self.bars[task_id], completed=done)


async def follow(args: argparse.Namespace, console: Console) -> int:
    token = token_source(args)

    def status(text: str) -> None:
        print(f"sessiond tail: {text}", file=sys.stderr, flush=True)

    watcher = StreamWatcher(
        args.url, args.session_id, token, after=args.after, on_status=status, max_backoff=5.0
    )
    shown = False
    with TaskBars(console) as bars:
        async with watcher:
            try:
                async for event in watcher:
                    console.print(timeline_line(event))
                    bars.show(event)
                    shown = True
            except ClientRefused as e:
                raise TailError(f"the server refused: {e.reason} ({e.code})", 1) from None
    if shown:
        status(f"session {args.session_id} has ended (last position {watcher.last_position})")
    else:
        status(f"session {args.session_id} has ended, with nothing after position {args.after}")
    return 0


def run(args: argparse.Namespace) -> int:
    """``sessiond tail``, once its arguments are parsed."""
    if args.url is None:
        args.url = default_url()
    console = Console(emoji=False, highlight=False, markup=False, soft_wrap=True)
    try:
        parts = urlsplit(args.url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise TailError(
                f"the server's URL must be http://HOST[:PORT] or https://..., not {args.url!r}", 2
            )
        return asyncio.run(follow(args, console))
    except TailError as e:
        print(f"sessiond: error: {e}", file=sys.stderr)
        return e.status
