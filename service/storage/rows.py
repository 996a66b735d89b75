"""The rows sessiond's recorders read and write, as plain tuples.

A *stream row* is one event of one stream: (stream ID, position in the
stream, topic, state as JSON bytes). A *log row* is the same with the
store's notification ID in front: the global order the projector and the
follower read in. Tuples rather than eventsourcing's ``StoredEvent`` and
``Notification`` objects: building those dataclasses cost more than the
JSON in them on the hot paths (bench/).
"""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.persistence import StoredEvent

StreamRow = tuple[str, int, str, bytes]
LogRow = tuple[int, str, int, str, bytes]


def stream_rows(stored_events: Sequence[StoredEvent]) -> list[StreamRow]:
    """eventsourcing's stored events as stream rows (what sessiond's recorders
    insert)."""
    return [(str(s.originator_id), s.originator_version, s.topic, s.state) for s in stored_events]
