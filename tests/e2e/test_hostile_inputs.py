"""Property-based: bodies and frames drawn from the edge's schema, and
mutations of them, sent to a real ``sessiond serve`` process. Whatever is
sent: no 500, no traceback in the server's log, and nothing recorded for an
input that is refused."""

from __future__ import annotations

import asyncio
import gzip
import http.client
import socket
import threading
import time
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
        assert LONG_TOKEN[:50] not in log, "an over-long header was repeated in the log"


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


# Requests aiohttp's parser refuses before the application sees them, and
# bodies that do not decode as their headers say: each answered in the
# contract's error shape with a status that fits, nothing recorded, and the
# over-long token never repeated in the answer or the log.
LONG_TOKEN = "Z" * 10_000
RAW_REFUSALS: list[tuple[str, bytes, int, str]] = [
    (
        "long-request-target",
        b"GET /v1/sessions?cursor=" + b"A" * 10_000 + b" HTTP/1.1\r\nHost: x\r\n\r\n",
        414,
        "too_large",
    ),
    (
        "long-header",
        b"GET /v1/sessions HTTP/1.1\r\nHost: x\r\n"
        + f"Authorization: Bearer {LONG_TOKEN}\r\n\r\n".encode(),
        431,
        "too_large",
    ),
    ("garbage-request-line", b"GARBAGE\r\n\r\n", 400, "bad_request"),
    (
        "negative-content-length",
        b"POST /v1/sessions HTTP/1.1\r\nHost: x\r\nContent-Length: -1\r\n\r\n",
        400,
        "bad_request",
    ),
    (
        "encoding-this-node-cannot-decode",
        b"POST /v1/sessions/s-prop/messages HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nContent-Encoding: br\r\nContent-Length: 2\r\n\r\n{}",
        415,
        "unsupported_media_type",
    ),
    (
        "malformed-chunk",
        b"POST /v1/sessions/s-prop/messages HTTP/1.1\r\nHost: x\r\n"
        b"Content-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n"
        b"zz\r\nabc\r\n0\r\n\r\n",
        400,
        "bad_request",
    ),
]


def raw_exchange(target: Target, request: bytes) -> tuple[int, dict[str, str], bytes]:
    """``request`` written as it is; the answer's status, headers and body
    (the server closes the connection after refusing)."""
    with socket.create_connection(("127.0.0.1", target.server.port), timeout=10) as s:
        s.sendall(request)
        received = b""
        while chunk := s.recv(65536):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = dict(line.lower().split(": ", 1) for line in lines[1:])
    return int(lines[0].split()[1]), headers, body


@pytest.mark.parametrize(
    ("request_bytes", "status", "code"),
    [(r, s, c) for _, r, s, c in RAW_REFUSALS],
    ids=[name for name, *_ in RAW_REFUSALS],
)
def test_requests_the_parser_refuses_get_the_contracts_error_shape(
    target: Target, request_bytes: bytes, status: int, code: str
) -> None:
    before = target.head()
    answered, headers, body = raw_exchange(target, request_bytes)
    assert (answered, headers.get("content-type")) == (status, "application/json"), body
    error = orjson.loads(body)["error"]
    assert set(error) == {"code", "message"} and error["code"] == code, error
    assert LONG_TOKEN[:50] not in error["message"]
    assert target.head() == before


@pytest.mark.parametrize(
    ("encoding", "body"),
    [("gzip", b'{"role": "user", "content": "not gzip"}'), ("deflate", b"not deflate")],
)
def test_a_body_that_does_not_decode_as_its_encoding_says_is_400(
    target: Target, encoding: str, body: bytes
) -> None:
    before = target.head()
    request = (
        f"POST /v1/sessions/s-prop/messages HTTP/1.1\r\nHost: x\r\n"
        f"Authorization: Bearer {TOKEN}\r\nContent-Type: application/json\r\n"
        f"Content-Encoding: {encoding}\r\nContent-Length: {len(body)}\r\n"
        "Connection: close\r\n\r\n"
    ).encode() + body
    status, headers, answer = raw_exchange(target, request)
    assert (status, headers.get("content-type")) == (400, "application/json"), answer
    assert orjson.loads(answer)["error"]["code"] == "invalid_body"
    # A body that does decode still records.
    good = b'{"role": "user", "content": "gzip"}'
    conn = http.client.HTTPConnection("127.0.0.1", target.server.port, timeout=30)
    try:
        conn.request(
            "POST",
            "/v1/sessions/s-prop/messages",
            body=gzip.compress(good),
            headers={
                "Authorization": f"Bearer {TOKEN}",
                "Content-Type": "application/json",
                "Content-Encoding": "gzip",
            },
        )
        assert conn.getresponse().status == 201
    finally:
        conn.close()
    assert target.head() == before + 1


def test_a_whole_float_count_is_refused_from_two_to_the_63(target: Target) -> None:
    """The float nearest INT64_MAX is 2**63: refused, where the largest float
    below it is recorded as the integer it is."""
    path = "/v1/sessions/s-prop/messages"
    check(target, path, b'{"role": "user", "content": "x", "tokens": 9.223372036854775807e18}')
    status, answer = target.request(
        "POST", path, b'{"role": "user", "content": "x", "tokens": 9.223372036854775807e18}'
    )
    assert (status, answer["error"]["code"]) == (400, "invalid_body"), answer
    below = 9223372036854774784  # the largest float under 2**63, as an integer
    status, answer = target.request(
        "POST", path, b'{"role": "user", "content": "x", "tokens": 9.2233720368547748e18}'
    )
    assert status == 201, answer
    status, events = target.request(
        "GET", f"/v1/sessions/s-prop/events?after={answer['position'] - 1}"
    )
    assert events["events"][0]["data"]["tokens"] == below


@pytest.mark.parametrize("subject", ["x\ud800y", "a\x00b"], ids=["lone-surrogate", "nul"])
def test_a_token_whose_subject_no_store_can_hold_is_401(target: Target, subject: str) -> None:
    """The subject becomes the owner of what it creates: a lone surrogate
    (which JSON's standard decoder lets through) or a NUL (which PostgreSQL's
    text columns refuse) is refused with the token, not by the store."""
    import jwt

    token = jwt.encode(
        {"sub": subject, "exp": int(time.time()) + 600}, TEST_SECRET, algorithm="HS256"
    )
    for method, path, body in (
        ("POST", "/v1/sessions", b'{"session_id": "s-owner-check"}'),
        ("GET", "/v1/sessions", None),
    ):
        conn = http.client.HTTPConnection("127.0.0.1", target.server.port, timeout=30)
        try:
            headers = {"Authorization": f"Bearer {token}", "Content-Type": "application/json"}
            conn.request(method, path, body=body, headers=headers)
            answer = conn.getresponse()
            assert answer.status == 401, answer.read()
            assert orjson.loads(answer.read())["error"]["code"] == "unauthenticated"
        finally:
            conn.close()


def test_the_server_still_answers_after_every_hostile_input(target: Target) -> None:
    """Run last in this module; its server's log is read for tracebacks when
    the module's fixture ends."""
    assert target.request("GET", "/healthz")[0] == 200
    assert target.head() > 0
