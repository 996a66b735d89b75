"""Native thread names, so a thread's CPU can be read by name from outside.

CPython 3.11 names its threads for Python only; the kernel keeps calling every
thread of the process by the program's name. Giving the native thread its
Python name too (Linux: ``prctl(PR_SET_NAME)``, which keeps 15 bytes, so the
service's long-lived threads have names that fit) makes ``top -H``,
``/proc/PID/task/TID/comm`` and bench/ tell the writer and the projector from
the event loop.
"""

from __future__ import annotations

import ctypes
import sys
import threading

PR_SET_NAME = 15


def name_native_thread(name: str | None = None) -> None:
    """Name the calling thread for the kernel (by default, as Python names
    it); best effort, Linux only."""
    if not sys.platform.startswith("linux"):
        return
    if name is None:
        name = threading.current_thread().name
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl here: the thread keeps the program's name
