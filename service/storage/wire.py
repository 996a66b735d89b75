"""The wire shapes of PROTOCOL.md: events, views and timestamps, as plain
JSON-ready dicts, and the one JSON encoder (orjson) used for every body and
frame."""

from __future__ import annotations

import dataclasses
import functools
from collections.abc import Iterable
from datetime import UTC, datetime
from typing import Any

import orjson
from eventsourcing.utils import resolve_topic

from domain.base import Aggregate
from domain.ids import id_from_stream
from projections.sessions import WireShape, wire_shape
from service.storage.rows import LogRow, StreamRow

# The text of the last second formatted, shared by every thread (replaced as a
# whole, so a reader never sees one second's fields with another's text).
_last_second: tuple[tuple[int, ...], str] = ((), "")


def timestamp(value: datetime | None) -> str | None:
    """RFC 3339 UTC with microseconds: 2026-11-22T06:37:37.123456Z."""
    global _last_second
    if value is None:
        return None
    if value.tzinfo is not UTC:
        value = value.astimezone(UTC)
    # Every event and view carries timestamps, mostly within the same second:
    # the date and time are formatted once a second (strftime, and even
    # isoformat, were a measurable share of every commit; bench/).
    second = (value.year, value.month, value.day, value.hour, value.minute, value.second)
    known, text = _last_second
    if known != second:
        y, mo, d, h, mi, sec = second
        text = f"{y:04d}-{mo:02d}-{d:02d}T{h:02d}:{mi:02d}:{sec:02d}"
        _last_second = (second, text)
    return f"{text}.{value.microsecond:06d}Z"


_NOT_DATA = frozenset({"originator_id", "originator_version", "timestamp", "originator_topic"})


@functools.cache
def _fixed_name(cls: type[Aggregate.Event]) -> str:
    """The wire type of a class whose events all share one (else "")."""
    if cls.wire_name.__func__ is _DEFAULT_WIRE_NAME:  # type: ignore[attr-defined]
        return cls.wire_name({})
    return ""


def wire_event(event: Aggregate.Event) -> dict[str, Any]:
    """A recorded event as PROTOCOL.md shows it, over HTTP and WebSocket alike.

    The same object as ``{kind}_id``, ``position``, ``type_name()``,
    ``timestamp`` and ``payload()`` would make, in one pass over its fields,
    unless the event's entry in projections/sessions.py gives it a shape of
    its own.
    """
    state = vars(event)
    cls = type(event)
    key, client_id = _key_and_id(event.originator_id)
    wire = {
        key: client_id,
        "position": event.originator_version,
        "type": _fixed_name(cls) or cls.wire_name(state),
        "at": timestamp(event.timestamp),
        "data": {k: v for k, v in state.items() if k not in _NOT_DATA},
    }
    shape = _shape(cls)
    return wire if shape is None else shape(wire)


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


_DEFAULT_WIRE_NAME = Aggregate.Event.wire_name.__func__  # type: ignore[attr-defined]


@functools.cache
def _shape(cls: type[Aggregate.Event]) -> WireShape | None:
    return wire_shape(cls)


@functools.cache
def _namer(topic: str) -> tuple[str, type[Aggregate.Event] | None, WireShape | None]:
    """The wire type of a topic's events when it does not depend on their
    state, else ("", the class whose ``wire_name`` must be asked); and the
    shape its events have instead of the generic one, if any."""
    cls = _event_class(topic)
    if cls is None:
        return _class_name(topic), None, None
    name = _fixed_name(cls)
    return name, None if name else cls, _shape(cls)


@functools.lru_cache(maxsize=65536)
def _key_and_id(stream_id: str) -> tuple[str, str]:
    kind, client_id = id_from_stream(stream_id)
    return f"{kind}_id", client_id


def _wire(stream_id: str, position: int, topic: str, state_bytes: bytes) -> dict[str, Any]:
    name, cls, shape = _namer(topic)
    state = orjson.loads(state_bytes)
    at = state.pop("timestamp")
    state.pop("originator_topic", None)
    key, client_id = _key_and_id(stream_id)
    wire = {
        key: client_id,
        "position": position,
        "type": name or cls.wire_name(state),  # type: ignore[union-attr]
        "at": _at(at),
        "data": state,
    }
    return wire if shape is None else shape(wire)


def wire_from_row4(row: StreamRow) -> dict[str, Any]:
    """A stream row (stream ID, position, topic, state) straight to its wire
    shape, with no event object built.

    The same object as ``wire_event`` of the event the row stores (a test
    keeps them equal). An event class this code does not know (written by a
    newer node) is still shown, named after its class, so positions stay dense.
    """
    return _wire(row[0], row[1], row[2], row[3])


def wire_from_rows4(rows: Iterable[StreamRow]) -> list[dict[str, Any]]:
    """``wire_from_row4`` of each row (a replay's or a backlog's page)."""
    return [_wire(*row) for row in rows]


# What every stored state begins with: the event's timestamp, as orjson (the
# store's transcoder) writes it, first of the event's fields.
_STORED_TIMESTAMP = b'{"timestamp":"'
_UTC = b"+00:00"
_DATA = b'Z","data":{'
_NO_FRACTION = b".000000"


@functools.lru_cache(maxsize=65536)
def _line_head(stream_id: str) -> bytes:
    key, client_id = _key_and_id(stream_id)
    return b'{"' + key.encode() + b'":' + orjson.dumps(client_id) + b',"position":'


@functools.cache
def _line_type(topic: str) -> bytes | None:
    """``,"type":NAME,"at":"`` for a topic whose rows can be spliced (a class
    this code knows, one wire type for all its events, the generic shape, no
    created event's topic among its fields), else None."""
    name, cls, shape = _namer(topic)
    known = _event_class(topic)
    if cls is not None or shape is not None or known is None or not dataclasses.is_dataclass(known):
        return None
    if "originator_topic" in {f.name for f in dataclasses.fields(known)}:
        return None
    return b',"type":' + orjson.dumps(name) + b',"at":"'


def json_line_from_row4(row: StreamRow) -> bytes:
    """``orjson.dumps(wire_from_row4(row))`` and a newline, byte for byte
    (a test keeps them equal), for a JSON-lines replay.

    Most rows are spliced from their stored bytes with no JSON decoded or
    encoded: the stored state is orjson's own output, the timestamp comes
    first, and the rest of it is the event's ``data`` as the generic path
    would write it again. A row that does not fit that (a created event, with
    its topic; a shaped or state-named event; a state not written that way)
    takes the generic path.
    """
    stream_id, position, topic, state = row
    kind = _line_type(topic)
    if kind is not None and state.startswith(_STORED_TIMESTAMP):
        end = state.find(b'"', 14)  # the timestamp's closing quote
        after = state[end + 1 : end + 2]
        # After the timestamp: its comma and the data's first field, or the
        # state's end (no data).
        tail = state[end + 2 :] if after == b"," else state[end + 1 :] if after == b"}" else b""
        if tail and state[end - 6 : end] == _UTC:
            # orjson drops a zero fraction: 19 characters without it.
            fraction = _NO_FRACTION if end - 20 == 19 else b""
            return b"".join(
                (
                    _line_head(stream_id),
                    b"%d" % position,
                    kind,
                    state[14 : end - 6],
                    fraction,
                    _DATA,
                    tail,
                    b"}\n",
                )
            )
    return orjson.dumps(_wire(stream_id, position, topic, state), option=orjson.OPT_APPEND_NEWLINE)


def wire_from_row(row: LogRow) -> dict[str, Any]:
    """A notification-log row (``SessiondApplication.log_rows``) to its wire shape."""
    return _wire(row[1], row[2], row[3], row[4])


def _class_name(topic: str) -> str:
    return topic.rsplit(":", 1)[-1].rsplit(".", 1)[-1]


def wire_view(view: dict[str, Any]) -> dict[str, Any]:
    """A domain view with its datetimes rendered as wire timestamps."""
    return {k: timestamp(v) if isinstance(v, datetime) else v for k, v in view.items()}


def dumps(obj: Any) -> bytes:
    return orjson.dumps(obj)


def dumps_str(obj: Any) -> str:
    return orjson.dumps(obj).decode()
