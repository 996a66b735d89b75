"""eventsourcing's PostgreSQL recorder, failing fast when the database is away.

The stock recorder retries each operation ten times on a connection error,
each try waiting up to the connect timeout: a write then hangs for most of a
minute before it fails, holding the writer thread and every command queued
behind it. sessiond answers 503 ``unavailable`` instead and lets the client
retry (ADR 0004), so two attempts are enough to ride over a dropped pooled
connection, and a dead database is reported within a few seconds.
"""

from __future__ import annotations

from typing import Any

from eventsourcing.persistence import InterfaceError, OperationalError
from eventsourcing.postgres import PostgresApplicationRecorder
from eventsourcing.utils import retry

ATTEMPTS = 2
WAIT = 0.2


def _fail_fast(method: Any) -> Any:
    raw = getattr(method, "__wrapped__", method)
    return retry((InterfaceError, OperationalError), max_attempts=ATTEMPTS, wait=WAIT)(raw)


class FailFastPostgresRecorder(PostgresApplicationRecorder):
    insert_events = _fail_fast(PostgresApplicationRecorder.insert_events)
    select_events = _fail_fast(PostgresApplicationRecorder.select_events)
    select_notifications = _fail_fast(PostgresApplicationRecorder.select_notifications)
    max_notification_id = _fail_fast(PostgresApplicationRecorder.max_notification_id)
