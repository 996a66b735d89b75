"""The benchmark command still runs end to end (quick mode: tiny loads).

No timing is asserted here; the figures are for docs/benchmarks.md. Without
the bench extra (python-socketio, matplotlib) it measures sessiond and the
bare server only, which is what this proves still works.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_benchmark_runs_and_writes_its_table(tmp_path: Path) -> None:
    out = tmp_path / "benchmarks.md"
    result = subprocess.run(
        [sys.executable, "-m", "bench", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    report = out.read_text()
    for figure in ("handshakes/s", "events/s delivered", "events appended/s", "rebuild", "replay"):
        assert figure in report
    assert "(0 lost)" in report and " lost)" in report
    assert "lost)" not in report.replace("(0 lost)", ""), "an acknowledged event was lost"
