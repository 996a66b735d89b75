"""Log lines, as text (``time level logger message key=value ...``) or as JSON
lines (one object a line: ``time``, ``level``, ``logger``, ``message`` and
every structured field). Every line about a session or a connection carries
its one ID as a structured field; times are UTC, ISO 8601 with ``Z``.

A value that comes from a client (an ID, a reason) cannot forge a line: in
text, a value with a space, a quote, an ``=``, a backslash or a control
character, or an empty one, is written as a JSON string (quoted, escaped);
JSON lines escape it by construction.

See docs/adr/0035-log-json-lines-and-one-access-line-per-request.md.
"""

from __future__ import annotations

import contextlib
import logging
import re
import sys
import threading
import time
from typing import IO, Any, Literal

import orjson

from service.runtime.osthread import name_native_thread

LogFormat = Literal["text", "json"]
FORMATS: tuple[LogFormat, ...] = ("text", "json")

# The logger of the access lines (one per HTTP request, one per socket end),
# so an operator can silence them alone.
ACCESS = "sessiond.access"

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}

# What makes a text value need quotes: anything that would end it, start a
# new field or a new line, or an empty value (which would read as nothing).
_NEEDS_QUOTES = re.compile(r'[\s"=\\\x00-\x1f\x7f]')


def text_value(value: object) -> str:
    """``value`` as it is written after ``key=`` in a text line."""
    text = value if isinstance(value, str) else str(value)
    if text and _NEEDS_QUOTES.search(text) is None:
        return text
    return orjson.dumps(text).decode()


def _one_line(message: str) -> str:
    """A message never spans lines (an exception's text follows it on purpose)."""
    if "\n" in message or "\r" in message:
        return message.replace("\r", "\\r").replace("\n", "\\n")
    return message


class _UtcClock:
    """``2026-11-25T14:00:42.123Z`` for a record, the second's text computed
    once per second (a ``strftime`` per line was measurable under load)."""

    def __init__(self) -> None:
        self._second = -1
        self._second_text = ""

    def __call__(self, record: logging.LogRecord) -> str:
        second = int(record.created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(second))
            self._second = second
        return f"{self._second_text}.{int(record.msecs):03d}Z"


def _extras(record: logging.LogRecord) -> dict[str, Any]:
    return {k: v for k, v in vars(record).items() if k not in _STANDARD}


class KeyValueFormatter(logging.Formatter):
    """``2026-11-25T14:00:42.123Z INFO sessiond.ws connection opened connection_id=...``

    Written out by hand rather than through ``Formatter.format``: a server
    logs a few lines per connection, and the generic path (a ``strftime`` per
    line, ``%``-style formatting, a scan for the style's fields) was about 3%
    of the server's CPU under the bench's handshake load.
    """

    def __init__(self) -> None:
        super().__init__()
        self._time = _UtcClock()

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self._time(record)} {record.levelname} "
            f"{record.name} {_one_line(record.getMessage())}"
        )
        extras = " ".join(
            f"{k}={text_value(v)}" for k, v in vars(record).items() if k not in _STANDARD
        )
        if extras:
            line = f"{line} {extras}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class JsonFormatter(logging.Formatter):
    """One JSON object a line, through orjson: ``time``, ``level``, ``logger``,
    ``message``, then every structured field (a field named like one of the
    first four is left out rather than replace it); ``exception`` and
    ``stack`` hold a traceback's text. A value JSON has no type for is
    written as its ``str``."""

    def __init__(self) -> None:
        super().__init__()
        self._time = _UtcClock()

    def format(self, record: logging.LogRecord) -> str:
        line: dict[str, Any] = {
            "time": self._time(record),
            "level": record.levelname,
            "logger": record.name,
            "message": record.getMessage(),
        }
        for key, value in _extras(record).items():
            line.setdefault(key, value)
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line["exception"] = record.exc_text
        if record.stack_info:
            line["stack"] = self.formatStack(record.stack_info)
        return orjson.dumps(line, default=str).decode()


class ClientJunk(logging.Filter):
    """aiohttp logs a request it cannot parse (a port scanner, TLS spoken to
    plain HTTP, a malformed header) at ERROR with a traceback, though it has
    already answered 400, and so a body that does not decode as its headers
    say, found while it skips the rest of one after the answer: one line at
    INFO says it, with no traceback. An over-long line is not repeated (it
    may be a bearer token)."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # Looked up, not imported: a command that never loads aiohttp (replay,
        # token) starts faster, and then none of its errors can be logged.
        parsing = sys.modules.get("aiohttp.http_exceptions")
        protocol = sys.modules.get("aiohttp.web_protocol")
        if parsing is not None and isinstance(exc, parsing.LineTooLong):
            reason = f"a line longer than {exc.args[1]} bytes"
        elif parsing is not None and isinstance(exc, parsing.HttpProcessingError):
            reason = str(exc.message or exc).splitlines()[0].strip()
        elif protocol is not None and isinstance(exc, protocol.RequestPayloadError):
            reason = "a body that does not decode: " + " ".join(str(exc).split())
        else:
            return True
        record.msg = "refused a malformed request (%s)"
        record.args = (reason[:200],)
        record.levelno, record.levelname = logging.INFO, "INFO"
        record.exc_info, record.exc_text = None, None
        return True


class OfferedSubprotocols(logging.Filter):
    """aiohttp logs, at WARNING, the WebSocket subprotocols a client offers
    when none is one the server speaks (sessiond speaks none), values and all.
    Browser code often offers its bearer token that way
    (``Sec-WebSocket-Protocol: bearer, <JWT>``), which would put a signed
    token in the log. One line at INFO says how many were offered, never
    what; the answer names no subprotocol, as before."""

    # Part of the line aiohttp logs (aiohttp/web_ws.py, ``_handshake``).
    NEEDLE = "Client protocols"

    def filter(self, record: logging.LogRecord) -> bool:
        if self.NEEDLE not in str(record.msg):
            return True
        args = record.args if isinstance(record.args, tuple) else ()
        offered = next((a for a in args if isinstance(a, (list, tuple))), None)
        peer = args[0] if args and isinstance(args[0], str) else "a client"
        record.msg = (
            "%s offered %s WebSocket subprotocol(s), none spoken here; answered with none "
            "(what was offered is not logged: it may be a token)"
        )
        record.args = (peer, len(offered) if offered is not None else "some")
        record.levelno, record.levelname = logging.INFO, "INFO"
        return True


# One filter, so adding it again (one app per test) leaves one on the logger.
OFFERED_SUBPROTOCOLS = OfferedSubprotocols()


def hide_offered_subprotocols() -> None:
    """Keep the values a client offers as WebSocket subprotocols out of the
    log (``OfferedSubprotocols``): called by every app that serves sockets."""
    logging.getLogger("aiohttp.websocket").addFilter(OFFERED_SUBPROTOCOLS)


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return KeyValueFormatter()
    raise ValueError(f"a log format is one of {', '.join(FORMATS)}, not {log_format!r}")


# How long a line may wait in the buffer before it is written out, and how
# much may wait (ADR 0042).
FLUSH_EVERY = 0.2
BUFFER_BYTES = 64 * 1024


class BufferedStreamHandler(logging.StreamHandler[IO[str]]):
    """A ``StreamHandler`` whose lines leave in one write now and then, not
    one write (a system call on the event loop) each: when ``BUFFER_BYTES``
    are waiting, when a line at WARNING or above is logged (it and every line
    before it leave at once), every ``FLUSH_EVERY`` seconds (a thread of its
    own), and at exit (``logging.shutdown`` flushes every handler).

    The lines go to a buffered writer of the stream's file descriptor; lines
    written to the stream by anything else (a bare ``print`` to standard
    error) are not held, so they may come out ahead of a buffered log line.
    """

    def __init__(self, stream: IO[str], *, every: float = FLUSH_EVERY) -> None:
        buffered = open(  # noqa: SIM115 - kept for the handler's life, closed with it
            stream.fileno(),
            "w",
            buffering=BUFFER_BYTES,
            encoding="utf-8",
            errors="backslashreplace",
            closefd=False,
        )
        super().__init__(buffered)
        self._every = every
        self._stopped = threading.Event()
        self._flusher = threading.Thread(
            target=self._flush_now_and_then, name="sessiond-log", daemon=True
        )
        self._flusher.start()

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.stream.write(self.format(record) + self.terminator)
            if record.levelno >= logging.WARNING:
                self.flush()
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def _flush_now_and_then(self) -> None:
        name_native_thread()
        while not self._stopped.wait(self._every):
            # Checked under the lock that close() holds: never a closed
            # stream. A failed flush (a full disk, a reader gone) leaves the
            # lines waiting for the next; this thread must outlive it.
            with self.lock:  # type: ignore[union-attr]
                if not self._stopped.is_set():
                    with contextlib.suppress(OSError, ValueError):
                        self.stream.flush()

    def close(self) -> None:
        # The lock is reentrant: logging.shutdown() holds it when it calls this.
        with self.lock:  # type: ignore[union-attr]
            if not self._stopped.is_set():
                self._stopped.set()
                self.stream.flush()
                self.stream.close()
                # A line logged later still comes out, unbuffered.
                self.stream = sys.stderr
        super().close()


def _stderr_handler() -> logging.Handler:
    """Standard error's handler: buffered when it is a file descriptor (a
    terminal, a pipe, a file), else a plain one (a test's stand-in)."""
    try:
        sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        return logging.StreamHandler(sys.stderr)
    return BufferedStreamHandler(sys.stderr)


def configure(level: str = "INFO", log_format: LogFormat = "text", *, access: bool = True) -> None:
    """The process's logging: one handler on standard error in ``log_format``,
    at ``level``; the access lines (INFO) too unless ``access`` is False."""
    # Nothing in the format needs the caller's file, line, thread or process:
    # the logging cookbook's "what you don't want to collect" (findCaller
    # walks the stack on every line; measured in bench/).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = _stderr_handler()
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    for replaced in root.handlers:
        if isinstance(replaced, BufferedStreamHandler):
            replaced.close()  # its lines out, its thread ended
    root.handlers[:] = [handler]
    root.setLevel(level)
    # sessiond writes its own access lines (sessiond.access); aiohttp's own
    # would repeat them with the raw path.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger(ACCESS).setLevel(logging.NOTSET if access else logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(ClientJunk())
