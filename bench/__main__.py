"""``python -m bench [--quick] [--out docs/benchmarks.md]``: every figure of
issue 5 that is measured so far, each beside its baseline measured in the
same run, with the ratio and the server CPU per operation."""

from __future__ import annotations

import argparse
import asyncio
import os
import platform
import shutil
import socket
import sqlite3
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import orjson

ROOT = Path(__file__).resolve().parent.parent
SECRET = "bench-secret-0123456789-0123456789-abcdef"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def rss_bytes(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    return 0


@dataclass
class Server:
    name: str
    cmd: list[str]
    port: int = field(default_factory=free_port)
    proc: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def start(self) -> None:
        env = {**os.environ, "SESSIOND_SECRET": SECRET, "SESSIOND_SEND_QUEUE_LIMIT": "100000"}
        self.proc = subprocess.Popen(
            [*self.cmd, "--port", str(self.port)],
            cwd=ROOT,
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                with socket.create_connection(("127.0.0.1", self.port), timeout=0.2):
                    return
            except OSError:
                time.sleep(0.05)
        raise RuntimeError(f"{self.name} did not start")

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.terminate()
            self.proc.wait(30)

    @property
    def pid(self) -> int:
        assert self.proc is not None
        return self.proc.pid


def load(server: Server, scenario: str, *args: str) -> tuple[dict[str, Any], float]:
    """Run the load generator in its own process; returns (result, server CPU s)."""
    kind = "socketio" if server.name == "python-socketio" else "ws"
    before = cpu_seconds(server.pid)
    out = subprocess.run(
        [sys.executable, "-m", "bench.load", scenario, "--url", server.url, "--kind", kind,
         "--secret", SECRET, *args],
        cwd=ROOT, capture_output=True, text=True, timeout=600, check=False,
    )  # fmt: skip
    if out.returncode != 0:
        raise RuntimeError(f"{scenario} against {server.name} failed:\n{out.stderr[-2000:]}")
    used = cpu_seconds(server.pid) - before
    return orjson.loads(out.stdout.strip().splitlines()[-1]), used


def idle_memory(server: Server, sockets: int) -> float:
    """RSS growth of the server per socket held open in PROCESSING_READY."""
    kind = "socketio" if server.name == "python-socketio" else "ws"
    base = rss_bytes(server.pid)
    proc = subprocess.Popen(
        [sys.executable, "-m", "bench.load", "idle", "--url", server.url, "--kind", kind,
         "--secret", SECRET, "--sockets", str(sockets)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        assert proc.stdout is not None
        proc.stdout.readline()
        time.sleep(1.0)
        return (rss_bytes(server.pid) - base) / sockets
    finally:
        proc.kill()
        proc.communicate()


@contextmanager
def servers(workdir: Path, with_socketio: bool) -> Iterator[list[Server]]:
    running = [
        Server("sessiond", [sys.executable, "-m", "service", "serve", "--store",
                            f"sqlite:///{workdir / 'bench.db'}"]),
        Server("bare aiohttp", [sys.executable, "-m", "bench.bare_server"]),
    ]  # fmt: skip
    if with_socketio:
        running.append(Server("python-socketio", [sys.executable, "-m", "bench.socketio_server"]))
    try:
        for s in running:
            s.start()
        yield running
    finally:
        for s in running:
            s.stop()


# --- in-process figures ---------------------------------------------------------------


def append_rate(workdir: Path, events: int) -> tuple[float, float, int]:
    """Events appended/s through the writer vs a raw batched sqlite3 insert."""
    from service import commands
    from service.auth import Principal
    from service.store import open_store, parse_store_url
    from service.writer import Writer

    url = f"sqlite:///{workdir / 'append.db'}"
    actor = Principal("bench", frozenset({"user"}))

    async def run() -> tuple[float, int]:
        store = open_store(parse_store_url(url))
        writer = Writer(store, on_commit=lambda e: None, max_batch=256)
        writer.start(asyncio.get_running_loop())
        sessions = [f"a{i}" for i in range(64)]
        for s in sessions:
            await writer.execute(commands.create_session(s, actor, None))
        tx0 = writer.transactions
        t0 = time.perf_counter()
        per = events // len(sessions)

        async def producer(s: str) -> None:
            for i in range(per):
                await writer.execute(
                    commands.record_message(s, actor, message_id=f"m{i}", role="user", content="x")
                )

        await asyncio.gather(*(producer(s) for s in sessions))
        dt = time.perf_counter() - t0
        batches = writer.transactions - tx0
        await writer.stop()
        store.close()
        return per * len(sessions) / dt, max(1, per * len(sessions) // max(batches, 1))

    rate, batch = asyncio.run(run())
    raw = workdir / "raw.db"
    db = sqlite3.connect(raw, isolation_level=None)
    db.execute("PRAGMA journal_mode=WAL")
    db.execute("PRAGMA synchronous=FULL")
    db.execute(
        "CREATE TABLE stored_events (originator_id TEXT, originator_version INTEGER, "
        "topic TEXT, state BLOB, PRIMARY KEY (originator_id, originator_version))"
    )
    state = orjson.dumps({"message_id": "m", "role": "user", "content": "x", "timestamp": "t"})
    t0 = time.perf_counter()
    version = 0
    for start in range(0, events, batch):
        rows = [("raw", version + i + 1, "t", state) for i in range(min(batch, events - start))]
        version += len(rows)
        db.execute("BEGIN")
        db.executemany("INSERT INTO stored_events VALUES (?, ?, ?, ?)", rows)
        db.execute("COMMIT")
    raw_rate = events / (time.perf_counter() - t0)
    db.close()
    return rate, raw_rate, batch


def rebuild_rate(workdir: Path, events: int) -> tuple[float, float]:
    """Projection rebuild events/s vs a raw read and orjson decode of the rows."""
    from domain.session import Session
    from service.readmodels import make_projector, open_tables
    from service.store import open_store, parse_store_url

    url = f"sqlite:///{workdir / 'rebuild.db'}"
    config = parse_store_url(url)
    store = open_store(config)
    per_session = 500
    for s in range(max(1, events // per_session)):
        session = Session.create(f"r{s}", "bench")
        for i in range(per_session - 1):
            session.record_message(message_id=f"m{i}", role="user", content="x", user_id="bench")
        store.save(session)
    tables = open_tables(config)
    projector = make_projector(store, tables, batch_size=5000)
    projector.setup()
    t0 = time.perf_counter()
    applied = projector.rebuild()
    rate = applied / (time.perf_counter() - t0)
    tables.close()
    store.close()
    assert config.path is not None
    db = sqlite3.connect(config.path)
    t0 = time.perf_counter()
    n = 0
    for (state,) in db.execute("SELECT state FROM stored_events"):
        orjson.loads(state)
        n += 1
    raw_rate = n / (time.perf_counter() - t0)
    db.close()
    return rate, raw_rate


def replay_seconds(workdir: Path, events: int) -> float:
    from domain.session import Session
    from service.store import open_store, parse_store_url

    url = f"sqlite:///{workdir / 'replay.db'}"
    store = open_store(parse_store_url(url))
    session = Session.create("long", "bench")
    for i in range(events - 1):
        session.record_message(message_id=f"m{i}", role="user", content="x", user_id="bench")
    store.save(session)
    store.close()
    t0 = time.perf_counter()
    subprocess.run(
        [sys.executable, "-m", "service", "replay", "long", "--json", "--store", url],
        cwd=ROOT, stdout=subprocess.DEVNULL, check=True,
    )  # fmt: skip
    return time.perf_counter() - t0


# --- the run ---------------------------------------------------------------------------


def cross_node_latency(seconds: float) -> tuple[float, float] | None:
    """p50/p99 ms from a POST on node B to the event on a socket of node A,
    two sessiond nodes on one PostgreSQL database made for the run."""
    dsn = os.environ.get(
        "SESSIOND_BENCH_POSTGRES_DSN", "postgresql://postgres@127.0.0.1:5432/postgres"
    )
    try:
        import psycopg

        name = "sessiond_bench_" + os.urandom(4).hex()
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:
        print(f"cross-node latency skipped: no PostgreSQL at {dsn} ({e})", file=sys.stderr)
        return None
    store = dsn.rsplit("/", 1)[0] + "/" + name
    nodes = [
        Server(f"node-{n}", [sys.executable, "-m", "service", "serve", "--store", store])
        for n in "ab"
    ]
    try:
        for n, node in zip("ab", nodes, strict=True):
            os.environ["SESSIOND_NODE"] = f"bench-{n}"
            node.start()
        os.environ.pop("SESSIOND_NODE", None)
        out = subprocess.run(
            [sys.executable, "-m", "bench.load", "latency", "--url", nodes[0].url,
             "--url-b", nodes[1].url, "--secret", SECRET, "--rate", "500",
             "--duration", str(seconds)],
            cwd=ROOT, capture_output=True, text=True, timeout=600, check=True,
        )  # fmt: skip
        result = orjson.loads(out.stdout.strip().splitlines()[-1])
        return result["p50_ms"], result["p99_ms"]
    finally:
        for node in nodes:
            node.stop()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()}, {platform.system()}"
    )


def main() -> int:
    parser = argparse.ArgumentParser(prog="python -m bench")
    parser.add_argument("--quick", action="store_true", help="tiny loads (CI proves it runs)")
    parser.add_argument("--out", type=Path, help="write the results as Markdown here")
    args = parser.parse_args()
    q = args.quick
    try:
        import socketio  # noqa: F401

        with_socketio = True
    except ImportError:
        with_socketio = False
    duration = "2" if q else "10"
    events = "400" if q else "8000"
    rows: list[tuple[str, str, str, str]] = []
    curve: dict[str, list[tuple[int, float]]] = {}
    workdir = Path(tempfile.mkdtemp(prefix="sessiond-bench-"))
    try:
        with servers(workdir, with_socketio) as running:
            hs: dict[str, tuple[float, float]] = {}
            dl: dict[str, tuple[float, float, int]] = {}
            mem: dict[str, float] = {}
            for server in running:
                for clients in (10, 40) if q else (10, 20, 40):
                    result, cpu = load(server, "handshakes", "--clients", str(clients),
                                       "--duration", duration)  # fmt: skip
                    curve.setdefault(server.name, []).append((clients, result["rate"]))
                    if clients == 40:
                        hs[server.name] = (result["rate"], cpu / max(result["handshakes"], 1))
                result, cpu = load(server, "delivery", "--producers", "16", "--events", events)
                dl[server.name] = (result["rate"], cpu / max(result["events"], 1), result["lost"])
                mem[server.name] = idle_memory(server, 200 if q else 2000)
        bare_hs, bare_dl, bare_mem = (
            hs["bare aiohttp"][0],
            dl["bare aiohttp"][0],
            mem["bare aiohttp"],
        )
        for name in hs:
            rate, cpu = hs[name]
            rows.append((f"handshakes/s, 40 clients: {name}", f"{rate:,.0f}",
                         f"{rate / bare_hs:.2f}x bare",
                         f"{1000 * cpu:.2f} ms CPU/handshake"))  # fmt: skip
        for name in dl:
            rate, cpu, lost = dl[name]
            rows.append((f"events/s delivered, 16 producers: {name}",
                         f"{rate:,.0f} ({lost} lost)", f"{rate / bare_dl:.2f}x bare",
                         f"{1000 * cpu:.3f} ms CPU/event"))  # fmt: skip
        for name in mem:
            rows.append((f"memory per idle socket: {name}", f"{mem[name] / 1024:.1f} KB",
                         f"{mem[name] / bare_mem:.2f}x bare", ""))  # fmt: skip
        n_append = 4000 if q else 40000
        rate, raw, batch = append_rate(workdir, n_append)
        rows.append(("events appended/s (writer, SQLite file)", f"{rate:,.0f}",
                     f"{rate / raw:.2f}x raw sqlite3 ({raw:,.0f}/s, {batch}/txn)", ""))  # fmt: skip
        n_rebuild = 20000 if q else 200000
        rate, raw = rebuild_rate(workdir, n_rebuild)
        rows.append((f"projection rebuild events/s ({n_rebuild:,} events)", f"{rate:,.0f}",
                     f"{rate / raw:.2f}x raw read+decode ({raw:,.0f}/s)", ""))  # fmt: skip
        latency = cross_node_latency(2.0 if q else 10.0)
        if latency is not None:
            rows.append(("cross-node delivery latency p50 / p99, 500 events/s",
                         f"{latency[0]:.1f} / {latency[1]:.1f} ms", "", ""))  # fmt: skip
        n_replay = 5000 if q else 100000
        seconds = replay_seconds(workdir, n_replay)
        rows.append((f"replay --json of {n_replay:,} events", f"{seconds:.2f} s", "", ""))
    finally:
        shutil.rmtree(workdir, ignore_errors=True)

    header = "| figure | value | against the baseline | server CPU |\n| --- | --- | --- | --- |"
    table = "\n".join([header, *(f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows)])
    print(table)
    print(f"\nmachine: {machine()}")
    if args.out is not None:
        write_report(args.out, table, curve, q)
    return 0


def write_report(
    out: Path, table: str, curve: dict[str, list[tuple[int, float]]], quick: bool
) -> None:
    png = out.with_suffix(".png")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        for name, points in curve.items():
            ax.plot([c for c, _ in points], [r for _, r in points], marker="o", label=name)
        ax.set_xlabel("concurrent clients")
        ax.set_ylabel("full-lifecycle handshakes/s")
        ax.set_title("Handshakes against load")
        ax.legend()
        fig.tight_layout()
        fig.savefig(png)
        plot = f"![handshakes against load]({png.name})\n"
    except ImportError:
        plot = "(install the bench extra for the plot: pip install -e '.[bench]')\n"
    mode = "quick mode (tiny loads; not the figures to quote)" if quick else "full mode"
    out.write_text(
        "# Benchmarks\n\n"
        f"Measured {time.strftime('%Y-%m-%d')} in {mode} on {machine()}.\n"
        "Reproduce: `pip install -e '.[bench]' && python -m bench --out docs/benchmarks.md`.\n"
        "The load generator runs in its own process on the same 2 cores as the servers.\n\n"
        f"{table}\n\n{plot}"
    )


if __name__ == "__main__":
    sys.exit(main())
