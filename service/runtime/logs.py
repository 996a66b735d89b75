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

import logging
import re
import sys
import time
from typing import Any, Literal

import orjson

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
    already answered 400: one line at INFO says it, with no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        # Looked up, not imported: a command that never loads aiohttp (replay,
        # token) starts faster, and then none of its errors can be logged.
        parsing = sys.modules.get("aiohttp.http_exceptions")
        if parsing is not None and isinstance(exc, parsing.HttpProcessingError):
            reason = str(exc.message or exc).splitlines()[0].strip()
            record.msg = "refused a malformed request (%s %s)"
            record.args = (exc.code, reason[:200])
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def formatter(log_format: LogFormat) -> logging.Formatter:
    if log_format == "json":
        return JsonFormatter()
    if log_format == "text":
        return KeyValueFormatter()
    raise ValueError(f"a log format is one of {', '.join(FORMATS)}, not {log_format!r}")


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
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(formatter(log_format))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    # sessiond writes its own access lines (sessiond.access); aiohttp's own
    # would repeat them with the raw path.
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger(ACCESS).setLevel(logging.NOTSET if access else logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(ClientJunk())
