"""The browser client (clients/js/, an npm package) with the rest of the suite:
its own unit tests under Node's test runner."""

from __future__ import annotations

import subprocess

from tests.nodejs import JS_PACKAGE, node_command


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
