"""Log lines as ``time level logger message key=value ...``: every line about a
session or a connection carries its one ID as a structured field."""

from __future__ import annotations

import logging
import sys
import time

from aiohttp.http_exceptions import HttpProcessingError

_STANDARD = frozenset(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {
    "message",
    "asctime",
}


class KeyValueFormatter(logging.Formatter):
    """``2026-11-25 14:00:42,123 INFO sessiond.ws connection opened connection_id=...``

    Written out by hand rather than through ``Formatter.format``: a server
    logs a few lines per connection, and the generic path (a ``strftime`` per
    line, ``%``-style formatting, a scan for the style's fields) was about 3%
    of the server's CPU under the bench's handshake load.
    """

    def __init__(self) -> None:
        super().__init__()
        self._second = -1
        self._second_text = ""

    def _asctime(self, created: float, msecs: float) -> str:
        second = int(created)
        if second != self._second:
            self._second_text = time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(created))
            self._second = second
        return f"{self._second_text},{int(msecs):03d}"

    def format(self, record: logging.LogRecord) -> str:
        line = (
            f"{self._asctime(record.created, record.msecs)} {record.levelname} "
            f"{record.name} {record.getMessage()}"
        )
        extras = " ".join(f"{k}={v}" for k, v in vars(record).items() if k not in _STANDARD)
        if extras:
            line = f"{line} {extras}"
        if record.exc_info and not record.exc_text:
            record.exc_text = self.formatException(record.exc_info)
        if record.exc_text:
            line = f"{line}\n{record.exc_text}"
        if record.stack_info:
            line = f"{line}\n{self.formatStack(record.stack_info)}"
        return line


class ClientJunk(logging.Filter):
    """aiohttp logs a request it cannot parse (a port scanner, TLS spoken to
    plain HTTP, a malformed header) at ERROR with a traceback, though it has
    already answered 400: one line at INFO says it, with no traceback."""

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if isinstance(exc, HttpProcessingError):
            reason = str(exc.message or exc).splitlines()[0].strip()
            record.msg = "refused a malformed request (%s %s)"
            record.args = (exc.code, reason[:200])
            record.levelno, record.levelname = logging.INFO, "INFO"
            record.exc_info, record.exc_text = None, None
        return True


def configure(level: str = "INFO") -> None:
    # Nothing in the format needs the caller's file, line, thread or process:
    # the logging cookbook's "what you don't want to collect" (findCaller
    # walks the stack on every line; measured in bench/).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter())
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
    logging.getLogger("aiohttp.server").addFilter(ClientJunk())
