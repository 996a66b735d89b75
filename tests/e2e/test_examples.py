"""examples/worker.py against a real server: the progress it reports is the
session's history, step by step, and a refusal stops it with the server's words."""

from __future__ import annotations

import asyncio
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from tests.conftest import Api
from tests.e2e.wsclient import GUARD, all_events

Serve = Callable[..., Any]
WORKER = Path(__file__).resolve().parents[2] / "examples" / "worker.py"


async def run_worker(api: Api, token: str, *args: str) -> tuple[int, str, str]:
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        str(WORKER),
        "--url",
        api.base_url,
        *args,
        env={**os.environ, "SESSIOND_TOKEN": token},
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), GUARD)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_the_worker_example_reports_every_step_of_its_task(
    serve: Serve, sqlite_url: str
) -> None:
    api: Api = await serve(sqlite_url)
    status, body = await api.call("POST", "/v1/sessions", json={"session_id": "s-worker"})
    assert status == 201, body
    service = api.signer.mint("worker-1", ["service"])

    code, out, err = await run_worker(
        api, service, "--session", "s-worker", "--task", "export", "--steps", "5", "--delay", "0"
    )
    assert code == 0, err
    events = await all_events(api.http, api.base_url, "s-worker")
    assert out.strip() == f"worker: task export completed at position {events[-1]['position']}"
    tasks = [(e["type"], e["data"].get("done"), e["data"].get("note")) for e in events[1:]]
    assert tasks == [
        ("TaskStarted", None, None),
        *[("TaskProgressed", n, f"step {n} of 5") for n in range(1, 6)],
        ("TaskCompleted", None, None),
    ]
    status, view = await api.call("GET", "/v1/sessions/s-worker")
    assert view["tasks"][0] | {"result": None} == {
        "task_id": "export",
        "name": "job",
        "state": "COMPLETED",
        "done": 5,
        "total": 5,
        "note": "step 5 of 5",
        "result": None,
        "error": None,
    }

    # The same task again: it is finished, and the worker says so and stops.
    code, out, err = await run_worker(api, service, "--session", "s-worker", "--task", "export")
    assert code == 1
    assert "409 task_finished" in err
    code, out, err = await run_worker(api, service, "--session", "s-nothing")
    assert code == 1
    assert "404 session_not_found" in err
