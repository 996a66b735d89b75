"""``python -m bench.nofsync_server --store URL --port P``: sessiond with SQLite's
fsync turned off, for reference only.

Not a setting sessiond offers: with ``PRAGMA synchronous=OFF`` an acknowledged
write can be lost to a crash of the machine. The benchmark runs it beside the
real service to show how much of the gap to the bare server is the wait for
each group commit's fsync, which sits on every client's round trip when each
one waits for its acknowledgement (docs/benchmarks.md).
"""

from __future__ import annotations

import sqlite3
import sys
from typing import Any

_connect = sqlite3.connect


def _connect_without_fsync(*args: Any, **kwargs: Any) -> sqlite3.Connection:
    conn: sqlite3.Connection = _connect(*args, **kwargs)
    conn.execute("PRAGMA synchronous=OFF")
    return conn


def main() -> None:
    sqlite3.connect = _connect_without_fsync  # type: ignore[assignment]
    from service.cli.main import main as sessiond

    sys.exit(sessiond(["serve", *sys.argv[1:]]))


if __name__ == "__main__":
    main()
