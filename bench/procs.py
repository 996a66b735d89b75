"""Server processes under measurement: start, stop, CPU seconds, RSS, settling."""

from __future__ import annotations

import os
import resource
import socket
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789-0123456789-abcdef"
CLK_TCK = os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _stat_cpu(stat: Path) -> float:
    """utime + stime (fields 14 and 15) of a /proc stat file, in seconds."""
    fields = stat.read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def cpu_seconds(pid: int) -> float:
    """utime + stime of every thread of ``pid`` (/proc/PID/stat)."""
    return _stat_cpu(Path(f"/proc/{pid}/stat"))


def thread_cpu(pid: int) -> dict[str, float]:
    """CPU seconds of ``pid``'s threads by native name (``comm``); the main
    thread, which runs the event loop in every server measured here, is
    "event loop", and threads without a native name of their own are "other
    threads". Threads that end during a load take their CPU with them, so
    this is for long-lived threads (sessiond's writer and projector)."""
    out: dict[str, float] = {}
    program = Path(f"/proc/{pid}/comm").read_text().strip()
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            comm = (task / "comm").read_text().strip()
            seconds = _stat_cpu(task / "stat")
        except OSError:
            continue  # the thread ended meanwhile
        if task.name == str(pid):
            name = "event loop"
        elif comm == program:
            name = "other threads"  # not named natively: executors and the like
        else:
            name = comm
        out[name] = out.get(name, 0.0) + seconds
    return out


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


def raise_nofile(wanted: int) -> int:
    """Raise this process's (and so its children's) open-file limit; returns the soft limit.

    The hard limit is raised too where the process may (root, or
    CAP_SYS_RESOURCE, up to fs.nr_open); otherwise the soft limit stops at it."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, wanted))
            hard = wanted
        except (ValueError, OSError):
            pass  # not allowed: the hard limit stays
    target = hard if hard == resource.RLIM_INFINITY else min(hard, max(soft, wanted))
    if target > soft:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


@dataclass
class Server:
    """One server under test, in its own process."""

    name: str
    cmd: list[str]
    kind: str = "ws"  # the client dialect: "ws" (sessiond's protocol) or "socketio"
    env: dict[str, str] = field(default_factory=dict)
    log: Path | None = None
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def pid(self) -> int:
        assert self.proc is not None, f"{self.name} is not running"
        return self.proc.pid

    def start(self, patience: float = 60.0) -> None:
        # Stopped with SIGTERM, a sessiond would drain first (nothing here
        # measures that), unless told otherwise.
        env = {**os.environ, "SESSIOND_SECRET": SECRET, "SESSIOND_DRAIN_SECONDS": "0", **self.env}
        err = self.log.open("ab") if self.log is not None else subprocess.DEVNULL
        try:
            self.proc = subprocess.Popen(
                [*self.cmd, "--port", str(self.port)],
                cwd=ROOT,
                env=env,
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        finally:
            if self.log is not None and not isinstance(err, int):
                err.close()
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                break
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start{self.log_tail()}")

    def stop(self) -> None:
        if self.proc is None:
            return
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc = None

    def log_tail(self) -> str:
        if self.log is None or not self.log.exists():
            return ""
        return ":\n" + self.log.read_text(errors="replace")[-2000:]

    def cpu(self) -> float:
        return cpu_seconds(self.pid)

    def rss(self) -> int:
        return rss_bytes(self.pid)

    def settle(self, patience: float = 10.0, window: float = 0.25, busy: float = 0.05) -> None:
        """Wait until the server is idle (under ``busy`` of a core over ``window``),
        so that work left over from one measurement is not billed to the next."""
        deadline = time.monotonic() + patience
        while time.monotonic() < deadline:
            before = self.cpu()
            time.sleep(window)
            if self.cpu() - before <= busy * window:
                return


def run_load(
    scenario: str, url: str, kind: str, *args: str, timeout: float = 900
) -> dict[str, Any]:
    """Run ``python -m bench.load SCENARIO`` in its own process; its JSON result."""
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", scenario, "--url", url, "--kind", kind,
         "--secret", SECRET, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=timeout, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"load {scenario} on {url} failed:\n{out.stderr[-3000:]}")
    result: dict[str, Any] = orjson.loads(out.stdout.strip().splitlines()[-1])
    return result


def measured_load(
    server: Server, scenario: str, *args: str, patience: float = 10.0
) -> tuple[dict[str, Any], float]:
    """A load run against ``server``; returns (result, server CPU seconds it cost),
    the CPU counted from an idle server to an idle server again."""
    server.settle(patience)
    before, threads_before = server.cpu(), thread_cpu(server.pid)
    result = run_load(scenario, server.url, server.kind, *args)
    server.settle(patience)
    threads = thread_cpu(server.pid)
    result["thread_cpu"] = {
        name: seconds - threads_before.get(name, 0.0) for name, seconds in threads.items()
    }
    return result, server.cpu() - before


def replay_seconds(url: str, session_id: str, runs: int = 3) -> float:
    """Best wall time of ``python -m service replay SESSION --json > /dev/null``,
    with Python's bytecode cache as a user has it: an environment that turns
    it off (``PYTHONDONTWRITEBYTECODE``, as some sandboxes and CI images do)
    would bill compiling sessiond's own modules (0.06-0.12 s here) to every start."""
    env = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}
    best = float("inf")
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run(
            [sys.executable, "-m", "service", "replay", session_id, "--json", "--store", url],
            cwd=ROOT, env=env, stdout=subprocess.DEVNULL, check=True,
        )  # fmt: skip
        best = min(best, time.perf_counter() - t0)
    return best


def idle_sockets(server: Server, sockets: int, patience: float) -> tuple[int, int]:
    """Hold ``sockets`` connections in PROCESSING_READY; returns (RSS growth, sockets open).

    A few connections are opened and closed first so that first-use costs
    (imports, caches, pools) are not billed to the idle sockets."""
    run_load("handshakes", server.url, server.kind, "--clients", "4", "--count", "40")
    server.settle(patience)
    base = server.rss()
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.load", "idle", "--url", server.url, "--kind", server.kind,
         "--secret", SECRET, "--sockets", str(sockets)],
        cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        line = proc.stdout.readline()
        if not line:
            proc.wait(10)
            assert proc.stderr is not None
            raise RuntimeError(
                f"idle sockets on {server.name} failed:\n{proc.stderr.read()[-3000:]}"
            )
        said = orjson.loads(line)
        opened = int(said["open"])
        if said.get("retried"):
            print(
                f"[bench] {server.name}: {said['retried']:,} upgrades of {sockets:,} idle sockets "
                "were told to try again later (503 or 1013) and tried again",
                file=sys.stderr,
                flush=True,
            )
        server.settle(patience)
        return server.rss() - base, opened
    finally:
        proc.kill()
        proc.communicate()
        server.settle(patience * 3)
