"""The wire shapes of PROTOCOL.md: events, views and timestamps, as plain
JSON-ready dicts, and the one JSON encoder (orjson) used for every body and
frame."""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import orjson

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


def wire_view(view: dict[str, Any]) -> dict[str, Any]:
    """A domain view with its datetimes rendered as wire timestamps."""
    return {k: timestamp(v) if isinstance(v, datetime) else v for k, v in view.items()}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()
