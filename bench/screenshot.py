"""docs/dashboard.png: the dashboard on a session whose tasks are running.

    python -m bench.screenshot [--out docs/dashboard.png] [--url URL --secret KEY]

Starts ``sessiond serve`` on a throwaway store (or uses the server at --url,
whose signing key is --secret), records a session as a product would (a tab
that was superseded by a reload, the live tab, a few messages, three tasks
part way through), opens the dashboard in headless Chromium (bench/chromium.py)
signed in as the session's owner, waits until its timeline is live, and saves
the page as a PNG.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import sys
import tempfile
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp

from bench.chromium import chromium_path, launch, playwright
from bench.procs import ROOT, SECRET, Server
from service.application.auth import TokenSigner

SESSION = "session-1735095123-abc123"
OWNER = "alice"
TASKS = [  # task ID, name, total, done at each of four reports
    ("thumbs-1", "thumbnails", 48, [12, 24, 36, 48]),
    ("export-1", "export to parquet", 100, [16, 32, 48, 64]),
    ("index-1", "search index", 400, [57, 115, 172, 230]),
]


@contextlib.asynccontextmanager
async def server(url: str | None, secret: str | None) -> AsyncIterator[tuple[str, str]]:
    """The base URL and signing key of a server: the given one, or a fresh process."""
    if url:
        if not secret:
            raise SystemExit("--url needs --secret, the key that server signs tokens with")
        yield url.rstrip("/"), secret
        return
    with tempfile.TemporaryDirectory() as folder:
        store = f"sqlite:///{Path(folder) / 'sessiond.db'}"
        serve = Server(
            "sessiond",
            [sys.executable, "-m", "service", "serve", "--store", store],
            env={"SESSIOND_NODE": "node-a"},
            log=Path(folder) / "serve.log",
        )
        await asyncio.to_thread(serve.start)
        try:
            yield serve.url, SECRET
        finally:
            await asyncio.to_thread(serve.stop)


async def post(http: aiohttp.ClientSession, url: str, token: str, body: dict[str, Any]) -> None:
    async with http.post(url, json=body, headers={"Authorization": f"Bearer {token}"}) as r:
        if r.status >= 300:
            raise SystemExit(f"POST {url}: {r.status} {await r.text()}")


async def live_socket(
    http: aiohttp.ClientSession, base: str, connection_id: str, token: str
) -> aiohttp.ClientWebSocketResponse:
    ws = await http.ws_connect(f"{base}/v1/ws?session_id={SESSION}&connection_id={connection_id}")
    await ws.receive_json()  # welcome
    await ws.send_json({"type": "auth", "token": token})
    while (await ws.receive_json()).get("state") != "PROCESSING_READY":
        pass
    return ws


async def record(http: aiohttp.ClientSession, base: str, signer: TokenSigner) -> Any:
    """The session as the picture shows it; the live tab's socket, to keep open."""
    user = signer.mint(OWNER, ["user"])
    service = signer.mint("worker-7", ["service"])
    session = f"{base}/v1/sessions/{SESSION}"

    async def say(role: str, content: str) -> None:
        await post(http, f"{session}/messages", user, {"role": role, "content": content})

    metadata = {"title": "Quarterly export"}
    await post(http, f"{base}/v1/sessions", user, {"session_id": SESSION, "metadata": metadata})
    old_tab = await live_socket(http, base, "tab-2b91", user)
    await say("user", "Export last quarter's orders and rebuild the search index.")
    tab = await live_socket(http, base, "tab-7f3a", user)  # the reload: tab-2b91 gets 4409
    await old_tab.close()
    await say("assistant", "Started: thumbnails, the parquet export and the index.")
    for task_id, name, total, _ in TASKS:
        await post(
            http, f"{session}/tasks", service, {"task_id": task_id, "name": name, "total": total}
        )
    for step in range(4):
        for task_id, _, _, reports in TASKS:
            body: dict[str, Any] = {"done": reports[step]}
            if task_id == "export-1":
                body["note"] = f"rows 1 to {reports[step] * 1000}"
            await post(http, f"{session}/tasks/{task_id}/progress", service, body)
    await post(http, f"{session}/tasks/thumbs-1/complete", service, {"result": {"images": 48}})
    await say("user", "Thanks, ping me when the export is done.")
    return tab


async def shoot(base: str, token: str, out: Path) -> None:
    async with playwright() as driver:
        with tempfile.TemporaryDirectory() as profile:
            from playwright.async_api import TimeoutError as PlaywrightTimeout

            context = await launch(driver, Path(profile), chromium_path())
            page = context.pages[0] if context.pages else await context.new_page()
            await page.goto(f"{base}/ui/")
            await page.fill("#token", token)
            await page.click("button[type=submit]")
            await page.wait_for_selector("#sessions tbody tr")
            await page.goto(f"{base}/ui/#/sessions/{SESSION}")
            try:
                await page.wait_for_selector(".stream-live", timeout=20_000)
            except PlaywrightTimeout:
                raise SystemExit(
                    "the session page's timeline did not go live: does this server have "
                    "GET /v1/sessions/{id}/stream?"
                ) from None
            await page.wait_for_selector("[data-connection-id='tab-7f3a'] .state-processing_ready")
            await page.wait_for_selector("[data-connection-id='tab-2b91'] .state-closed")
            out.parent.mkdir(parents=True, exist_ok=True)
            await page.screenshot(path=str(out))
            await context.close()


async def main(args: argparse.Namespace) -> None:
    async with server(args.url, args.secret) as (base, key), aiohttp.ClientSession() as http:
        signer = TokenSigner(key)
        tab = await record(http, base, signer)
        try:
            await shoot(base, signer.mint(OWNER, ["user"]), args.out)
        finally:
            await tab.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=Path, default=ROOT / "docs" / "dashboard.png")
    parser.add_argument("--url", help="a running sessiond to record on (default: start one)")
    parser.add_argument("--secret", help="the signing key of the server at --url")
    asyncio.run(main(parser.parse_args()))
