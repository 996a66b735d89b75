"""The wire shapes of PROTOCOL.md: events, views and timestamps, as plain
JSON-ready dicts, and the one JSON encoder (orjson) used for every body and
frame."""

from __future__ import annotations

import functools
from datetime import UTC, datetime
from typing import Any

import orjson
from eventsourcing.persistence import StoredEvent
from eventsourcing.utils import resolve_topic

from domain.base import Aggregate
from domain.ids import id_from_stream


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 UTC with microseconds: 2026-11-22T06:37:37.123456Z."""
    if value is None:
        return None
    return value.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def wire_event(event: Aggregate.Event) -> dict[str, Any]:
    """A recorded event as PROTOCOL.md shows it, over HTTP and WebSocket alike."""
    kind, client_id = id_from_stream(event.originator_id)
    return {
        f"{kind}_id": client_id,
        "position": event.originator_version,
        "type": event.type_name(),
        "at": timestamp(event.timestamp),
        "data": event.payload(),
    }


def _at(iso: str) -> str:
    """A stored (orjson, UTC) timestamp as a wire timestamp, without parsing it.

    orjson writes ``2026-11-22T06:37:37.123456+00:00``, and drops the fraction
    when it is zero; the wire wants ``...37.123456Z`` always.
    """
    if iso.endswith("+00:00"):
        base = iso[:-6]
        if "." not in base:
            base += ".000000"
        return base + "Z"
    return timestamp(datetime.fromisoformat(iso)) or iso


@functools.cache
def _event_class(topic: str) -> type[Aggregate.Event] | None:
    try:
        cls = resolve_topic(topic)
    except Exception:  # a topic written by a newer version of the code
        return None
    return cls if isinstance(cls, type) and issubclass(cls, Aggregate.Event) else None


def wire_from_stored(stored: StoredEvent, ident: tuple[str, str] | None = None) -> dict[str, Any]:
    """A stored event straight to its wire shape, with no event object built.

    The same object as ``wire_event(mapper.to_domain_event(stored))`` (a test
    keeps them equal). An event class this code does not know (written by a
    newer node) is still shown, named after its class, so positions stay dense.
    ``ident`` is the stream's (kind, client ID) when the caller knows it.
    """
    cls = _event_class(stored.topic)
    state = orjson.loads(stored.state)
    at = state.pop("timestamp")
    state.pop("originator_topic", None)
    kind, client_id = ident or id_from_stream(str(stored.originator_id))
    return {
        f"{kind}_id": client_id,
        "position": stored.originator_version,
        "type": cls.wire_name(state) if cls is not None else _class_name(stored.topic),
        "at": _at(at),
        "data": state,
    }


def _class_name(topic: str) -> str:
    return topic.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def wire_view(view: dict[str, Any]) -> dict[str, Any]:
    """A domain view with its datetimes rendered as wire timestamps."""
    return {k: timestamp(v) if isinstance(v, datetime) else v for k, v in view.items()}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()
