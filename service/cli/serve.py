"""How ``sessiond serve`` runs the app: on an event loop of its own, with
its own signal handling, so that a SIGTERM drains the node before it stops
(docs/adr/0033-drain-a-node-before-it-stops.md).

* SIGTERM: the node stops being ready (``/readyz`` and ``/healthz`` answer
  503, new upgrades are refused with 503) for ``drain_seconds`` while it
  still listens and serves everything else, its open sockets included; then
  it stops as before: every socket closed with 1001 and its CLOSED recorded.
* SIGINT (Ctrl-C in a terminal): it stops at once, with no drain.
* A SIGINT or a second SIGTERM during a drain ends the drain there.

aiohttp's ``run_app`` turns both signals into an immediate stop, which is
why this does not use it.
"""

from __future__ import annotations

import asyncio
import logging
import signal
from collections.abc import Callable

from aiohttp import web

from service.edge.app import drain
from service.edge.errors import answer_malformed_requests_in_the_contracts_shape
from service.runtime import eventloop
from service.runtime.settings import Settings

log = logging.getLogger("sessiond")

# Seconds an idle HTTP keep-alive connection is kept: run_app's default,
# which sessiond served with before it ran its own runner.
KEEPALIVE_TIMEOUT = 75.0


class Stop:
    """What the signals asked for: whether to stop, and whether to drain first."""

    def __init__(self) -> None:
        self.asked = asyncio.Event()
        self.now = asyncio.Event()  # stop without (more) draining
        self.drain = False

    def terminate(self) -> None:
        if self.asked.is_set():
            self.now.set()  # a second SIGTERM: no more waiting
            return
        self.drain = True
        self.asked.set()

    def interrupt(self) -> None:
        self.now.set()
        self.asked.set()


async def serve(app: web.Application, settings: Settings, announce: Callable[[], None]) -> None:
    """Serve ``app`` on the settings' host and port until a signal says stop."""
    loop = asyncio.get_running_loop()
    stop = Stop()
    # The handlers stay installed until the loop closes, so a signal during
    # the shutdown itself cannot cut the recording of the closes short.
    loop.add_signal_handler(signal.SIGTERM, stop.terminate)
    loop.add_signal_handler(signal.SIGINT, stop.interrupt)
    runner = web.AppRunner(
        app,
        access_log=None,
        shutdown_timeout=settings.shutdown_timeout,
        keepalive_timeout=KEEPALIVE_TIMEOUT,
    )
    await runner.setup()
    assert runner.server is not None
    answer_malformed_requests_in_the_contracts_shape(runner.server)
    try:
        await web.TCPSite(
            runner, settings.host, settings.port, backlog=settings.listen_backlog
        ).start()
        log.info(
            "serving",
            extra={"node": settings.node_id, "event_loop": eventloop.loop_name(loop)},
        )
        announce()
        await stop.asked.wait()
        if stop.drain and not stop.now.is_set():
            await drain(app, settings.drain_seconds, until=stop.now)
        log.info("stopping", extra={"node": settings.node_id})
    finally:
        await runner.cleanup()


def run(app: web.Application, settings: Settings, announce: Callable[[], None]) -> None:
    """Serve on the event loop the settings name (uvloop where installed)."""
    eventloop.run(lambda: serve(app, settings, announce), settings.event_loop)
