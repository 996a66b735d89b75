"""A private PostgreSQL cluster (``initdb`` in a temp folder, its own port),
for what stops and starts PostgreSQL: the fault suite and the tests that do.
Never the machine's shared server."""

from __future__ import annotations

import contextlib
import os
import shutil
import socket
import subprocess
import tempfile
from pathlib import Path


class ClusterUnavailable(Exception):
    """No PostgreSQL server binaries here, or the cluster would not start."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class ThrowawayPostgres:
    def __init__(self, root: Path | None = None) -> None:
        # Not under pytest's tmp folder: that one is private to root, and the
        # cluster runs as the postgres user.
        self.root = root or Path(tempfile.mkdtemp(prefix="sessiond-pg-"))
        self.data = self.root / "data"
        self.port = _free_port()
        bins = sorted(Path("/usr/lib/postgresql").glob("*/bin"))
        if not bins:
            raise ClusterUnavailable("no PostgreSQL server binaries (initdb) on this machine")
        self.bin = bins[-1]
        self.as_postgres: list[str] = []
        if os.geteuid() == 0:  # initdb refuses to run as root
            self.as_postgres = ["runuser", "-u", "postgres", "--"]
            subprocess.run(["chown", "-R", "postgres", str(self.root)], check=True)

    def _run(self, *args: str) -> None:
        try:
            subprocess.run([*self.as_postgres, *args], check=True, capture_output=True, timeout=120)
        except (subprocess.CalledProcessError, FileNotFoundError) as e:
            detail = getattr(e, "stderr", b"") or b""
            raise ClusterUnavailable(f"{args[0]}: {e} {detail.decode(errors='replace')}") from e

    @property
    def url(self) -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def init(self) -> None:
        self._run(str(self.bin / "initdb"), "-D", str(self.data), "-A", "trust", "-U", "postgres")

    def start(self) -> None:
        self._run(
            str(self.bin / "pg_ctl"),
            "-D",
            str(self.data),
            "-l",
            str(self.root / "pg.log"),
            "-o",
            f"-p {self.port} -k {self.root} -c listen_addresses=127.0.0.1",
            "-w",
            "start",
        )

    def stop(self) -> None:
        self._run(str(self.bin / "pg_ctl"), "-D", str(self.data), "-m", "fast", "-w", "stop")

    def remove(self) -> None:
        with contextlib.suppress(ClusterUnavailable):
            self.stop()
        shutil.rmtree(self.root, ignore_errors=True)
