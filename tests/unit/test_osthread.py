"""Native thread names (service/runtime/osthread.py)."""

from __future__ import annotations

import sys
import threading
from pathlib import Path

import pytest

from service.runtime.osthread import name_native_thread


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names threads on Linux")
def test_a_thread_named_natively_shows_its_name_to_the_kernel_cut_to_15_bytes() -> None:
    seen: list[str] = []

    def run(name: str) -> None:
        name_native_thread(name)
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    for name in ("sessiond-writer", "a-name-longer-than-fifteen-bytes"):
        thread = threading.Thread(target=run, args=(name,))
        thread.start()
        thread.join()
    assert seen == ["sessiond-writer", "a-name-longer-t"]


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="prctl names threads on Linux")
def test_by_default_the_native_name_is_the_python_name() -> None:
    seen: list[str] = []

    def run() -> None:
        name_native_thread()
        seen.append(Path(f"/proc/self/task/{threading.get_native_id()}/comm").read_text().strip())

    thread = threading.Thread(target=run, name="sessiond-writer")
    thread.start()
    thread.join()
    assert seen == ["sessiond-writer"]
