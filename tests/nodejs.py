"""Node.js for the tests of the browser client (clients/js/): where it is,
and the flags it needs. A missing or old node fails those tests, saying so."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
JS_PACKAGE = ROOT / "clients" / "js"
JS_MODULE = JS_PACKAGE / "sessiond-client.js"
NODE_MAJOR = 20


def node_command() -> list[str]:
    """``node``, with the flag that gives Node 20 its global WebSocket when needed."""
    node = shutil.which("node")
    if node is None:
        pytest.fail(
            f"node is not installed: the browser client's tests need Node.js >= {NODE_MAJOR} "
            "on PATH (https://nodejs.org, or apt-get install nodejs)"
        )
    version = subprocess.run([node, "--version"], capture_output=True, text=True, check=True)
    found = re.match(r"v(\d+)", version.stdout)
    if found is None or int(found.group(1)) < NODE_MAJOR:
        pytest.fail(f"node {version.stdout.strip()} is too old: the client needs >= {NODE_MAJOR}")
    has_websocket = subprocess.run(
        [node, "-e", "process.exit(typeof WebSocket === 'function' ? 0 : 1)"], check=False
    )
    return [node] if has_websocket.returncode == 0 else [node, "--experimental-websocket"]
