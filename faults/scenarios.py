"""The faults, each injected into a real ``sessiond serve`` under honest load.

Each scenario runs writers against a server process, injects its fault in
the middle, lets the writers go on after it is removed, then reads the
session back and checks the ledger (faults/load.py). Each returns a
:class:`Result`: what was injected, what was acknowledged and lost (must be
0), the 500s (must be 0), and the server's peak RSS.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from pathlib import Path

from bench.procs import Server, rss_bytes
from faults.hostile import hostile_mix
from faults.load import SECRET, Ledger, create_session, history, run_writers, verify
from faults.pgcluster import ClusterUnavailable, ThrowawayPostgres


@dataclass
class Result:
    name: str
    injected: str
    faults: int
    bad_inputs: int
    acknowledged: int
    lost: int
    repeated: int
    moved: int
    out_of_order: int
    server_errors: int
    unavailable: int
    peak_rss: int
    skipped: str = ""

    @property
    def ok(self) -> bool:
        return self.skipped != "" or (
            self.lost == self.repeated == self.moved == self.out_of_order == self.server_errors == 0
        )


@dataclass(frozen=True)
class Timing:
    before: float  # honest load before the fault
    during: float  # the fault in place
    after: float  # honest load after it is removed
    writers: int


class PeakRss:
    """Samples a process's RSS every 0.1 s on a thread; the largest seen."""

    def __init__(self) -> None:
        self.peak = 0
        self.pids: list[int] = []
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.1):
            for pid in list(self.pids):
                with contextlib.suppress(OSError):
                    self.peak = max(self.peak, rss_bytes(pid))

    def stop(self) -> int:
        self._stop.set()
        self._thread.join(2)
        return self.peak


def sessiond(name: str, store: str, workdir: Path, **env: str) -> Server:
    return Server(
        name,
        [sys.executable, "-m", "service", "serve", "--store", store],
        env={"SESSIOND_SECRET": SECRET, "SESSIOND_NODE": f"faults-{name}", **env},
        log=workdir / f"{name}.log",
    )


async def _under_load(
    server: Server,
    timing: Timing,
    inject: Callable[[], Awaitable[int]],
) -> tuple[Ledger, int, list[dict[str, object]]]:
    """Honest writers on one session; ``inject`` in the middle (returns how
    many faults it injected). Returns the ledger, the faults and the history."""
    session_id = f"faults-{server.name}"
    await create_session(server.url, session_id)
    ledger = Ledger()
    stop = asyncio.Event()
    writers = asyncio.ensure_future(
        run_writers(server.url, session_id, timing.writers, ledger, stop)
    )
    await asyncio.sleep(timing.before)
    faults = await inject()
    await asyncio.sleep(timing.after)
    stop.set()
    await writers
    try:
        events = await history(server.url, session_id)
    except Exception as e:
        code = server.proc.poll() if server.proc is not None else None
        state = "running" if code is None else f"exited with {code}"
        raise RuntimeError(f"{server.name}: history unreadable, server {state}") from e
    return ledger, faults, events


def _result(
    name: str, injected: str, ledger: Ledger, faults: int, events: list[dict[str, object]], rss: int
) -> Result:
    v = verify(ledger, events)
    return Result(
        name, injected, faults, ledger.bad_inputs, v.acknowledged, v.lost, v.repeated, v.moved,
        v.out_of_order, ledger.server_errors, ledger.statuses[503], rss,
    )  # fmt: skip


async def kill_9(workdir: Path, timing: Timing) -> Result:
    """kill -9 under load, then a restart on the same SQLite file."""
    server = sessiond("kill9", f"sqlite:///{workdir / 'kill9.db'}", workdir)
    server.start()
    peak = PeakRss()
    peak.pids.append(server.pid)

    async def inject() -> int:
        assert server.proc is not None
        server.proc.kill()
        server.proc.wait()
        await asyncio.sleep(timing.during)
        server.start()
        peak.pids.append(server.pid)
        return 1

    try:
        ledger, faults, events = await _under_load(server, timing, inject)
    finally:
        server.stop()
    return _result("kill -9", "SIGKILL under load, restart", ledger, faults, events, peak.stop())


async def postgres_restart(workdir: Path, timing: Timing) -> Result:
    """PostgreSQL stopped under load for a while, then started again."""
    try:
        pg = ThrowawayPostgres()
        pg.init()
        pg.start()
    except ClusterUnavailable as e:
        return _skipped("PostgreSQL stopped", str(e))
    server = sessiond("pgstop", pg.url, workdir)
    try:
        server.start()
        peak = PeakRss()
        peak.pids.append(server.pid)

        async def inject() -> int:
            await asyncio.to_thread(pg.stop)
            await asyncio.sleep(timing.during)
            await asyncio.to_thread(pg.start)
            return 1

        ledger, faults, events = await _under_load(server, timing, inject)
        return _result(
            "PostgreSQL stopped", "the store stopped and started under load", ledger, faults,
            events, peak.stop(),
        )  # fmt: skip
    finally:
        server.stop()
        pg.remove()


async def full_disk(workdir: Path, timing: Timing) -> Result:
    """The SQLite store's disk fills up under load, then room is made again."""
    mount = Path(tempfile.mkdtemp(prefix="sessiond-full-"))
    mounted = await asyncio.to_thread(
        subprocess.run,
        ["mount", "-t", "tmpfs", "-o", "size=24m", "tmpfs", str(mount)],
        capture_output=True,
    )
    if mounted.returncode != 0:
        return _skipped("full disk", f"cannot mount a tmpfs: {mounted.stderr.decode().strip()}")
    server = sessiond("fulldisk", f"sqlite:///{mount / 'full.db'}", workdir)
    filler = mount / "filler"
    try:
        server.start()
        peak = PeakRss()
        peak.pids.append(server.pid)

        async def inject() -> int:
            with filler.open("wb") as f, contextlib.suppress(OSError):
                while True:
                    f.write(b"\0" * (1 << 20))
                    f.flush()
            await asyncio.sleep(timing.during)
            filler.unlink()
            return 1

        ledger, faults, events = await _under_load(server, timing, inject)
        return _result(
            "full disk", "the store's file system filled, then freed", ledger, faults, events,
            peak.stop(),
        )  # fmt: skip
    finally:
        server.stop()
        await asyncio.to_thread(_unmount, mount)


async def read_only(workdir: Path, timing: Timing) -> Result:
    """The SQLite store's files made immutable under load, then writable again."""
    db = workdir / "ro.db"
    server = sessiond("readonly", f"sqlite:///{db}", workdir)
    server.start()
    peak = PeakRss()
    peak.pids.append(server.pid)
    # The database and its write-ahead log refuse writes; the WAL index
    # (ro.db-shm) is left alone. SQLite maps that file into memory, and Linux
    # answers a write to a shared mapping of an immutable file with SIGBUS,
    # which kills any process (seen here as exit -7 about one run in four):
    # that is a kill -9 by another name, which its own scenario covers.
    files = [db, db.with_name("ro.db-wal")]

    def chattr(flag: str) -> bool:
        done = [subprocess.run(["chattr", flag, str(f)], capture_output=True) for f in files]
        return all(d.returncode == 0 for d in done)

    async def inject() -> int:
        if not chattr("+i"):
            chattr("-i")
            raise _Skip("this file system cannot mark files immutable (chattr +i)")
        await asyncio.sleep(timing.during)
        chattr("-i")
        return 1

    try:
        ledger, faults, events = await _under_load(server, timing, inject)
    except _Skip as e:
        return _skipped("read-only store", str(e))
    finally:
        chattr("-i")
        server.stop()
    return _result(
        "read-only store", "the store's files immutable, then writable", ledger, faults, events,
        peak.stop(),
    )  # fmt: skip


async def hostile(workdir: Path, timing: Timing) -> Result:
    """Honest writers while hostile clients send everything a careless or
    malicious caller sends."""
    server = sessiond(
        "hostile",
        f"sqlite:///{workdir / 'hostile.db'}",
        workdir,
        SESSIOND_MAX_CONNECTIONS_PER_SESSION="8",
    )
    server.start()
    peak = PeakRss()
    peak.pids.append(server.pid)
    ledger = Ledger()

    async def inject() -> int:
        ledger.bad_inputs += await hostile_mix(server.url, timing.during)
        return 0

    try:
        honest, faults, events = await _under_load(server, timing, inject)
    finally:
        server.stop()
    honest.bad_inputs = ledger.bad_inputs
    return _result(
        "hostile clients", "deep JSON, huge numbers, bad UTF-8, floods, non-reading sockets",
        honest, faults, events, peak.stop(),
    )  # fmt: skip


def _unmount(mount: Path) -> None:
    subprocess.run(["umount", "-l", str(mount)], capture_output=True, check=False)
    with contextlib.suppress(OSError):
        mount.rmdir()


class _Skip(Exception):
    pass


def _skipped(name: str, why: str) -> Result:
    return Result(name, "", 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, skipped=why)


SCENARIOS = [kill_9, postgres_restart, full_disk, read_only, hostile]


def _log_tails(folder: Path) -> str:
    return "\n".join(
        f"faults: {log.name} ends with:\n{log.read_text(errors='replace')[-3000:]}"
        for log in sorted(folder.glob("*.log"))
    )


async def run_all(timing: Timing) -> list[Result]:
    results = []
    with tempfile.TemporaryDirectory(prefix="sessiond-faults-") as folder:
        for scenario in SCENARIOS:
            started = time.monotonic()
            try:
                result = await scenario(Path(folder), timing)
            except Exception:
                # A scenario that cannot finish (a server that died, say) says
                # what its servers logged, which the temporary folder loses.
                print(await asyncio.to_thread(_log_tails, Path(folder)), file=sys.stderr)
                raise
            print(
                f"faults: {result.name}: {time.monotonic() - started:.1f} s"
                + (f" (skipped: {result.skipped})" if result.skipped else ""),
                file=sys.stderr,
                flush=True,
            )
            results.append(result)
    return results
