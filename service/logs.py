"""Log lines as ``time level logger message key=value ...``: every line about a
session or a connection carries its one ID as a structured field."""

from __future__ import annotations

import logging
import sys

_STANDARD = set(vars(logging.LogRecord("", 0, "", 0, "", None, None))) | {"message", "asctime"}


class KeyValueFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        base = super().format(record)
        extras = {k: v for k, v in vars(record).items() if k not in _STANDARD}
        if not extras:
            return base
        fields = " ".join(f"{k}={v}" for k, v in extras.items())
        return f"{base} {fields}"


def configure(level: str = "INFO") -> None:
    # Nothing in the format needs the caller's file, line, thread or process:
    # the logging cookbook's "what you don't want to collect" (findCaller
    # walks the stack on every line; measured in bench/, issue 5).
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(KeyValueFormatter("%(asctime)s %(levelname)s %(name)s %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level)
    logging.getLogger("aiohttp.access").setLevel(logging.WARNING)
