"""Base classes for aggregates keyed by text stream IDs (see domain/ids.py).

eventsourcing's stock ``Aggregate`` insists on UUIDs; these follow its own
recipe for string IDs (``BaseAggregate[str]`` with str-typed events). Every
event carries ``originator_id`` (the stream ID), ``originator_version`` (its
position in that stream, from 1, dense) and ``timestamp`` (UTC).
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ClassVar

from eventsourcing.domain import (
    BaseAggregate,
    CanInitAggregate,
    CanMutateAggregate,
    MetaDomainEvent,
)


def utcnow() -> datetime:
    return datetime.now(UTC)


@dataclass(frozen=True, kw_only=True)
class DomainEvent(metaclass=MetaDomainEvent):
    originator_id: str
    originator_version: int
    timestamp: datetime


class Aggregate(BaseAggregate[str]):
    """An aggregate whose ID is a text stream ID."""

    @dataclass(frozen=True, kw_only=True)
    class Event(DomainEvent, CanMutateAggregate[str]):
        # The wire name of this event type (PROTOCOL.md's ``type``); None means
        # the class name. Kept out of the dataclass fields on purpose.
        wire_type: ClassVar[str | None] = None

        def payload(self) -> dict[str, Any]:
            """What the event carried, as shown in the ``data`` of a wire event."""
            data = dict(vars(self))
            for key in ("originator_id", "originator_version", "timestamp", "originator_topic"):
                data.pop(key, None)
            return data

        def type_name(self) -> str:
            return type(self).wire_name(vars(self))

        @classmethod
        def wire_name(cls, state: dict[str, Any]) -> str:
            """The wire type of an event of this class with this state.

            A class method, so a reader holding only the stored state (the
            fast paths in service/storage/wire.py) names events exactly as the
            domain does, without building event objects.
            """
            return cls.wire_type or cls.__name__

    @dataclass(frozen=True, kw_only=True)
    class Created(Event, CanInitAggregate[str]):
        originator_topic: str
