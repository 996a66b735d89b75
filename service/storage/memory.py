"""eventsourcing's in-memory recorder, reading and writing sessiond's rows.

The throwaway ``memory://`` store: the stock POPO recorder and its events,
offered as the plain rows of service/storage/rows.py, so the application
reads and writes every store through the same ``RowRecorder`` methods. The
stock in-memory factory ignores ``APPLICATION_RECORDER_TOPIC``; the factory
here honours it, as eventsourcing's SQLite and PostgreSQL factories do.
"""

from __future__ import annotations

from collections.abc import Sequence

from eventsourcing.persistence import ApplicationRecorder, StoredEvent
from eventsourcing.popo import POPOApplicationRecorder, POPOFactory
from eventsourcing.utils import resolve_topic

from service.storage.rows import LogRow, StreamRow, fitting, stream_rows


class MemoryRecorder(POPOApplicationRecorder):
    def insert_rows(self, rows: Sequence[StreamRow]) -> list[int]:
        return list(self.insert_events([StoredEvent(*row) for row in rows]) or ())

    def select_rows(self, start: int, limit: int, max_bytes: int | None = None) -> list[LogRow]:
        rows: list[LogRow] = [
            (n.id, str(n.originator_id), n.originator_version, n.topic, n.state)
            for n in self.select_notifications(start, limit)
        ]
        return fitting(rows, max_bytes)

    def select_stream_rows(
        self,
        stream_id: str,
        *,
        gt: int | None = None,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StreamRow]:
        rows = stream_rows(self.select_events(stream_id, gt=gt or None, limit=limit))
        return fitting(rows, max_bytes)

    def close_connections(self) -> None:
        """Nothing to close: the events are in this process's memory."""


class MemoryFactory(POPOFactory):
    def application_recorder(self) -> ApplicationRecorder:
        topic = self.env.get(self.APPLICATION_RECORDER_TOPIC)
        recorder_class = resolve_topic(topic) if topic else POPOApplicationRecorder
        assert issubclass(recorder_class, POPOApplicationRecorder)
        return recorder_class()
