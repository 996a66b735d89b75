"""``python -m bench [--quick] [--only scaling] [--out docs/benchmarks.md]``

In one run: starts sessiond (``python -m service serve`` on a SQLite file),
the bare aiohttp server (bench/bare_server.py) and python-socketio
(bench/socketio_server.py), and, for reference only, sessiond with SQLite's
fsync off (bench/nofsync_server.py: how much of the gap is waiting for
durability) and the durable floor (bench/floor_server.py: the bare server
plus one durable write per announced step, nothing else); drives each with
the same load from a separate process (bench/load.py), the figures at full
load in interleaved rounds, of which the median counts; measures the store
path, projection rebuild and replay in this process (bench/inproc.py), and
cross-node delivery on two
sessiond nodes sharing a PostgreSQL database made for the run; prints every
figure beside its baseline, with the ratio and the server CPU per operation,
and writes the Markdown report and a plot.

Then "how cost grows" (bench/scaling.py): sessiond alone at growing loads
(clients, sessions, events in the log, a session's length, idle sockets),
each curve fitted and judged by bench/curves.py; ``--only scaling`` runs that
section alone.

``--quick`` shrinks every load so the whole run takes about two minutes (CI).
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from bench import curves, edge, inproc, report, scaling
from bench.procs import (
    Server,
    idle_sockets,
    measured_load,
    raise_nofile,
    replay_seconds,
    run_load,
)
from bench.report import Row, verdict
from service.cli.main import REBUILD_BATCH

BARE, SIO, SESSIOND = "bare aiohttp", "python-socketio", "sessiond"
# sessiond with SQLite's fsync off: a reference, not a setting (bench/nofsync_server.py).
NOFSYNC = "sessiond, fsync off"
# The bare server plus a durable write per step and nothing else (bench/floor_server.py).
FLOOR = "durable floor"
REFERENCES = (NOFSYNC, FLOOR)
# How the report names each server measured beside sessiond, and what its row
# says ({:.2f}: sessiond's rate over its rate).
PEER_LABELS = {
    SIO: "python-socketio",
    NOFSYNC: "sessiond with SQLite's fsync off (a reference, not a setting: acknowledged "
    "writes could be lost)",
    FLOOR: "the durable floor (bare aiohttp plus one durable SQLite write per announced "
    "step, in sessiond's three commits a handshake, nothing else)",
}
PEER_NOTES = {
    ("handshakes", SIO): "(the peer; sessiond is {:.2f}x it)",
    ("handshakes", NOFSYNC): "(the share of the gap that is waiting for fsync: sessiond is "
    "{:.2f}x it)",
    ("handshakes", FLOOR): "(a ceiling for any server recording durably this way: sessiond is "
    "{:.2f}x it)",
    ("delivery", SIO): "(the peer)",
    ("delivery", NOFSYNC): "(a reference, not a setting; sessiond is {:.2f}x it)",
    ("delivery", FLOOR): "(a ceiling for any server acknowledging durably this way; sessiond "
    "is {:.2f}x it)",
}
PG_DSN_ENV = "SESSIOND_BENCH_POSTGRES_DSN"
PG_DSN_DEFAULT = "postgresql://postgres@127.0.0.1:5432/postgres"


@dataclass(frozen=True)
class Loads:
    clients: tuple[int, ...]
    handshake_seconds: float
    producers: int
    events_per_producer: int
    idle_sockets: int
    append_events: int
    append_concurrency: int
    rebuild_events: int
    latency_seconds: float
    replay_events: int
    settle: float
    rounds: int  # interleaved runs at full load; the median counts


# The projection rebuild runs this many times on one store; the best counts.
REBUILD_RUNS = 3
FULL = Loads((10, 20, 40), 10.0, 16, 500, 10_000, 100_000, 256, 1_000_000, 30.0, 100_000, 60.0, 5)
QUICK = Loads((10, 40), 1.5, 16, 40, 500, 4096, 256, 20_000, 5.0, 5_000, 5.0, 1)


@dataclass
class Results:
    curves: dict[str, list[tuple[int, float, float]]] = field(default_factory=dict)
    handshakes: dict[str, tuple[float, float]] = field(default_factory=dict)  # rate, CPU s each
    delivery: dict[str, dict[str, Any]] = field(default_factory=dict)
    memory: dict[str, tuple[float, int]] = field(default_factory=dict)  # bytes/socket, sockets
    append: inproc.Append | None = None
    rebuild: inproc.Rebuild | None = None
    latency: dict[str, Any] | None = None
    latency_note: str = ""
    replay: tuple[float, float] | None = None  # seconds: the session, a 1-event session
    edge: edge.EdgeDecode | None = None
    spread: dict[tuple[str, str], list[float]] = field(default_factory=dict)  # rates of each round
    # The median round's load result of each server at full load (delivery's
    # are in ``delivery``).
    handshake_runs: dict[str, dict[str, Any]] = field(default_factory=dict)


def median_run(runs: list[tuple[dict[str, Any], float]]) -> tuple[dict[str, Any], float]:
    """The run with the median rate (the lower middle one of an even count)."""
    ordered = sorted(runs, key=lambda run: run[0]["rate"])
    return ordered[(len(ordered) - 1) // 2]


def socketio_available() -> bool:
    try:
        import socketio  # noqa: F401
    except ImportError:
        return False
    return True


def servers(workdir: Path, with_socketio: bool) -> list[Server]:
    py = sys.executable
    running = [
        Server(SESSIOND, [py, "-m", "service", "serve", "--store",
                          inproc.sqlite_url(workdir / "bench.db")],
               env={"SESSIOND_NODE": "bench"}, log=workdir / "sessiond.log"),
        Server(BARE, [py, "-m", "bench.bare_server"], log=workdir / "bare.log"),
        Server(NOFSYNC, [py, "-m", "bench.nofsync_server", "--store",
                         inproc.sqlite_url(workdir / "nofsync.db")],
               env={"SESSIOND_NODE": "bench-nofsync"}, log=workdir / "nofsync.log"),
        Server(FLOOR, [py, "-m", "bench.floor_server", "--store", str(workdir / "floor.db")],
               log=workdir / "floor.log"),
    ]  # fmt: skip
    if with_socketio:
        running.append(
            Server(
                SIO, [py, "-m", "bench.socketio_server"], kind="socketio", log=workdir / "sio.log"
            )
        )
    return running


def step(message: str) -> None:
    print(f"[bench {time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)


# --- the figures ---------------------------------------------------------------------


def measure_servers(loads: Loads, workdir: Path, with_socketio: bool, results: Results) -> None:
    running = servers(workdir, with_socketio)
    try:
        for server in running:
            server.start()
        # (e) first, on fresh processes: memory freed by earlier loads would
        # otherwise be reused by the idle sockets and hide their cost.
        for server in running:
            if server.name in REFERENCES:
                continue  # a reference for the rates only
            step(f"{server.name}: {loads.idle_sockets} idle sockets")
            grown, opened = idle_sockets(server, loads.idle_sockets, loads.settle)
            results.memory[server.name] = (grown / opened, opened)
        # (a) interleaved, so a noisy neighbour hurts every server alike; at
        # full load in rounds, the median run of each server counting.
        full: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for clients in loads.clients:
            rounds = loads.rounds if clients == max(loads.clients) else 1
            for n in range(rounds):
                for server in running:
                    if server.name in REFERENCES and clients != max(loads.clients):
                        continue
                    step(f"{server.name}: handshakes, {clients} clients, round {n + 1}/{rounds}")
                    result, cpu = measured_load(
                        server, "handshakes", "--clients", str(clients),
                        "--duration", str(loads.handshake_seconds), patience=loads.settle,
                    )  # fmt: skip
                    if clients == max(loads.clients):
                        full.setdefault(server.name, []).append((result, cpu))
                    else:
                        results.curves.setdefault(server.name, []).append(
                            (clients, result["rate"], result["p50_ms"] or 0.0)
                        )
        for name, runs in full.items():
            result, cpu = median_run(runs)
            results.handshake_runs[name] = result
            results.handshakes[name] = (result["rate"], cpu / max(result["handshakes"], 1))
            results.spread[("handshakes", name)] = [r["rate"] for r, _ in runs]
            if name not in REFERENCES:
                results.curves.setdefault(name, []).append(
                    (max(loads.clients), result["rate"], result["p50_ms"] or 0.0)
                )
        # (b) the same way
        delivered: dict[str, list[tuple[dict[str, Any], float]]] = {}
        for n in range(loads.rounds):
            for server in running:
                step(f"{server.name}: delivery, {loads.producers} producers, round {n + 1}")
                result, cpu = measured_load(
                    server, "delivery", "--producers", str(loads.producers),
                    "--events", str(loads.producers * loads.events_per_producer),
                    patience=loads.settle,
                )  # fmt: skip
                delivered.setdefault(server.name, []).append((result, cpu))
        for name, runs in delivered.items():
            result, cpu = median_run(runs)
            result["cpu_per_event"] = cpu / max(result["events"], 1)
            # Every round must have lost nothing, not only the median one.
            for other, _ in runs:
                result["lost"] = max(result["lost"], other["lost"])
                result["duplicates"] = max(result["duplicates"], other["duplicates"])
                result["in_order"] = result["in_order"] and other["in_order"]
            results.delivery[name] = result
            results.spread[("delivery", name)] = [r["rate"] for r, _ in runs]
    except Exception as e:
        logs = "".join(s.log_tail() for s in running)
        raise RuntimeError(f"{e}\nserver logs{logs}") from e
    finally:
        for server in running:
            server.stop()


def measure_cross_node(loads: Loads, workdir: Path, results: Results) -> None:
    """(f) two sessiond nodes on one PostgreSQL database made for the run: a
    socket on node A, messages posted to node B at 500/s."""
    dsn = os.environ.get(PG_DSN_ENV, PG_DSN_DEFAULT)
    try:
        import psycopg

        name = "sessiond_bench_" + os.urandom(4).hex()
        with psycopg.connect(dsn, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except Exception as e:
        results.latency_note = f"skipped: no PostgreSQL at {dsn} ({type(e).__name__}: {e})"
        return
    store = dsn.rsplit("/", 1)[0] + "/" + name
    py = sys.executable
    nodes = [
        Server(f"node-{n}", [py, "-m", "service", "serve", "--store", store],
               env={"SESSIOND_NODE": f"bench-{n}"}, log=workdir / f"node-{n}.log")
        for n in "ab"
    ]  # fmt: skip
    try:
        for node in nodes:
            node.start()
            node.settle(loads.settle)
        before = [n.cpu() for n in nodes]
        result = run_load(
            "latency", nodes[0].url, "ws", "--url-b", nodes[1].url, "--rate", "500",
            "--duration", str(loads.latency_seconds),
        )  # fmt: skip
        for n in nodes:
            n.settle(loads.settle)
        cpu = sum(n.cpu() - b for n, b in zip(nodes, before, strict=True))
        result["cpu_per_event"] = cpu / max(result["events"], 1)
        results.latency = result
    except Exception as e:
        logs = "".join(n.log_tail() for n in nodes)
        raise RuntimeError(f"cross-node latency failed: {e}\nnode logs{logs}") from e
    finally:
        for node in nodes:
            node.stop()
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def measure_in_process(loads: Loads, workdir: Path, results: Results) -> None:
    step(f"writer: {loads.append_events:,} events, {loads.append_concurrency} in flight")
    results.append = inproc.append_rate(workdir, loads.append_events, loads.append_concurrency)
    rows = inproc.template(workdir)
    step(f"projection rebuild: {loads.rebuild_events:,} events")
    results.rebuild = inproc.rebuild_rate(workdir, rows, loads.rebuild_events, runs=REBUILD_RUNS)
    step(f"replay: {loads.replay_events:,} events")
    long = inproc.replay_store(workdir, rows, loads.replay_events, "replay-long")
    short = inproc.replay_store(workdir, rows, 1, "replay-short")
    results.replay = (replay_seconds(long, "replay-long"), replay_seconds(short, "replay-short"))
    step("edge decoding: a message by the one schema")
    results.edge = edge.edge_decode(20_000 if loads.rounds == 1 else 200_000)


# --- the table ------------------------------------------------------------------------


def ms(seconds: float) -> str:
    return f"{1000 * seconds:.2f} ms"


def build_rows(loads: Loads, r: Results) -> tuple[list[Row], list[str]]:
    rows: list[Row] = []
    notes: list[str] = []
    clients = max(loads.clients)
    bare_rate, bare_cpu = r.handshakes[BARE]
    sio = r.handshakes.get(SIO)
    rate, cpu = r.handshakes[SESSIOND]
    # Ahead of the peer in every round, each against the peer's run of it.
    ahead = sio is None or all(
        ours > theirs
        for ours, theirs in zip(
            r.spread[("handshakes", SESSIOND)], r.spread[("handshakes", SIO)], strict=True
        )
    )
    rows.append(Row(
        "full-lifecycle handshakes/s (sessiond: every transition durable)",
        f"{clients} concurrent clients, new session each, {loads.handshake_seconds:g} s",
        f"{rate:,.0f}/s", f"bare aiohttp {bare_rate:,.0f}/s", f"{rate / bare_rate:.2f}x",
        f"{ms(cpu)} vs bare {ms(bare_cpu)} per handshake",
        verdict(
            rate / bare_rate >= 0.6 and ahead,
            ">= 0.6x bare and ahead of python-socketio in every round",
        ),
    ))  # fmt: skip
    for name, label in PEER_LABELS.items():
        peer = r.handshakes.get(name)
        if peer is None:
            continue
        rows.append(Row(
            f"full-lifecycle handshakes/s, {label}", "the same", f"{peer[0]:,.0f}/s",
            f"bare aiohttp {bare_rate:,.0f}/s", f"{peer[0] / bare_rate:.2f}x",
            f"{ms(peer[1])} per handshake",
            PEER_NOTES[("handshakes", name)].format(rate / peer[0]),
        ))  # fmt: skip

    bare = r.delivery[BARE]
    events = loads.producers * loads.events_per_producer
    sio_rate = r.delivery[SIO]["rate"] if SIO in r.delivery else 0.0
    for name in (SESSIOND, SIO, NOFSYNC, FLOOR):
        d = r.delivery.get(name)
        if d is None:
            continue
        ok = d["lost"] == 0 and d["duplicates"] == 0 and d["in_order"]
        value = f"{d['rate']:,.0f}/s ({d['lost']} lost, {d['duplicates']} repeated)"
        if not d["in_order"]:
            value += ", OUT OF ORDER"
        rows.append(Row(
            "progress events/s delivered to one socket" + ("" if name == SESSIOND else f", {name}"),
            f"{loads.producers} concurrent HTTP producers on one session, {events:,} events, "
            "each acknowledged",
            value, f"bare aiohttp {bare['rate']:,.0f}/s ({bare['lost']} lost)",
            f"{d['rate'] / bare['rate']:.2f}x",
            f"{ms(d['cpu_per_event'])} vs bare {ms(bare['cpu_per_event'])} per event",
            verdict(
                d["rate"] / bare["rate"] >= 0.8 and ok and d["rate"] > sio_rate,
                ">= 0.8x bare and ahead of python-socketio, zero lost",
            )
            if name == SESSIOND
            else PEER_NOTES[("delivery", name)].format(r.delivery[SESSIOND]["rate"] / d["rate"]),
        ))  # fmt: skip

    a = r.append
    assert a is not None
    rows.append(Row(
        "events appended/s inside the process (service.writer.Writer, the store path alone)",
        f"{loads.append_concurrency} concurrent commands, {loads.append_events:,} events, "
        f"SQLite file, WAL, synchronous={a.synchronous}, the server's GC settings",
        f"{a.rate:,.0f}/s ({a.per_txn:.0f} events/transaction)",
        f"raw sqlite3 ({a.raw_method}), same rows, schema, transaction size and durability: "
        f"{a.raw_rate:,.0f}/s",
        f"{a.rate / a.raw_rate:.2f}x",
        f"{1e6 * a.cpu_per_event:.1f} µs vs raw {1e6 * a.raw_cpu_per_event:.1f} µs per event "
        "(this process)",
        verdict(a.rate / a.raw_rate >= 0.6, ">= 0.6x raw"),
    ))  # fmt: skip
    rows.append(Row(
        "events appended/s, eventsourcing's own event objects alone (each message made and "
        "applied by trigger_event on a Session held in memory, encoded as sessiond stores it, "
        "inserted raw; no command, writer thread, future or event loop)",
        "the same messages, sessions and transactions",
        f"{a.floor_rate:,.0f}/s", f"raw sqlite3: {a.raw_rate:,.0f}/s",
        f"{a.floor_rate / a.raw_rate:.2f}x",
        f"{1e6 * a.floor_cpu_per_event:.1f} µs per event (this process)",
        f"(the floor of any store path built on eventsourcing's aggregates: sessiond is "
        f"{a.rate / a.floor_rate:.2f}x it)",
    ))  # fmt: skip

    decode = r.edge
    assert decode is not None
    rows.append(Row(
        "a message decoded and checked at the edge (service/edge/schema.py, msgspec)",
        "one message body with metadata; as a frame: "
        f"{decode.frame_us:.2f} µs",
        f"{decode.body_us:.2f} µs",
        f"orjson.loads of the same bytes, unchecked: {decode.bare_us:.2f} µs",
        f"{decode.ratio:.2f}x", "this process",
    ))  # fmt: skip

    b = r.rebuild
    assert b is not None
    rows.append(Row(
        f"projection rebuild events/s (`sessiond projections rebuild`, batch {REBUILD_BATCH:,}), "
        f"best of {len(b.runs)}",
        f"{b.events:,} recorded events (100 per session, one connection each)",
        f"{b.rate:,.0f}/s", f"raw read + orjson decode of the same rows: {b.raw_rate:,.0f}/s",
        f"{b.rate / b.raw_rate:.2f}x", f"{1e6 * b.cpu_per_event:.1f} µs per event (this process)",
        verdict(b.rate >= 250_000, ">= 250,000/s on 1,000,000 events", b.events == 1_000_000),
    ))  # fmt: skip

    bare_mem = r.memory[BARE][0]
    for name in (SESSIOND, SIO):
        m = r.memory.get(name)
        if m is None:
            continue
        rows.append(Row(
            "memory per idle live socket (server RSS growth / sockets)"
            + ("" if name == SESSIOND else f", {name}"),
            f"{m[1]:,} sockets in PROCESSING_READY on one node",
            f"{m[0] / 1024:.1f} KB", f"bare aiohttp {bare_mem / 1024:.1f} KB",
            f"{m[0] / bare_mem:.2f}x", "",
            verdict(m[0] / bare_mem <= 1.2, "<= 1.2x bare") if name == SESSIOND else "(the peer)",
        ))  # fmt: skip

    if r.latency is not None:
        lat = r.latency
        rows.append(Row(
            "cross-node delivery latency p50 / p99 (POST sent to node B -> event on A's socket)",
            f"2 sessiond nodes on one PostgreSQL, 500 events/s for {loads.latency_seconds:g} s",
            f"{lat['p50_ms']:.1f} / {lat['p99_ms']:.1f} ms (max {lat['max_ms']:.0f} ms, "
            f"{lat['failures']} refused)",
            f"node B's answer to the POST: {lat['ack_p50_ms']:.1f} / {lat['ack_p99_ms']:.1f} ms; "
            f"event on A after that answer: {lat['after_ack_p50_ms']:.1f} / "
            f"{lat['after_ack_p99_ms']:.1f} ms", "",
            f"{ms(lat['cpu_per_event'])} per event, both nodes",
            verdict(lat["p50_ms"] < 2 and lat["p99_ms"] < 10, "p50 < 2 ms, p99 < 10 ms"),
        ))  # fmt: skip
    else:
        rows.append(Row("cross-node delivery latency", r.latency_note, "", "", "", "", ""))

    assert r.replay is not None
    seconds, startup = r.replay
    rows.append(Row(
        "`python -m service replay SESSION --json > /dev/null`, best of 3",
        f"one session of {loads.replay_events:,} events",
        f"{seconds:.2f} s", f"the same command on a 1-event session: {startup:.2f} s",
        f"{seconds / startup:.2f}x", "",
        verdict(seconds < 0.5, "< 0.5 s for 100,000 events", loads.replay_events == 100_000),
    ))  # fmt: skip
    notes.append(
        "Server CPU is utime + stime of the server process (/proc/PID/stat), from idle "
        "before the load to idle after it, divided by the operations it served."
    )
    notes.extend(thread_notes(r))
    notes.append(
        "Every handshake has a token and a user of its own (a user's sessions a second "
        "are budgeted); the servers all remember "
        "verified tokens until they expire, so a producer's repeated token is checked once."
    )
    if loads.rounds > 1:
        spreads = "; ".join(
            f"{figure} {name}: " + " / ".join(f"{rate:,.0f}" for rate in rates)
            for (figure, name), rates in sorted(r.spread.items())
        )
        notes.append(
            f"Handshakes at {clients} clients and delivery ran in {loads.rounds} interleaved "
            f"rounds, every server once a round; each figure above is the median round's. "
            f"The rates of every round, per second: {spreads}."
        )
    if len(b.runs) > 1:
        runs = " / ".join(f"{run.rate:,.0f} ({run.raw_rate:,.0f} raw)" for run in b.runs)
        notes.append(
            f"The projection rebuild ran {len(b.runs)} times on one filled store, each run "
            f"followed by the raw read; the best of each counts. Every run, events/s: {runs}."
        )
    return rows, notes


def thread_notes(r: Results) -> list[str]:
    """Server CPU per operation by thread (/proc/PID/task/*/stat, threads by
    native name), for the median round at full load: where each server's
    time goes, beside the rates."""
    notes = []
    for figure, per_op, runs in (
        ("handshake", "handshakes", r.handshake_runs),
        ("delivered event", "events", r.delivery),
    ):
        parts = []
        for name in (SESSIOND, FLOOR, BARE):
            result = runs.get(name)
            if result is None or not result.get("thread_cpu"):
                continue
            count = max(int(result[per_op]), 1)
            threads = sorted(result["thread_cpu"].items(), key=lambda kv: -kv[1])
            shown = ", ".join(
                f"{thread} {1000 * seconds / count:.3f}"
                for thread, seconds in threads
                if 1000 * seconds / count >= 0.001
            )
            parts.append(f"{name}: {shown}")
        if parts:
            notes.append(
                f"Server CPU per {figure} by thread, in ms (the median round): "
                + "; ".join(parts)
                + "."
            )
    return notes


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m bench", description="sessiond benchmarks")
    parser.add_argument("--quick", action="store_true", help="tiny loads, about two minutes (CI)")
    parser.add_argument(
        "--only", choices=["scaling"], help="run one section alone: scaling (how cost grows)"
    )
    parser.add_argument("--out", type=Path, help="write the Markdown report here (plot beside it)")
    args = parser.parse_args(argv)
    loads = QUICK if args.quick else FULL
    growth = scaling.QUICK if args.quick else scaling.FULL
    everything = args.only is None
    with_socketio = socketio_available()
    if everything and not with_socketio:
        step("python-socketio is not installed (pip install -e '.[bench]'): measuring without it")
    limit = raise_nofile(2 * max(loads.idle_sockets, *growth.idle_sockets) + 1024)
    if limit < loads.idle_sockets + 256:
        loads = Loads(**{**loads.__dict__, "idle_sockets": max(100, limit - 256)})
        step(f"open-file limit {limit}: holding {loads.idle_sockets} idle sockets")
    started = time.monotonic()
    results = Results()
    workdir = Path(tempfile.mkdtemp(prefix="sessiond-bench-"))
    try:
        if everything:
            measure_servers(loads, workdir, with_socketio, results)
            measure_in_process(loads, workdir, results)
            step(f"cross-node latency: {loads.latency_seconds:g} s at 500 events/s")
            measure_cross_node(loads, workdir, results)
        grown = scaling.measure(growth, workdir, limit, step)
    finally:
        shutil.rmtree(workdir, ignore_errors=True)
    rows, notes = build_rows(loads, results) if everything else ([], [])
    if rows:
        print(report.table(rows))
    found = scaling.curves(grown)
    if grown.capped:
        step(grown.capped)
    for curve in found:
        print(f"{curve.title}: {curves.assess(curve).says(curve)}")
    print(f"\nmachine: {report.machine()}")
    print(f"mode: {'quick' if args.quick else 'full'}, {time.monotonic() - started:.0f} s")
    if args.out is not None:
        png = args.out.with_name(args.out.stem + "-scaling.png")
        capped = [f"Capped: {grown.capped}."] if grown.capped else []
        section = curves.section(found, curves.plot(png, found), capped)
        command = report.REPRODUCE.replace(
            "python -m bench",
            "python -m bench" + (" --quick" if args.quick else "")
            + ("" if everything else f" --only {args.only}"),
        )  # fmt: skip
        report.write(args.out, rows, results.curves, quick=args.quick, notes=notes,
                     scaling=section, command=command)  # fmt: skip
        print(f"wrote {args.out} and its plots")
    broken = [
        name
        for name, d in results.delivery.items()
        if d["lost"] or d["duplicates"] or not d["in_order"]
        or d["events"] < loads.producers * loads.events_per_producer
    ] + [f"sessiond with {n} sessions (scaling)" for n in grown.broken]  # fmt: skip
    if broken:
        print(f"FAILED: events lost, repeated or out of order on {', '.join(broken)}")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
