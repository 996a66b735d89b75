"""The browser client (clients/js/, an npm package) with the rest of the suite:
its own unit tests under Node's test runner, and the one file that both the
npm package and sessiond's wheel carry (GET /v1/client.js serves it)."""

from __future__ import annotations

import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

from service.edge.http.static import client_script, ui_files
from tests.nodejs import JS_MODULE, JS_PACKAGE, ROOT, node_command

# What a copy of the checkout leaves out: nothing a build reads.
UNPACKAGED = (
    ".git",
    ".venv",
    "build",
    "dist",
    "*.egg-info",
    "__pycache__",
    ".*_cache",
    "node_modules",
)
# Offline, from the setuptools of the test extra.
PIP_WHEEL = (
    sys.executable,
    "-m",
    "pip",
    "wheel",
    "--no-deps",
    "--no-build-isolation",
    "--no-index",
    "--quiet",
)


def test_the_browser_clients_node_tests_pass() -> None:
    tests = sorted(str(p.relative_to(JS_PACKAGE)) for p in (JS_PACKAGE / "test").glob("*.test.js"))
    assert tests, "no clients/js/test/*.test.js"
    result = subprocess.run(
        [*node_command(), "--test", *tests],
        cwd=JS_PACKAGE,
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout[-6000:] + result.stderr[-3000:]


def test_sessiond_serves_the_npm_packages_own_file() -> None:
    assert client_script().body == JS_MODULE.read_bytes()


def test_the_wheel_carries_the_npm_packages_file_itself(tmp_path: Path) -> None:
    """A wheel built from a copy of the checkout (as `pip install .` builds
    one) has the client's bytes, not the link that stands for them, and the
    dashboard's files."""
    source = tmp_path / "src"
    shutil.copytree(
        ROOT,
        source,
        symlinks=True,
        ignore=shutil.ignore_patterns(*UNPACKAGED),
    )
    result = subprocess.run(
        [*PIP_WHEEL, "--wheel-dir", str(tmp_path / "out"), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, result.stdout + result.stderr
    (wheel,) = (tmp_path / "out").glob("sessiond-*.whl")
    with zipfile.ZipFile(wheel) as archive:
        packed = archive.read("service/edge/static/sessiond-client.js")
        dashboard = {
            name.rsplit("/", 1)[1]: archive.read(name)
            for name in archive.namelist()
            if name.startswith("service/edge/ui/")
        }
    assert packed == JS_MODULE.read_bytes()
    # The dashboard's files (GET /ui/) travel with it, every one of them.
    assert dashboard == {name: asset.body for name, asset in ui_files().items()}
