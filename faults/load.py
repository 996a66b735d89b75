"""Honest load with a ledger, hostile load, and the check of what was kept.

Honest writers post messages with their own ``message_id`` (an idempotency
key), one after another, and write down every one the server acknowledged
(2xx) with its position. While the server is down or refuses for now (503,
429, a refused connection, a connection cut mid-request) they retry the same
message, as a careful client does. Afterwards the session's history is read
back: every acknowledged message must be there exactly once, at the position
acknowledged, in each writer's order.
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import jwt

SECRET = "faults-secret-0123456789-0123456789-abcdef"


def token(user: str, *roles: str, ttl: int = 3600) -> str:
    now = int(time.time())
    claims = {"sub": user, "iat": now, "exp": now + ttl, "roles": list(roles) or ["user"]}
    return jwt.encode(claims, SECRET, algorithm="HS256")


@dataclass
class Ledger:
    """What honest clients were told, and what the server answered."""

    acknowledged: dict[str, int] = field(default_factory=dict)  # message_id -> position
    order: dict[str, list[str]] = field(default_factory=dict)  # writer -> its ids, in order
    statuses: Counter[int] = field(default_factory=Counter)
    cut: int = 0  # requests that got no answer (the server died, the socket was cut)
    bad_inputs: int = 0  # hostile requests and frames sent

    @property
    def server_errors(self) -> int:
        """Answers of 500 and the like: never allowed. 503 means "the store
        is down, try again" and is counted apart."""
        return sum(n for status, n in self.statuses.items() if status >= 500 and status != 503)


@dataclass
class Verdict:
    acknowledged: int
    lost: int
    repeated: int
    moved: int
    out_of_order: int


async def writer(
    base: str, session_id: str, name: str, ledger: Ledger, stop: asyncio.Event
) -> None:
    """Post messages until ``stop``; each acknowledged one goes in the ledger."""
    headers = {"Authorization": f"Bearer {token('alice')}"}
    ids = ledger.order.setdefault(name, [])
    timeout = aiohttp.ClientTimeout(total=15)
    async with aiohttp.ClientSession(timeout=timeout) as http:
        n = 0
        while not stop.is_set():
            message_id = f"{name}-{n}"
            body = {"role": "user", "content": f"{name} says {n}", "message_id": message_id}
            try:
                async with http.post(
                    f"{base}/v1/sessions/{session_id}/messages", json=body, headers=headers
                ) as r:
                    ledger.statuses[r.status] += 1
                    if r.status in (200, 201):
                        ledger.acknowledged[message_id] = int((await r.json())["position"])
                        ids.append(message_id)
                        n += 1
                        continue
                    pause = float(r.headers.get("Retry-After", "0.2") or 0.2)
            except (TimeoutError, aiohttp.ClientError, ConnectionError):
                ledger.cut += 1
                pause = 0.1
            # Refused for now, or no answer: the same message again, later.
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), min(pause, 1.0))


async def run_writers(
    base: str, session_id: str, writers: int, ledger: Ledger, stop: asyncio.Event
) -> None:
    await asyncio.gather(*(writer(base, session_id, f"w{i}", ledger, stop) for i in range(writers)))


async def create_session(base: str, session_id: str, patience: float = 30.0) -> None:
    headers = {"Authorization": f"Bearer {token('alice')}"}
    deadline = time.monotonic() + patience
    async with aiohttp.ClientSession() as http:
        while True:
            try:
                async with http.post(
                    f"{base}/v1/sessions", json={"session_id": session_id}, headers=headers
                ) as r:
                    if r.status in (200, 201):
                        return
            except aiohttp.ClientError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"could not create {session_id} on {base}")
            await asyncio.sleep(0.2)


async def history(base: str, session_id: str, patience: float = 60.0) -> list[dict[str, Any]]:
    """The session's whole history, read as an auditor (retrying while the
    server comes back)."""
    headers = {"Authorization": f"Bearer {token('auditor-1', 'auditor')}"}
    events: list[dict[str, Any]] = []
    deadline = time.monotonic() + patience
    async with aiohttp.ClientSession() as http:
        after = 0
        while True:
            url = f"{base}/v1/sessions/{session_id}/events?after={after}&limit=1000"
            try:
                async with http.get(url, headers=headers) as r:
                    if r.status != 200:
                        raise aiohttp.ClientError(f"{r.status}: {await r.text()}")
                    page = (await r.json())["events"]
            except aiohttp.ClientError:
                if time.monotonic() > deadline:
                    raise
                await asyncio.sleep(0.3)
                continue
            if not page:
                return events
            events.extend(page)
            after = page[-1]["position"]


def verify(ledger: Ledger, events: list[dict[str, Any]]) -> Verdict:
    """Every acknowledged message exactly once, where it was acknowledged,
    each writer's in its order; positions dense."""
    positions = [e["position"] for e in events]
    assert positions == list(range(1, len(positions) + 1)), "positions are not dense"
    found: dict[str, list[int]] = {}
    for event in events:
        if event["type"] == "MessageRecorded":
            found.setdefault(event["data"]["message_id"], []).append(event["position"])
    lost = sum(1 for m in ledger.acknowledged if m not in found)
    repeated = sum(1 for where in found.values() if len(where) > 1)
    moved = sum(1 for m, p in ledger.acknowledged.items() if m in found and found[m][0] != p)
    out_of_order = 0
    for ids in ledger.order.values():
        seen = [found[m][0] for m in ids if m in found]
        out_of_order += sum(1 for a, b in itertools.pairwise(seen) if b <= a)
    return Verdict(len(ledger.acknowledged), lost, repeated, moved, out_of_order)
