"""The event store: an eventsourcing Application configured by a store URL.

``sqlite:///path`` (the embedded default, WAL), ``memory://`` (throwaway),
``postgresql://user[:password]@host[:port]/db[?options]`` (the shared store for
several nodes; service/storage/postgres_url.py reads it). Streams are keyed by
text IDs (``ORIGINATOR_ID_TYPE=text``), and events are (de)serialised with
orjson.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any
from urllib.parse import unquote

import orjson
from eventsourcing.application import AggregateNotFoundError, Application, project_aggregate
from eventsourcing.persistence import PersistenceError, StoredEvent, Transcoder
from eventsourcing.utils import Environment, EnvType, get_topic

from domain.base import Aggregate
from domain.ids import connection_stream, id_from_stream, session_stream
from domain.session import Session
from service.storage.postgres_url import postgres_settings, schema_lock
from service.storage.rows import LogRow, RowRecorder, StreamRow
from service.storage.wire import wire_from_rows4

if TYPE_CHECKING:
    from domain.connection import Connection

# Seconds a SQLite statement waits for another connection's lock before it
# fails (busy): a deadline of every store call (ADR 0028).
SQLITE_BUSY_TIMEOUT = "2"


class StoreError(Exception):
    """The store URL is wrong, or the store cannot be opened or reached."""


@dataclass(frozen=True)
class StoreConfig:
    url: str
    kind: str  # "memory" | "sqlite" | "postgres"
    env: dict[str, str]
    path: Path | None = None  # the SQLite file, for a sqlite store
    # libpq's connection string, for a postgres store: what every direct
    # psycopg connection to it uses.
    conninfo: str | None = None

    @property
    def key_dir(self) -> Path:
        """Where the token key file lives when SESSIOND_SECRET is not set."""
        if self.path is not None:
            return self.path.parent
        return Path.cwd()


def parse_store_url(url: str) -> StoreConfig:
    """Turn a store URL into eventsourcing settings, or raise StoreError."""
    base = {"ORIGINATOR_ID_TYPE": "text", "CREATE_TABLE": "y"}
    if url in ("memory://", "memory:"):
        env = {
            **base,
            "PERSISTENCE_MODULE": "service.storage.memory:MemoryFactory",
            "APPLICATION_RECORDER_TOPIC": "service.storage.memory:MemoryRecorder",
        }
        return StoreConfig(url, "memory", env)
    if url.startswith("sqlite://"):
        # SQLAlchemy's convention: sqlite:///relative/path, sqlite:////absolute/path.
        if not url.startswith("sqlite:///"):
            raise StoreError(f"bad store URL {url!r}: a SQLite URL is sqlite:///path/to/file.db")
        path_text = unquote(url[len("sqlite:///") :].split("?", 1)[0])
        if path_text in ("", "/") or path_text.endswith("/"):
            raise StoreError(f"bad store URL {url!r}: no file name")
        if path_text in (":memory:", "/:memory:"):
            raise StoreError("use memory:// for a throwaway store, not sqlite:///:memory:")
        # The file the path leads to, symbolic links followed: one store is
        # one file however it is named, so its lock and its key file (beside
        # it) are the same for every name (``serve`` refuses a second node on
        # it through a link too).
        path = Path(path_text).expanduser().resolve()
        return StoreConfig(
            url,
            "sqlite",
            {
                **base,
                "PERSISTENCE_MODULE": "eventsourcing.sqlite",
                "SQLITE_DBNAME": str(path),
                "SQLITE_LOCK_TIMEOUT": SQLITE_BUSY_TIMEOUT,
                "APPLICATION_RECORDER_TOPIC": "service.storage.sqlite:BatchSQLiteRecorder",
            },
            path=path,
        )
    if url.startswith(("postgresql://", "postgres://")):
        try:
            postgres = postgres_settings(url)
        except ValueError as e:
            raise StoreError(f"bad store URL {url!r}: {e}") from None
        env = {
            **base,
            **postgres.env,
            "PERSISTENCE_MODULE": "service.storage.postgres:SessiondPostgresFactory",
            "APPLICATION_RECORDER_TOPIC": "service.storage.postgres:FailFastPostgresRecorder",
        }
        return StoreConfig(url, "postgres", env, conninfo=postgres.conninfo)
    raise StoreError(
        f"bad store URL {url!r}: use sqlite:///path/to/file.db, memory:// or "
        "postgresql://user@host:port/db"
    )


class OrjsonTranscoder(Transcoder):
    """orjson for every stored event.

    Every sessiond event's state is JSON-native except its ``timestamp`` (a
    datetime), which orjson writes as RFC 3339 and we read back here.
    """

    def encode(self, obj: Any) -> bytes:
        return orjson.dumps(obj)

    def decode(self, data: bytes) -> Any:
        state = orjson.loads(data)
        ts = state.get("timestamp") if isinstance(state, dict) else None
        if isinstance(ts, str):
            state["timestamp"] = datetime.fromisoformat(ts)
        return state


def stored_row(event: Aggregate.Event) -> StreamRow:
    """``Mapper.to_stored_event`` for sessiond's events, with the orjson
    transcoder and no compression or cipher (sessiond configures neither), as
    a plain (originator_id, originator_version, topic, state) tuple: building
    the frozen ``StoredEvent`` dataclass cost more than the JSON itself."""
    cls = type(event)
    state = dict(vars(event))
    originator_id = state.pop("originator_id")
    originator_version = state.pop("originator_version")
    class_version = getattr(cls, "class_version", 1)
    if class_version > 1:
        state["class_version"] = class_version
    return originator_id, originator_version, get_topic(cls), orjson.dumps(state)


# Events a page of a past state's fold reads at most (and its bytes as asked).
STATE_PAGE = 500


class SessiondApplication(Application[str]):
    """The one event-sourced application: sessions and connections in one log."""

    name = "sessiond"

    def __init__(self, env: EnvType | None = None) -> None:
        super().__init__(env)
        recorder = self.recorder
        if not isinstance(recorder, RowRecorder):
            super().close()
            raise TypeError(f"{type(recorder).__name__} is not one of sessiond's recorders")
        # The same recorder, as what sessiond adds to eventsourcing's interface.
        self.row_recorder: RowRecorder = recorder

    def construct_env(self, name: str, env: EnvType | None = None) -> Environment:
        """The store's settings, from its URL alone (``parse_store_url``).

        eventsourcing also reads the whole process environment, so a
        ``POSTGRES_*`` or ``SQLITE_*`` variable set for something else (a
        container's ``POSTGRES_PASSWORD``, a pool size) changed how sessiond
        opened its store; the server's settings are ``SESSIOND_*`` and the URL.
        """
        return Environment(name, {**type(self).env, **(env or {})})

    def construct_transcoder(self) -> Transcoder:
        return OrjsonTranscoder()

    # --- reads (thread-safe; called from executor threads) ------------------

    def get_session(
        self, session_id: str, version: int | None = None, *, max_bytes: int | None = None
    ) -> Session | None:
        """The session as it stands, or as it stood at ``version``. With
        ``max_bytes``, a past version is folded from pages of at most that
        many bytes of stored events (:meth:`session_at`)."""
        if version is not None and max_bytes is not None:
            return self.session_at(session_id, version, max_bytes)
        try:
            agg: object = self.repository.get(session_stream(session_id), version=version)
        except AggregateNotFoundError:
            return None
        assert isinstance(agg, Session)
        return agg

    def session_at(self, session_id: str, version: int, max_bytes: int) -> Session | None:
        """The session as it stood at ``version``, folded page by page: the
        repository reads every event up to it at once, and a session of large
        messages would be held whole for one ``state?at=`` read."""
        stream = session_stream(session_id)
        found: Any = None
        after = 0
        while after < version:
            rows = self.row_recorder.select_stream_rows(
                stream, gt=after, limit=min(STATE_PAGE, version - after), max_bytes=max_bytes
            )
            if not rows:
                break
            events = (self.mapper.to_domain_event(StoredEvent(*row)) for row in rows)
            found = project_aggregate(found, events)
            after = rows[-1][1]
        assert found is None or isinstance(found, Session)
        return found

    def get_connection(self, connection_id: str) -> Connection | None:
        # Imported here, not above: the connection's lifecycle brings the
        # state machine library, which the offline commands (replay, token,
        # projections) never need, and a third of their start-up was its import.
        from domain.connection import Connection

        try:
            agg: object = self.repository.get(connection_stream(connection_id))
        except AggregateNotFoundError:
            return None
        assert isinstance(agg, Connection)
        return agg

    def stream_events(
        self, stream_id: str, *, after: int = 0, limit: int | None = None
    ) -> list[Aggregate.Event]:
        events = self.events.get(stream_id, gt=after or None, limit=limit)
        return [e for e in events if isinstance(e, Aggregate.Event)]

    def stream_wire_events(
        self,
        stream_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[dict[str, Any]]:
        """A stream's events in wire shape, decoded straight from the rows."""
        rows = self.stream_rows(stream_id, after=after, limit=limit, max_bytes=max_bytes)
        return wire_from_rows4(rows)

    def stream_rows(
        self,
        stream_id: str,
        *,
        after: int = 0,
        limit: int | None = None,
        max_bytes: int | None = None,
    ) -> list[StreamRow]:
        """A stream's stored rows (stream ID, position, topic, state), oldest
        first: what ``stream_wire_events`` decodes, for a reader that writes
        them out as JSON lines (``wire.json_line_from_row4``). With
        ``max_bytes``, only the rows whose states fit it (the first always):
        a page may then be shorter than ``limit`` before the stream's end."""
        id_from_stream(stream_id)  # refuses anything but a sessiond stream
        return self.row_recorder.select_stream_rows(
            stream_id, gt=after, limit=limit, max_bytes=max_bytes
        )

    def stream_exists(self, stream_id: str) -> bool:
        """Whether anything is recorded under ``stream_id`` (one indexed row read)."""
        id_from_stream(stream_id)
        return bool(self.row_recorder.select_stream_rows(stream_id, gt=0, limit=1))

    def log_rows(self, start: int, limit: int, max_bytes: int | None = None) -> list[LogRow]:
        """Up to ``limit`` rows of the notification log from ID ``start`` on,
        and with ``max_bytes`` as many as fit that many bytes of state (always
        one), as plain tuples (no Notification objects: the projector and the
        follower decode them straight to wire events)."""
        return self.row_recorder.select_rows(start, limit, max_bytes)

    def record_aggregates(self, *aggregates: Aggregate) -> list[Aggregate.Event]:
        """Record our own aggregates' pending events in one transaction; the
        events, in the order recorded.

        The rows are exactly what ``Application.save`` writes (a test compares
        them); what is skipped is its generality: runtime ``isinstance``
        checks against Protocols (8% of the server's CPU under the handshake
        load), a ``Recording`` and a ``Notification`` object per event, and
        hooks sessiond does not use (no snapshots; the repository's cache
        fast-forwards from the store, so it is not written here).
        """
        events: list[Aggregate.Event] = []
        for aggregate in aggregates:
            events.extend(aggregate.collect_events())  # type: ignore[arg-type]
        if events:
            self.row_recorder.insert_rows([stored_row(e) for e in events])
        return events

    def close(self) -> None:
        self.row_recorder.close_connections()
        super().close()

    def ping(self) -> int:
        return self.recorder.max_notification_id() or 0


def open_store(config: StoreConfig) -> SessiondApplication:
    """Open the store (creating its tables), or raise StoreError saying why."""
    if config.path is not None:
        parent = config.path.parent
        if not parent.is_dir():
            raise StoreError(f"cannot open store {config.url!r}: folder {parent} does not exist")
        if config.path.is_dir():
            raise StoreError(f"cannot open store {config.url!r}: {config.path} is a folder")
    env = dict(config.env)
    env.setdefault("AGGREGATE_CACHE_MAXSIZE", "1000")
    try:
        with schema_lock(config.conninfo) if config.conninfo else nullcontext():
            app = SessiondApplication(env=env)
        app.ping()
    except (PersistenceError, OSError, ValueError) as e:
        raise StoreError(f"cannot open store {config.url!r}: {e}") from e
    except Exception as e:
        # psycopg and sqlite3 raise their own errors for unreachable servers and
        # unreadable files; anything here means "cannot open", never a traceback.
        raise StoreError(f"cannot open store {config.url!r}: {type(e).__name__}: {e}") from e
    return app
