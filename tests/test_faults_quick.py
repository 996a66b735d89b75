"""The fault suite runs in its quick mode (``python -m faults --quick``).

What is asserted is correctness, not speed: under every fault injected
(kill -9, PostgreSQL stopped, a full disk, a read-only store, hostile
clients), nothing acknowledged was lost, repeated, moved or reordered, and
nothing answered 500. A fault this machine cannot inject (no PostgreSQL
binaries, no permission to mount a tmpfs) is reported as skipped in the table.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_the_quick_fault_suite_loses_nothing_acknowledged_and_answers_no_500(
    tmp_path: Path,
) -> None:
    out = tmp_path / "reliability.md"
    result = subprocess.run(
        [sys.executable, "-m", "faults", "--quick", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=600,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-4000:]
    rows = [line for line in out.read_text().splitlines() if line.startswith("| ")][2:]
    assert len(rows) == 5, rows
    for line in rows:
        cells = [c.strip() for c in line.strip("|").split("|")]
        if cells[1].startswith("skipped"):
            continue
        lost, repeated, moved, out_of_order, errors = cells[5:10]
        assert (lost, repeated, moved, out_of_order, errors) == ("0", "0", "0", "0", "0"), line
        assert int(cells[4].replace(",", "")) > 0, f"nothing was acknowledged: {line}"
