"""A worker that reports a task's progress to sessiond, with plain aiohttp.

Run it against `sessiond serve` (same directory, so the same key), with a
`service` token (it may report on any session) or the session owner's:

    SESSIOND_TOKEN=$(sessiond token --user worker-1 --role service) \\
        python examples/worker.py --session session-1735095123-abc123 --steps 20

The session must exist (the page that wants the progress made it, or
`POST /v1/sessions`). The worker starts the task, reports each step, and
completes it. Every report is recorded in the
session's log, so a page that connects late, reloads or drops in the middle
still gets every step, once and in order. A report the server refuses stops
the worker with the server's words (a task that already finished: 409
task_finished; a session that does not exist: 404 session_not_found).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
from collections.abc import Callable
from typing import Any

import aiohttp


class Refused(Exception):
    """sessiond answered with an error (its code and message)."""


async def post(http: aiohttp.ClientSession, url: str, body: dict[str, Any]) -> Any:
    async with http.post(url, json=body) as r:
        answer = await r.json(content_type=None)
        if r.status >= 400:
            error = answer.get("error", {}) if isinstance(answer, dict) else {}
            raise Refused(f"POST {url}: {r.status} {error.get('code')}: {error.get('message')}")
        return answer


async def run(
    url: str,
    token: str,
    session_id: str,
    *,
    task_id: str = "job-1",
    name: str = "job",
    steps: int = 10,
    delay: float = 0.5,
    note: Callable[[int], str | None] = lambda step: None,
    started: asyncio.Event | None = None,
) -> int:
    """Start the task (then set ``started``), report ``steps`` steps ``delay``
    seconds apart, complete it; the position of the completion."""
    base = url.rstrip("/")
    headers = {"Authorization": f"Bearer {token}"}
    async with aiohttp.ClientSession(headers=headers) as http:
        session = f"{base}/v1/sessions/{session_id}"
        await post(http, f"{session}/tasks", {"task_id": task_id, "name": name, "total": steps})
        if started is not None:
            started.set()
        for step in range(1, steps + 1):
            await asyncio.sleep(delay)  # the work itself
            body: dict[str, Any] = {"done": step}
            if (text := note(step)) is not None:
                body["note"] = text
            await post(http, f"{session}/tasks/{task_id}/progress", body)
        done = await post(http, f"{session}/tasks/{task_id}/complete", {"result": {"steps": steps}})
        return int(done["position"])


def main() -> int:
    parser = argparse.ArgumentParser(description="Report a task's progress to sessiond.")
    parser.add_argument("--url", default="http://127.0.0.1:8080", help="sessiond's base URL")
    parser.add_argument("--session", required=True, help="the session to report on")
    parser.add_argument("--task", default="job-1", help="the task ID (default %(default)s)")
    parser.add_argument("--name", default="job", help="the task's name (default %(default)s)")
    parser.add_argument("--steps", type=int, default=10, help="steps to report")
    parser.add_argument("--delay", type=float, default=0.5, help="seconds of work per step")
    args = parser.parse_args()
    token = os.environ.get("SESSIOND_TOKEN")
    if not token:
        parser.error("set SESSIOND_TOKEN (e.g. $(sessiond token --user worker-1 --role service))")
    try:
        position = asyncio.run(
            run(
                args.url,
                token,
                args.session,
                task_id=args.task,
                name=args.name,
                steps=args.steps,
                delay=args.delay,
                note=lambda step: f"step {step} of {args.steps}",
            )
        )
    except (Refused, aiohttp.ClientError) as e:
        print(f"worker: {e}", file=sys.stderr)
        return 1
    print(f"worker: task {args.task} completed at position {position}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
