"""Past states of a session (``GET /v1/sessions/{id}/state?at=N``): each is a
fold of the session's events up to N, as long as the session's history is (a
second for a few tens of thousands of events). They run on threads of their
own, one fold per user at a time, so that no caller's folds hold the threads
every other read runs on (views, pages of events, the node's heartbeat): a
user asking for many at once waits for their own, nobody else does."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator
from concurrent.futures import ThreadPoolExecutor

# Threads folding at once on one node; each user has at most one of them.
FOLD_THREADS = 2


class Folds:
    def __init__(self, threads: int = FOLD_THREADS) -> None:
        self.executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="sessiond-fold")
        # Per user: the lock that gives turns, and how many hold or await it
        # (the entry goes when the last one leaves, so users come and go).
        self._turns: dict[str, tuple[asyncio.Lock, int]] = {}

    @contextlib.asynccontextmanager
    async def turn(self, user_id: str) -> AsyncIterator[None]:
        """Wait until none of ``user_id``'s other folds is running."""
        lock, waiting = self._turns.get(user_id, (None, 0))
        if lock is None:
            lock = asyncio.Lock()
        self._turns[user_id] = (lock, waiting + 1)
        try:
            async with lock:
                yield
        finally:
            _, waiting = self._turns[user_id]
            if waiting > 1:
                self._turns[user_id] = (lock, waiting - 1)
            else:
                del self._turns[user_id]

    def shutdown(self) -> None:
        self.executor.shutdown(wait=True)
