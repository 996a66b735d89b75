"""A node that drains: `sessiond serve` as a real process, stopped with
SIGTERM (drain, then close) or SIGINT (close at once), with real sockets."""

from __future__ import annotations

import asyncio
import base64
import os
import signal
from collections.abc import Callable
from typing import Any

import aiohttp

from tests.conftest import Api, ServerProcess
from tests.e2e.wsclient import (
    AUDITOR,
    SIGNER,
    WsClient,
    bearer,
    closed_record,
    eventually,
    open_live,
)

StartServer = Callable[..., ServerProcess]
# Long enough never to end on its own while a test looks at the drain; the
# test ends it with a second signal.
LONG_DRAIN = "600"


def upgrade_headers(**extra: str) -> dict[str, str]:
    return {
        "Connection": "Upgrade",
        "Upgrade": "websocket",
        "Sec-WebSocket-Version": "13",
        "Sec-WebSocket-Key": base64.b64encode(os.urandom(16)).decode(),
        **extra,
    }


async def status_of(http: aiohttp.ClientSession, url: str) -> int:
    async with http.get(url) as r:
        return r.status


async def until_draining(http: aiohttp.ClientSession, base_url: str) -> None:
    async def draining() -> bool:
        return await status_of(http, base_url + "/readyz") == 503

    await eventually(draining, "/readyz to answer 503")


async def closes_after_server(sockets: list[WsClient]) -> list[asyncio.Task[int | None]]:
    """Read every socket from now on, so each answers the server's close frame."""
    return [asyncio.create_task(s.until_closed(within=60)) for s in sockets]


async def assert_recorded_closed_1001(
    start: StartServer, store_url: str, connection_ids: list[str], *, never: str | None = None
) -> None:
    """On a new server over the same store: each connection recorded CLOSED
    with 1001, and ``never`` not recorded at all."""
    restarted = start(store_url)
    async with aiohttp.ClientSession() as http:
        api = Api(restarted.base_url, http, SIGNER)
        for cid in connection_ids:
            closed = await closed_record(api, cid)
            assert closed["data"]["details"] == {"code": 1001, "reason": "server_shutdown"}, cid
        if never is not None:
            status, body = await api.call("GET", f"/v1/connections/{never}", **AUDITOR)
            assert status == 404, body


async def test_a_draining_node_is_not_ready_refuses_upgrades_and_still_serves_its_sockets(
    sqlite_url: str, server_process: StartServer
) -> None:
    server = server_process(sqlite_url, SESSIOND_DRAIN_SECONDS=LONG_DRAIN)
    assert server.proc is not None
    async with aiohttp.ClientSession() as http:
        api = Api(server.base_url, http, SIGNER)
        live_a = await open_live(api, "s-drain-a", connection_id="drain-live-a")
        live_b = await open_live(api, "s-drain-b", connection_id="drain-live-b")
        assert await status_of(http, server.base_url + "/readyz") == 200

        server.proc.send_signal(signal.SIGTERM)
        await until_draining(http, server.base_url)

        async with http.get(server.base_url + "/readyz") as r:
            assert r.status == 503 and "Retry-After" in r.headers
            body = await r.json()
            assert body["error"]["code"] == "unavailable", body
            assert "draining" in body["error"]["message"], body
        assert await status_of(http, server.base_url + "/healthz") == 503
        async with http.get(server.base_url + "/livez") as r:
            assert r.status == 200, await r.text()

        # A new upgrade is refused before anything is recorded, in the error shape.
        async with http.get(
            api.ws_url("s-drain-new", connection_id="drain-refused"),
            headers=upgrade_headers(**bearer()),
        ) as r:
            assert r.status == 503
            assert int(r.headers["Retry-After"]) >= 1
            body = await r.json()
            assert body["error"]["code"] == "unavailable", body
            assert "draining" in body["error"]["message"], body

        # HTTP writes still work, and the open sockets still get their events,
        # whether the write came over HTTP or from a socket.
        status, answer = await api.call(
            "POST", "/v1/sessions/s-drain-a/messages", json={"role": "user", "content": "during"}
        )
        assert status == 201, answer
        event = await live_a.until_event(answer["position"])
        assert event["data"]["content"] == "during"
        await live_b.send({"type": "message", "content": "from the socket", "ref": "r1"})
        event = await live_b.until(lambda f: f.get("type") == "event")
        assert event["event"]["data"]["content"] == "from the socket"
        assert server.proc.poll() is None, "the node stopped before its drain ended"

        # A second SIGTERM ends the drain there; the sockets are closed as before.
        closing = await closes_after_server([live_a, live_b])
        server.proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(server.proc.wait, 60)
        assert exit_code == 0, server.log_path.read_text() if server.log_path else ""
        assert await asyncio.gather(*closing) == [1001, 1001]
        for client in (live_a, live_b):
            last = client.frames[-1]
            assert (last["type"], last["state"], last["code"]) == ("state", "CLOSED", 1001)

    await assert_recorded_closed_1001(
        server_process, sqlite_url, ["drain-live-a", "drain-live-b"], never="drain-refused"
    )


async def test_clients_never_meet_a_refused_connection_while_readyz_says_200(
    sqlite_url: str, server_process: StartServer
) -> None:
    server = server_process(sqlite_url, SESSIOND_DRAIN_SECONDS="1.5")
    assert server.proc is not None
    # What a load balancer and a client see, in the order they saw it:
    # ("readyz" or "upgrade", the HTTP status, or "refused" for no listener).
    seen: list[tuple[str, int | str]] = []
    exited = asyncio.Event()

    # A new TCP connection for every request, as a prober's or a client's.
    fresh = aiohttp.TCPConnector(force_close=True)
    async with aiohttp.ClientSession() as http, aiohttp.ClientSession(connector=fresh) as poller:
        api = Api(server.base_url, http, SIGNER)
        live = await open_live(api, "s-poll-live", connection_id="poll-live")

        async def readyz() -> int | str:
            try:
                return await status_of(poller, server.base_url + "/readyz")
            except aiohttp.ClientConnectorError:
                return "refused"
            except aiohttp.ClientError as e:
                return type(e).__name__

        async def upgrade() -> int | str:
            try:
                ws = await poller.ws_connect(api.ws_url("s-poll"), headers=bearer("poller"))
            except aiohttp.WSServerHandshakeError as e:
                return e.status
            except aiohttp.ClientConnectorError:
                return "refused"
            except aiohttp.ClientError as e:
                return type(e).__name__
            await ws.close()
            return 101

        async def poll() -> None:
            while not (exited.is_set() and ("upgrade", "refused") in seen):
                seen.append(("readyz", await readyz()))
                seen.append(("upgrade", await upgrade()))
                await asyncio.sleep(0.01)

        async def upgraded() -> bool:
            return ("upgrade", 101) in seen

        polling = asyncio.create_task(poll())
        await eventually(upgraded, "the poller's first upgrade")
        closing = await closes_after_server([live])
        server.proc.send_signal(signal.SIGTERM)
        exit_code = await asyncio.to_thread(server.proc.wait, 60)
        exited.set()
        async with asyncio.timeout(30):
            await polling
        assert exit_code == 0, server.log_path.read_text() if server.log_path else ""
        assert await asyncio.gather(*closing) == [1001]

    first_503 = seen.index(("readyz", 503))
    # Whatever went wrong for a client (no listener, a dropped connection),
    # it went wrong only once the node had said it was not ready.
    failed = [i for i, (_, outcome) in enumerate(seen) if not isinstance(outcome, int)]
    assert failed and failed[0] > first_503, seen
    assert ("readyz", 200) in seen[:first_503], seen
    after_not_ready: set[Any] = {outcome for kind, outcome in seen[first_503:] if kind == "upgrade"}
    assert 503 in after_not_ready and after_not_ready <= {503, "refused"}, seen
    assert {outcome for _, outcome in seen if isinstance(outcome, int)} <= {200, 101, 503}, seen
    await assert_recorded_closed_1001(server_process, sqlite_url, ["poll-live"])


async def test_sigint_stops_at_once_without_a_drain(
    sqlite_url: str, server_process: StartServer
) -> None:
    server = server_process(sqlite_url, SESSIOND_DRAIN_SECONDS=LONG_DRAIN)
    assert server.proc is not None
    async with aiohttp.ClientSession() as http:
        live = await open_live(
            Api(server.base_url, http, SIGNER), "s-interrupt", connection_id="interrupt-live"
        )
        closing = await closes_after_server([live])
        server.proc.send_signal(signal.SIGINT)
        # Well within the drain it would have had on SIGTERM.
        exit_code = await asyncio.to_thread(server.proc.wait, 60)
        assert exit_code == 0, server.log_path.read_text() if server.log_path else ""
        assert await asyncio.gather(*closing) == [1001]
    await assert_recorded_closed_1001(server_process, sqlite_url, ["interrupt-live"])
