"""The cost of the one schema at the edge (service/edge/schema.py): decoding a
message as an HTTP body and as a WebSocket frame, beside orjson reading the
same bytes with no checks at all (the bare baseline), in this process."""

from __future__ import annotations

import timeit
from dataclasses import dataclass

import orjson

from service.edge.schema import PostMessage, decode_body, decode_frame

MESSAGE = {
    "role": "user",
    "content": "hello there, this is a chat message of a modest length",
    "message_id": "msg-1735095123-abc123",
    "metadata": {"client": "web", "draft": 3, "tags": ["a", "b"]},
}


@dataclass(frozen=True)
class EdgeDecode:
    body_us: float  # one HTTP message body, decoded and checked
    frame_us: float  # the same message as a frame
    bare_us: float  # orjson.loads of the body, unchecked

    @property
    def ratio(self) -> float:
        return self.bare_us / self.body_us


def _best_us(fn: object, number: int) -> float:
    return min(timeit.repeat(fn, number=number, repeat=5)) / number * 1e6  # type: ignore[arg-type]


def edge_decode(number: int) -> EdgeDecode:
    body = orjson.dumps(MESSAGE)
    frame = orjson.dumps({"type": "message", "ref": "r-1", **MESSAGE}).decode()
    return EdgeDecode(
        body_us=_best_us(lambda: decode_body(body, PostMessage), number),
        frame_us=_best_us(lambda: decode_frame(frame), number),
        bare_us=_best_us(lambda: orjson.loads(body), number),
    )


if __name__ == "__main__":
    result = edge_decode(100_000)
    print(
        f"message body {result.body_us:.2f} µs, frame {result.frame_us:.2f} µs, "
        f"bare orjson.loads {result.bare_us:.2f} µs ({result.ratio:.2f}x bare)"
    )
