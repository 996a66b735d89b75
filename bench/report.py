"""The results table (terminal and Markdown), the machine, the plot."""

from __future__ import annotations

import os
import platform
import time
from dataclasses import dataclass
from pathlib import Path

from service.runtime import eventloop
from service.runtime.settings import Settings

# Hand-written notes below this line in the output file survive a new run.
NOTES_MARKER = "<!-- notes: kept by python -m bench -->"
REPRODUCE = "pip install -e '.[bench]' && python -m bench --out docs/benchmarks.md"


@dataclass
class Row:
    figure: str
    load: str
    value: str
    baseline: str = ""
    ratio: str = ""
    cpu: str = ""
    goal: str = ""


COLUMNS = ("figure", "load", "measured", "baseline", "ratio", "server CPU", "goal")


def table(rows: list[Row]) -> str:
    lines = [
        "| " + " | ".join(COLUMNS) + " |",
        "|" + " --- |" * len(COLUMNS),
    ]
    for r in rows:
        cells = (r.figure, r.load, r.value, r.baseline, r.ratio, r.cpu, r.goal)
        lines.append("| " + " | ".join(c.replace("|", "/") for c in cells) + " |")
    return "\n".join(lines)


def verdict(ok: bool, goal: str, comparable: bool = True) -> str:
    """The goal and whether this run meets it; a goal stated for a bigger load
    than this run's is not judged."""
    if not comparable:
        return f"{goal}: not judged at this load"
    return f"{goal}: {'met' if ok else 'NOT met'}"


def server_loop() -> str:
    """The event loop the servers run on: sessiond's choice in this environment."""
    return eventloop.chosen(Settings.from_env().event_loop)


def machine() -> str:
    model = "unknown CPU"
    for line in Path("/proc/cpuinfo").read_text().splitlines():
        if line.startswith("model name"):
            model = line.split(":", 1)[1].strip()
            break
    return (
        f"{model}, {os.cpu_count()} cores, Python {platform.python_version()} "
        f"({platform.python_implementation()}), {platform.system()} {platform.release()}"
    )


def plot(png: Path, curves: dict[str, list[tuple[int, float, float]]]) -> str:
    """Handshakes/s and median handshake time against concurrent clients; the
    Markdown that shows it, or a note saying why there is none."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return "(no plot: install the bench extra, `pip install -e '.[bench]'`)"
    fig, (rate_ax, time_ax) = plt.subplots(1, 2, figsize=(10, 4))
    for name, points in curves.items():
        clients = [c for c, _, _ in points]
        rate_ax.plot(clients, [r for _, r, _ in points], marker="o", label=name)
        time_ax.plot(clients, [p for _, _, p in points], marker="o", label=name)
    rate_ax.set(
        xlabel="concurrent clients",
        ylabel="full-lifecycle handshakes/s",
        title="Throughput against load",
    )
    time_ax.set(
        xlabel="concurrent clients",
        ylabel="median handshake time (ms)",
        title="Latency against load",
    )
    for ax in (rate_ax, time_ax):
        ax.set_ylim(bottom=0)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.tight_layout()
    png.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(png, dpi=100)
    plt.close(fig)
    return f"![handshakes/s and handshake time against concurrent clients]({png.name})"


SCALING_HEADING = "## How cost grows"


def write(out: Path, rows: list[Row], curves: dict[str, list[tuple[int, float, float]]], *,
          quick: bool, notes: list[str], scaling: str = "",
          command: str = REPRODUCE) -> None:  # fmt: skip
    """``out`` (Markdown) and the plot beside it (same name, .png); the
    "How cost grows" section (``scaling``, Markdown with its own plot) after
    the table. Without rows (``--only scaling``) only that section of an
    existing report is replaced, saying when and how it was measured."""
    out.parent.mkdir(parents=True, exist_ok=True)
    previous = out.read_text() if out.exists() else ""
    kept = previous[previous.index(NOTES_MARKER) :] if NOTES_MARKER in previous else ""
    mode = (
        "quick mode (tiny loads: proves the bench runs; not figures to quote)"
        if quick
        else "full mode"
    )
    measured = f"Measured {time.strftime('%Y-%m-%d')} in {mode} on {machine()}."
    if not rows and previous:
        generated = previous[: len(previous) - len(kept)].rstrip("\n")
        if SCALING_HEADING in generated:
            generated = generated[: generated.index(SCALING_HEADING)].rstrip("\n")
        heading, _, body = scaling.partition("\n")
        section = f"{heading}\n\n{measured} Reproduce: `{command}`\n{body}"
        out.write_text(f"{generated}\n\n{section}" + (f"\n{kept}" if kept else ""))
        return
    text = f"# Benchmarks\n\n{measured}\n\nReproduce: `{command}`\n\n"
    if rows:
        picture = plot(out.with_suffix(".png"), curves)
        text += (
            "Every server runs in its own process; the load generator (`bench/load.py`) runs "
            "in another, on the same cores, which is why the server CPU per operation is shown "
            "beside each rate. Every server, sessiond and its peers alike, runs on the "
            f"{server_loop()} event loop, sessiond's choice in this environment (ADR 0045). "
            "The goals are the project's, stated for the full loads.\n\n"
            f"{table(rows)}\n\n" + "".join(f"- {n}\n" for n in notes) + f"\n{picture}\n"
        )
    if scaling:
        text += ("\n" if rows else "") + scaling
    if kept:
        text += "\n" + kept
    out.write_text(text)
