"""How cost grows: sessiond measured at growing loads, by the bench's own
measurements (bench/procs.py, bench/load.py, bench/inproc.py), each curve
then fitted and judged by bench/curves.py.

- handshakes/s and p99 handshake time against concurrent clients;
- delivered events/s against sessions, a live socket each;
- projection rebuild time against recorded events;
- ``sessiond replay`` time against the session's length;
- server RSS against idle live sockets (a fresh server for each count, so
  memory freed by an earlier count is not reused by the next).
"""

from __future__ import annotations

import shutil
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from bench import inproc
from bench.curves import Curve
from bench.procs import Server, idle_sockets, measured_load, replay_seconds, run_load


@dataclass(frozen=True)
class ScalingLoads:
    clients: tuple[int, ...]
    handshake_seconds: float
    sessions: tuple[int, ...]
    producers: int
    delivery_events: int
    rebuild_events: tuple[int, ...]
    rebuild_runs: int
    replay_events: tuple[int, ...]
    replay_runs: int
    idle_sockets: tuple[int, ...]
    settle: float


FULL = ScalingLoads(
    clients=(10, 40, 160, 640),
    handshake_seconds=10.0,
    sessions=(1, 16, 256),
    producers=16,
    delivery_events=16_000,
    rebuild_events=(100_000, 1_000_000, 3_000_000),
    # Best of three at each size, as in the main table: one run per size read
    # 3,000,000 events as 9.8 s in one full run and 13.9 s in the next, same
    # code, and the shape flipped between linear and worse with it.
    rebuild_runs=3,
    # 1,000 and 10,000 events are both the command's start-up (about 0.2 s);
    # the longer sessions give the line a slope to be judged by.
    replay_events=(1_000, 10_000, 100_000, 300_000),
    replay_runs=3,
    idle_sockets=(1_000, 10_000, 30_000),
    settle=60.0,
)
QUICK = ScalingLoads(
    clients=(4, 8, 16),
    handshake_seconds=1.0,
    sessions=(1, 4, 16),
    producers=16,
    delivery_events=480,
    rebuild_events=(2_000, 5_000, 10_000),
    rebuild_runs=1,
    replay_events=(100, 1_000, 3_000),
    replay_runs=1,
    idle_sockets=(100, 200, 400),
    settle=5.0,
)


@dataclass
class Scaling:
    # clients -> (handshakes/s, p99 ms)
    handshakes: dict[int, tuple[float, float]] = field(default_factory=dict)
    # sessions -> (events/s, lost, repeated, in order)
    delivery: dict[int, tuple[float, int, int, bool]] = field(default_factory=dict)
    rebuild: dict[int, float] = field(default_factory=dict)  # events -> seconds
    rebuild_runs: int = 1  # the best of this many runs at each size (as measured)
    replay: dict[int, float] = field(default_factory=dict)  # events -> seconds
    memory: dict[int, float] = field(default_factory=dict)  # sockets open -> RSS growth, MB
    capped: str = ""  # a load this machine could not hold, said in the report

    @property
    def broken(self) -> list[int]:
        """Session counts at which an event was lost, repeated or out of order."""
        return [
            sessions
            for sessions, (_, lost, repeated, in_order) in self.delivery.items()
            if lost or repeated or not in_order
        ]


def sessiond(workdir: Path, tag: str) -> Server:
    return Server(
        f"sessiond ({tag})",
        [sys.executable, "-m", "service", "serve", "--store",
         inproc.sqlite_url(workdir / f"scaling-{tag}.db")],
        env={"SESSIOND_NODE": f"bench-scaling-{tag}"},
        log=workdir / f"scaling-{tag}.log",
    )  # fmt: skip


def measure(
    loads: ScalingLoads, workdir: Path, nofile: int, say: Callable[[str], None] = print
) -> Scaling:
    """Every curve, in this order: memory (fresh servers), then handshakes
    and delivery on one server, then the in-process figures."""
    workdir = workdir / "scaling"  # the other sections' files are their own
    workdir.mkdir()
    out = Scaling()
    # Each socket is a descriptor in the server and one in the load process;
    # a count beyond the open-file limit is measured at the most it allows,
    # so that the curve keeps its points, and the report says so.
    most = nofile - 512
    counts = sorted({min(n, most) for n in loads.idle_sockets})
    if most < max(loads.idle_sockets):
        asked = ", ".join(f"{n:,}" for n in loads.idle_sockets if n > most)
        out.capped = (
            f"idle sockets: {asked} asked, {most:,} measured instead, the open-file limit "
            f"here being {nofile:,} (raise it, e.g. `ulimit -Hn {2 * max(loads.idle_sockets)}` "
            "as root before the run)"
        )
    for count in counts:
        server = sessiond(workdir, f"idle-{count}")
        server.start()
        try:
            say(f"scaling: {count:,} idle sockets on a fresh server")
            grown, opened = idle_sockets(server, count, loads.settle)
            out.memory[opened] = grown / 1e6
        finally:
            server.stop()

    server = sessiond(workdir, "load")
    server.start()
    try:
        # First-use costs (imports, caches, pools) are not the first point's.
        run_load("handshakes", server.url, server.kind, "--clients", "4", "--count", "40")
        for clients in loads.clients:
            say(f"scaling: handshakes, {clients} clients")
            result, _ = measured_load(
                server, "handshakes", "--clients", str(clients),
                "--duration", str(loads.handshake_seconds), patience=loads.settle,
            )  # fmt: skip
            out.handshakes[clients] = (result["rate"], result["p99_ms"] or 0.0)
        for sessions in loads.sessions:
            say(f"scaling: delivery, {sessions} sessions with a socket each")
            result, _ = measured_load(
                server, "delivery", "--producers", str(loads.producers),
                "--sessions", str(sessions), "--events", str(loads.delivery_events),
                patience=loads.settle,
            )  # fmt: skip
            out.delivery[sessions] = (
                result["rate"],
                result["lost"],
                result["duplicates"],
                result["in_order"],
            )
    except Exception as e:
        raise RuntimeError(f"{e}\nserver log{server.log_tail()}") from e
    finally:
        server.stop()

    rows = inproc.template(workdir)
    for events in loads.rebuild_events:
        say(f"scaling: projection rebuild, {events:,} events")
        # A directory of its own: rebuild_rate fills a fresh database.
        where = workdir / f"rebuild-{events}"
        where.mkdir()
        try:
            rebuild = inproc.rebuild_rate(where, rows, events, runs=loads.rebuild_runs)
        finally:
            shutil.rmtree(where, ignore_errors=True)
        out.rebuild[rebuild.events] = rebuild.events / rebuild.rate  # the best run's
        out.rebuild_runs = len(rebuild.runs)
    for events in loads.replay_events:
        say(f"scaling: replay, a session of {events:,} events")
        session_id = f"scaling-replay-{events}"
        url = inproc.replay_store(workdir, rows, events, session_id)
        out.replay[events] = replay_seconds(url, session_id, loads.replay_runs)
    return out


def curves(s: Scaling) -> list[Curve]:
    """The measured curves, each with the unit a reader sizes a node in."""
    found: list[Curve] = []
    if len(s.handshakes) >= 2:
        found.append(Curve(
            "handshakes/s", "concurrent clients", "handshakes/s",
            [(c, rate) for c, (rate, _) in sorted(s.handshakes.items())],
            cost=False, per=1.0, unit="handshakes/s per extra client",
            note="a node's handshake capacity is where this curve stops rising.",
        ))  # fmt: skip
        found.append(Curve(
            "p99 handshake time", "concurrent clients", "p99 ms",
            [(c, p99) for c, (_, p99) in sorted(s.handshakes.items())],
            cost=True, per=1000.0, unit="µs per extra client",
            note="each client more in flight adds about {slope} µs to the p99 handshake "
            "(past capacity, clients queue: time grows with clients over the rate).",
        ))  # fmt: skip
    if len(s.delivery) >= 2:
        found.append(Curve(
            "delivered events/s", "sessions, a socket each", "events/s",
            [(n, rate) for n, (rate, *_) in sorted(s.delivery.items())],
            cost=False, per=1.0, unit="events/s per extra session",
            note="the same events spread over more sessions; the slope is what each extra "
            "session with a live socket costs the delivered rate.",
        ))  # fmt: skip
    if len(s.rebuild) >= 2:
        best_of = f" (the best of {s.rebuild_runs} runs at each size)" if s.rebuild_runs > 1 else ""
        found.append(Curve(
            "projection rebuild", "recorded events", "seconds",
            sorted(s.rebuild.items()), cost=True, per=1e6, unit="s per million events",
            note="`sessiond projections rebuild` takes about {slope} s per million events "
            "in the log" + best_of + ".",
        ))  # fmt: skip
    if len(s.replay) >= 2:
        found.append(Curve(
            "replay", "events in the session", "seconds",
            # seconds per event, as ms (x1,000) per 1,000 events (x1,000)
            sorted(s.replay.items()), cost=True, per=1e6, unit="ms per 1,000 events",
            note="`sessiond replay` takes about {slope} ms per 1,000 events of the session, "
            "beyond the command's fixed start-up (the fit's intercept).",
        ))  # fmt: skip
    if len(s.memory) >= 2:
        found.append(Curve(
            "server RSS growth", "idle live sockets", "MB",
            sorted(s.memory.items()), cost=True, per=1e6, unit="bytes per socket",
            note="each idle live socket holds about {slope} bytes of the server's memory.",
        ))  # fmt: skip
    return found
