"""Native thread names, so a thread's CPU can be read by name from outside.

CPython 3.11 names its threads for Python only; the kernel keeps calling every
thread of the process by the program's name. Naming the native thread too
(Linux: ``prctl(PR_SET_NAME)``, up to 15 bytes) makes ``top -H``,
``/proc/PID/task/TID/comm`` and bench/ tell the writer and the projector from
the event loop.
"""

from __future__ import annotations

import ctypes
import sys

PR_SET_NAME = 15


def name_native_thread(name: str) -> None:
    """Name the calling thread for the kernel; best effort, Linux only."""
    if not sys.platform.startswith("linux"):
        return
    try:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.prctl(PR_SET_NAME, ctypes.c_char_p(name.encode()[:15]), 0, 0, 0)
    except (OSError, AttributeError):
        pass  # no prctl here: the thread keeps the program's name
