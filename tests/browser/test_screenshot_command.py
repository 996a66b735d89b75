"""``python -m bench.screenshot`` (the command that makes docs/dashboard.png)
runs end to end: a server, a session with tasks part way through, the
dashboard live on it in headless Chromium, a PNG."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

from tests.browser.conftest import ROOT, chromium_or_stop

PNG = b"\x89PNG\r\n\x1a\n"


def test_the_screenshot_command_writes_the_dashboard_as_a_png(tmp_path: Path) -> None:
    chromium_or_stop()
    out = tmp_path / "dashboard.png"
    result = subprocess.run(
        [sys.executable, "-m", "bench.screenshot", "--out", str(out)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-3000:] + result.stderr[-3000:]
    assert result.stdout.strip() == f"wrote {out}"
    assert out.read_bytes().startswith(PNG)
