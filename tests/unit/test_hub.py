"""The hub's fan-out: one encoding per event, and each socket's queue bounded
in events and in bytes (its transport's unsent bytes included)."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.application.hub import EventFrame, Hub, SlowConsumer, event_json
from service.edge.metrics import stamped
from service.storage.wire import dumps


def event(position: int, content: str = "x") -> dict[str, Any]:
    return {
        "session_id": "s-1",
        "position": position,
        "type": "MessageRecorded",
        "at": "2026-12-01T00:00:00.000000Z",
        "data": {"content": content},
    }


def test_an_event_is_encoded_once_and_every_socket_shares_the_bytes() -> None:
    hub = Hub()
    subs = [hub.subscribe("s-1", 100) for _ in range(3)]
    hub.publish("s-1", [event(1), event(2)])
    queued = [sub.drain() for sub in subs]
    assert [item.event["position"] for item in queued[0]] == [1, 2]
    first = queued[0][0]
    assert all(q[0].frame is first.frame for q in queued)
    assert orjson.loads(first.frame) == {"type": "event", "event": event(1)}


@pytest.mark.parametrize(
    "shown",
    [event(7, 'quotes " and \\ and \u2028 and é'), stamped(event(8), 12.5)],
    ids=["plain", "stamped"],
)
def test_an_event_stream_takes_the_event_out_of_its_frame_as_it_would_encode_it(
    shown: dict[str, Any],
) -> None:
    frame = EventFrame.of(shown).frame
    assert event_json(frame) == dumps(dict(shown))
    assert orjson.loads(event_json(frame)) == dict(shown)


def test_past_its_bytes_a_subscription_overflows_and_tells_its_owner_at_once() -> None:
    hub = Hub()
    told: list[str] = []
    size = len(EventFrame.of(event(1, "y" * 1000)).frame)
    sub = hub.subscribe("s-1", 1000, lambda: told.append("4408"), max_bytes=3 * size)
    hub.publish("s-1", [event(n, "y" * 1000) for n in (1, 2, 3)])
    assert (sub.pending(), sub.bytes, told) == (3, 3 * size, [])
    hub.publish("s-1", [event(4, "y" * 1000)])
    assert told == ["4408"] and sub.overflowed
    assert sub.pending() == 0 and sub.bytes == 0  # the queued bytes are let go
    with pytest.raises(SlowConsumer):
        sub.drain()


def test_what_the_transport_has_not_sent_counts_against_the_bytes() -> None:
    hub = Hub()
    unsent = [0]
    size = len(EventFrame.of(event(1)).frame)
    sub = hub.subscribe("s-1", 1000, max_bytes=10 * size, buffered=lambda: unsent[0])
    hub.publish("s-1", [event(1)])
    unsent[0] = 9 * size  # the client stopped reading: its bytes wait in the transport
    hub.publish("s-1", [event(2)])
    assert sub.overflowed


def test_taking_events_gives_their_bytes_back() -> None:
    hub = Hub()
    size = len(EventFrame.of(event(1)).frame)
    sub = hub.subscribe("s-1", 1000, max_bytes=2 * size)
    for position in range(1, 50):
        hub.publish("s-1", [event(position)])
        assert [item.event["position"] for item in sub.drain()] == [position]
    assert not sub.overflowed and sub.bytes == 0


def test_a_subscription_with_nothing_waiting_takes_an_event_larger_than_its_bytes() -> None:
    hub = Hub()
    sub = hub.subscribe("s-1", 1000, max_bytes=1024)
    hub.publish("s-1", [event(1, "z" * 5000)])
    assert sub.pending() == 1 and not sub.overflowed
    hub.publish("s-1", [event(2)])
    assert sub.overflowed


def test_the_event_count_still_bounds_a_queue_of_small_events() -> None:
    hub = Hub()
    sub = hub.subscribe("s-1", 3, max_bytes=1 << 20)
    hub.publish("s-1", [event(n) for n in range(1, 4)])
    assert not sub.overflowed
    hub.publish("s-1", [event(4)])
    assert sub.overflowed
