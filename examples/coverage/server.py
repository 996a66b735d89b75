"""A coverage dashboard, the way the first incident in the architecture brief
wanted one: the page makes the session ID, connects, then asks its backend to
start the job; the job reports progress on that ID. With sessiond the order
stops mattering: progress recorded before the socket connects, or while it
reconnects, still reaches the page, once and in order (tick "start the job
first" to see it).

Two terminals, from the repository's root (the same directory, so `sessiond
token` finds the key `serve` made):

    SESSIOND_CORS_ORIGINS=http://127.0.0.1:8000 sessiond serve
    python examples/coverage/server.py

then open http://127.0.0.1:8000. This backend serves the page, mints the
page's token (`sessiond token --user coverage-user`, as a product's backend
would from its own sign-in) and runs the job: examples/worker.py with a
`service` token.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import sys
from pathlib import Path

from aiohttp import web

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent))
from worker import run  # noqa: E402  (examples/worker.py)

USER = "coverage-user"
FILES = [
    "domain/lifecycle.py",
    "domain/session.py",
    "domain/connection.py",
    "service/edge/protocol.py",
    "service/edge/ws.py",
    "service/edge/schema.py",
    "service/application/writer.py",
    "service/application/hub.py",
    "service/storage/sqlite.py",
    "service/storage/postgres.py",
    "projections/sessions.py",
    "projections/projector.py",
]
JOBS = web.AppKey("jobs", set)
OPTIONS = web.AppKey("options", argparse.Namespace)


async def mint(user: str, *roles: str) -> str:
    """A token from `sessiond token`, with the key `sessiond serve` uses."""
    command = [sys.executable, "-m", "service", "token", "--user", user, "--ttl", "900"]
    for role in roles:
        command += ["--role", role]
    proc = await asyncio.create_subprocess_exec(
        *command, stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE
    )
    out, err = await proc.communicate()
    if proc.returncode != 0:
        raise web.HTTPServiceUnavailable(text=f"sessiond token failed: {err.decode().strip()}")
    return out.decode().strip()


async def index(request: web.Request) -> web.FileResponse:
    return web.FileResponse(HERE / "index.html")


async def config(request: web.Request) -> web.Response:
    return web.json_response({"sessiond": request.app[OPTIONS].sessiond})


async def token(request: web.Request) -> web.Response:
    return web.Response(text=await mint(USER))


async def start_job(request: web.Request) -> web.Response:
    session_id = (await request.json())["session_id"]
    options = request.app[OPTIONS]
    service_token = await mint("coverage-worker", "service")
    rng = random.Random(session_id)

    def note(step: int) -> str:
        return f"{FILES[(step - 1) % len(FILES)]}: {rng.randint(62, 100)}% of lines"

    started = asyncio.Event()
    job = asyncio.create_task(
        run(
            options.sessiond,
            service_token,
            session_id,
            task_id="coverage",
            name="coverage",
            steps=len(FILES) * 2,
            delay=options.delay,
            note=note,
            started=started,
        )
    )
    request.app[JOBS].add(job)
    job.add_done_callback(request.app[JOBS].discard)
    # Answer once the task is recorded (or the job failed before that).
    waiter = asyncio.create_task(started.wait())
    await asyncio.wait([job, waiter], return_when=asyncio.FIRST_COMPLETED)
    waiter.cancel()
    if job.done() and job.exception() is not None:
        raise web.HTTPBadGateway(text=f"the job could not start: {job.exception()}")
    return web.json_response({"session_id": session_id, "task_id": "coverage"}, status=202)


def app(options: argparse.Namespace) -> web.Application:
    application = web.Application()
    application[OPTIONS] = options
    application[JOBS] = set()
    application.router.add_get("/", index)
    application.router.add_get("/api/config", config)
    application.router.add_post("/api/token", token)
    application.router.add_post("/api/jobs", start_job)
    application.router.add_static("/static/", HERE)
    return application


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description="The coverage dashboard example.")
    parser.add_argument("--port", type=int, default=8000)
    parser.add_argument(
        "--sessiond", default=os.environ.get("SESSIOND_URL", "http://127.0.0.1:8080")
    )
    parser.add_argument("--delay", type=float, default=0.4, help="seconds of work per step")
    options = parser.parse_args()
    web.run_app(app(options), host="127.0.0.1", port=options.port)
