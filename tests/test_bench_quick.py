"""The benchmark command still runs end to end (``python -m bench --quick``).

No timing is asserted here: the figures are for docs/benchmarks.md. What is
asserted is that the run completes, writes its table, and that no
acknowledged event went missing on the way to the socket. It needs the bench
extra (python-socketio, the peer it measures against), so without it the
test is skipped and the main test command needs nothing more.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    pytest.importorskip("socketio", reason="the bench extra: pip install -e '.[bench]'")
    out = tmp_path / "b.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=900,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    report = out.read_text()
    assert "| figure | load | measured | baseline | ratio | server CPU |" in report
    for figure in (
        "full-lifecycle handshakes/s",
        "full-lifecycle handshakes/s, the durable floor",
        "progress events/s delivered to one socket, durable floor",
        "progress events/s delivered to one socket",
        "events appended/s",
        "projection rebuild events/s",
        "memory per idle live socket",
        "cross-node delivery latency",
        "service replay",
    ):
        assert figure in report, figure
    assert "(0 lost, 0 repeated)" in report
    # Where each server's CPU goes, by thread: sessiond's writer and projector
    # are named natively (service/runtime/osthread.py) and counted apart.
    by_thread = next(line for line in report.splitlines() if "per handshake by thread" in line)
    assert "sessiond: event loop" in by_thread and "sessiond-writer" in by_thread
    assert "durable floor: " in by_thread and "floor-writer" in by_thread
    assert "OUT OF ORDER" not in report
    # How cost grows: every curve, its shape computed from its points, its plot.
    scaling = report[report.index("## How cost grows") :]
    for curve in (
        "| handshakes/s |",
        "| p99 handshake time |",
        "| delivered events/s |",
        "| projection rebuild |",
        "| replay |",
        "| server RSS growth |",
    ):
        assert curve in scaling, curve
    assert "Bends for the worse: " in scaling
    assert (tmp_path / "b-scaling.png").stat().st_size > 0
