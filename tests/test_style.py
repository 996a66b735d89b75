"""The style gate runs with the tests: ruff (lint and format) and mypy
(strict on domain/), so `pytest` alone is the whole check."""

from __future__ import annotations

import ast
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent


def _run(*cmd: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, check=False)


def _tool(name: str) -> str:
    path = shutil.which(name, path=str(Path(sys.executable).parent)) or shutil.which(name)
    if path is None:
        pytest.fail(f"{name} is not installed: pip install -e '.[test]'")
    return path


def test_ruff_finds_nothing_to_lint() -> None:
    result = _run(_tool("ruff"), "check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_ruff_format_leaves_every_file_unchanged() -> None:
    result = _run(_tool("ruff"), "format", "--check", ".")
    assert result.returncode == 0, result.stdout + result.stderr


def test_mypy_passes_strict_on_domain_and_typed_on_the_rest() -> None:
    packages = ("domain", "service", "projections", "faults", "bench")
    result = _run(sys.executable, "-m", "mypy", *packages)
    assert result.returncode == 0, result.stdout + result.stderr


def test_domain_imports_no_io() -> None:
    """domain/ imports nothing that does I/O and calls no open()."""
    forbidden = {"aiohttp", "asyncio", "sqlite3", "psycopg", "socket", "urllib", "http", "service"}
    for path in (ROOT / "domain").glob("*.py"):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                roots = {alias.name.split(".")[0] for alias in node.names}
            elif isinstance(node, ast.ImportFrom):
                roots = {(node.module or "").split(".")[0]}
            else:
                roots = set()
            assert not roots & forbidden, f"{path.name} imports {roots & forbidden}"
            if isinstance(node, ast.Call) and isinstance(node.func, ast.Name):
                assert node.func.id != "open", f"{path.name} calls open()"
