"""Property-based: bodies and frames drawn from the edge's schema, and
mutations of them, sent to a real ``sessiond serve`` process. Whatever is
sent: no 500, no traceback in the server's log, and nothing recorded for an
input that is refused."""

from __future__ import annotations

import asyncio
import http.client
import threading
from collections.abc import Iterator
from concurrent.futures import Future
from typing import Any

import aiohttp
import msgspec
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from service.application.auth import TokenSigner
from service.edge.schema import (
    CompleteTask,
    CreateSession,
    FailTask,
    MessageFrame,
    PostMessage,
    ReportProgress,
    StartTask,
)
from tests.conftest import TEST_SECRET, ServerProcess
from tests.schema_strategies import JUNK, encode, mutated, valid

EXAMPLES = settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)
TOKEN = TokenSigner(TEST_SECRET).mint("alice", ["user", "service"], ttl=3600)


class Target:
    """One server process, and plain HTTP to it."""

    def __init__(self, server: ServerProcess) -> None:
        self.server = server

    def request(self, method: str, path: str, body: bytes | None = None) -> tuple[int, Any]:
        conn = http.client.HTTPConnection("127.0.0.1", self.server.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {TOKEN}", "Content-Type": "application/json"}
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            raw = answer.read()
            return answer.status, orjson.loads(raw) if raw else None
        finally:
            conn.close()

    def head(self) -> int:
        """How many events the session holds: what a refused input must not change."""
        status, body = self.request("GET", "/v1/sessions/s-prop")
        assert status == 200, body
        return int(body["position"])


@pytest.fixture(scope="module")
def target(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Target]:
    folder = tmp_path_factory.mktemp("hostile")
    server = ServerProcess(
        f"sqlite:///{folder / 'hostile.db'}",
        SESSIOND_BAD_FRAMES_PER_MINUTE="1000000",
    )
    server.start(folder / "server.log")
    target = Target(server)
    assert target.request("POST", "/v1/sessions", b'{"session_id": "s-prop"}')[0] in (200, 201)
    started = b'{"task_id": "t-prop", "name": "progress target"}'
    assert target.request("POST", "/v1/sessions/s-prop/tasks", started)[0] in (200, 201)
    try:
        yield target
    finally:
        server.stop()
        log = (folder / "server.log").read_text()
        assert "Traceback" not in log, log[-4000:]
        assert " ERROR " not in log, log[-4000:]


ENDPOINTS: list[tuple[str, type[msgspec.Struct]]] = [
    ("/v1/sessions", CreateSession),
    ("/v1/sessions/s-prop/messages", PostMessage),
    ("/v1/sessions/s-prop/tasks", StartTask),
    ("/v1/sessions/s-prop/tasks/t-prop/progress", ReportProgress),
    ("/v1/sessions/s-prop/tasks/t-prop/complete", CompleteTask),
    ("/v1/sessions/s-prop/tasks/t-prop/fail", FailTask),
]


def check(target: Target, path: str, body: bytes) -> None:
    before = target.head()
    status, answer = target.request("POST", path, body)
    assert status != 500, (path, body[:300], answer)
    if status >= 400:
        assert set(answer) == {"error"} and set(answer["error"]) == {"code", "message"}, answer
        assert target.head() == before, f"a refused input was recorded: {body[:300]!r}"


@pytest.mark.parametrize(("path", "kind"), ENDPOINTS, ids=[k.__name__ for _, k in ENDPOINTS])
def test_valid_bodies_are_never_a_500(
    target: Target, path: str, kind: type[msgspec.Struct]
) -> None:
    @EXAMPLES
    @given(body=valid(kind))
    def run(body: dict[str, Any]) -> None:
        status, answer = target.request("POST", path, encode(body))
        assert status < 500, (path, body, answer)

    run()


@pytest.mark.parametrize(("path", "kind"), ENDPOINTS, ids=[k.__name__ for _, k in ENDPOINTS])
def test_mutated_bodies_are_refused_with_a_code_and_record_nothing(
    target: Target, path: str, kind: type[msgspec.Struct]
) -> None:
    @EXAMPLES
    @given(body=mutated(kind))
    def run(body: dict[str, Any]) -> None:
        check(target, path, encode(body))

    run()


@EXAMPLES
@given(body=JUNK, path=st.sampled_from([p for p, _ in ENDPOINTS]))
def test_junk_bodies_are_refused_and_record_nothing(target: Target, body: bytes, path: str) -> None:
    check(target, path, body)


class LiveSocket:
    """One live socket on ``s-prop``, driven from a loop on its own thread so
    that hypothesis's synchronous examples can send frames through it."""

    def __init__(self, target: Target) -> None:
        self.target = target
        self.loop = asyncio.new_event_loop()
        self.thread = threading.Thread(target=self.loop.run_forever, daemon=True)
        self.thread.start()
        self.call(self._open())

    def call(self, coro: Any) -> Any:
        future: Future[Any] = asyncio.run_coroutine_threadsafe(coro, self.loop)
        return future.result(30)

    async def _open(self) -> None:
        self.http = aiohttp.ClientSession()
        url = f"http://127.0.0.1:{self.target.server.port}/v1/ws?session_id=s-prop"
        self.ws = await self.http.ws_connect(url, headers={"Authorization": f"Bearer {TOKEN}"})
        while (await self.ws.receive_json()).get("state") != "PROCESSING_READY":
            pass

    async def _exchange(self, data: str | bytes) -> dict[str, Any]:
        """Send ``data`` then a probe; the answers up to the probe's."""
        if isinstance(data, bytes):
            await self.ws.send_bytes(data)
        else:
            await self.ws.send_str(data)
        await self.ws.send_str('{"type": "teleport", "ref": "probe"}')
        answers: dict[str, Any] = {"errors": []}
        while True:
            msg = await asyncio.wait_for(self.ws.receive(), 30)
            assert msg.type == aiohttp.WSMsgType.TEXT, (msg.type, msg.data, self.ws.close_code)
            frame = orjson.loads(msg.data)
            if frame["type"] == "error" and frame.get("ref") == "probe":
                return answers
            if frame["type"] == "error":
                answers["errors"].append(frame)

    def exchange(self, data: str | bytes) -> dict[str, Any]:
        result: dict[str, Any] = self.call(self._exchange(data))
        return result

    def close(self) -> None:
        async def shut() -> None:
            await self.ws.close()
            await self.http.close()

        self.call(shut())
        self.loop.call_soon_threadsafe(self.loop.stop)
        self.thread.join(10)
        self.loop.close()


@pytest.fixture(scope="module")
def live(target: Target) -> Iterator[LiveSocket]:
    socket = LiveSocket(target)
    yield socket
    socket.close()


def frame_of(body: dict[str, Any]) -> bytes:
    return encode({"type": "message", **body})


FRAMES = (
    valid(MessageFrame).map(frame_of)
    | mutated(MessageFrame).map(frame_of)
    | JUNK
    | st.sampled_from([b'{"type": "auth", "token": 5}', b'{"type": 7}', b'{"ref": 1}'])
)


@EXAMPLES
@given(data=FRAMES, as_text=st.booleans())
def test_frames_never_end_the_socket_and_a_refused_one_records_nothing(
    live: LiveSocket, target: Target, data: bytes, as_text: bool
) -> None:
    before = target.head()
    sent: str | bytes = data
    if as_text:
        try:
            sent = data.decode()
        except UnicodeDecodeError:
            sent = data  # not text: sent as a binary frame
    answers = live.exchange(sent)
    if answers["errors"]:
        assert all(e["code"] in {"bad_frame", "unknown_type"} for e in answers["errors"]), answers
        assert target.head() == before, f"a refused frame was recorded: {data[:300]!r}"
    else:
        # Recorded once, or nothing new for a message_id already recorded.
        assert target.head() - before in (0, 1), answers


def test_the_server_still_answers_after_every_hostile_input(target: Target) -> None:
    """Run last in this module; its server's log is read for tracebacks when
    the module's fixture ends."""
    assert target.request("GET", "/healthz")[0] == 200
    assert target.head() > 0
