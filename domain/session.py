"""The Session aggregate: what happened in one session, in order.

A session's events are numbered by the aggregate's version: position 1 is
``SessionCreated``, and every later event takes the next number. That
numbering is the session's *position*, dense and ordered by construction, and
it is what clients resume from (``after=N``).

Commands check first and record after; the ``apply`` of an event only ever
assigns what the event says, because it runs again on every replay.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from domain.base import Aggregate, utcnow
from domain.errors import (
    InvalidCommand,
    SessionEnded,
    SessionOwnedByOther,
    TaskFinished,
    TaskNotFound,
)
from domain.ids import session_stream

ACTIVE = "ACTIVE"
ENDED = "ENDED"

TASK_RUNNING = "RUNNING"
TASK_COMPLETED = "COMPLETED"
TASK_FAILED = "FAILED"

MESSAGE_ROLES = ("user", "assistant", "system")


@dataclass
class TaskState:
    task_id: str
    name: str
    state: str
    done: float
    total: float | None
    started_at: datetime
    updated_at: datetime
    started_position: int
    note: str | None = None
    result: Any = None
    error: str | None = None

    def view(self) -> dict[str, Any]:
        return {
            "task_id": self.task_id,
            "name": self.name,
            "state": self.state,
            "done": self.done,
            "total": self.total,
            "note": self.note,
            "result": self.result,
            "error": self.error,
        }


class Session(Aggregate):
    """One session: its owner, messages, tasks and live connections."""

    # --- events -----------------------------------------------------------

    @dataclass(frozen=True, kw_only=True)
    class SessionCreated(Aggregate.Created):
        session_id: str
        owner: str
        metadata: dict[str, Any]

        def apply(self, aggregate: Session) -> None:
            aggregate.session_id = self.session_id
            aggregate.owner = self.owner
            aggregate.metadata = self.metadata
            aggregate.state = ACTIVE
            aggregate.message_ids = {}
            aggregate.message_count = 0
            aggregate.tasks = {}
            aggregate.connections = []
            aggregate.connection_users = {}
            aggregate.ended_at = None

    @dataclass(frozen=True, kw_only=True)
    class MessageRecorded(Aggregate.Event):
        message_id: str
        role: str
        content: str
        model: str | None
        tokens: int | None
        metadata: dict[str, Any] | None
        user_id: str
        connection_id: str | None

        def apply(self, aggregate: Session) -> None:
            aggregate.message_ids[self.message_id] = self.originator_version
            aggregate.message_count += 1

    @dataclass(frozen=True, kw_only=True)
    class TaskStarted(Aggregate.Event):
        task_id: str
        name: str
        total: float | None
        user_id: str

        def apply(self, aggregate: Session) -> None:
            aggregate.tasks[self.task_id] = TaskState(
                task_id=self.task_id,
                name=self.name,
                state=TASK_RUNNING,
                done=0,
                total=self.total,
                started_at=self.timestamp,
                updated_at=self.timestamp,
                started_position=self.originator_version,
            )

    @dataclass(frozen=True, kw_only=True)
    class TaskProgressed(Aggregate.Event):
        task_id: str
        done: float
        total: float | None
        note: str | None

        def apply(self, aggregate: Session) -> None:
            task = aggregate.tasks[self.task_id]
            task.done = self.done
            if self.total is not None:
                task.total = self.total
            if self.note is not None:
                task.note = self.note
            task.updated_at = self.timestamp

    @dataclass(frozen=True, kw_only=True)
    class TaskCompleted(Aggregate.Event):
        task_id: str
        result: Any

        def apply(self, aggregate: Session) -> None:
            task = aggregate.tasks[self.task_id]
            task.state = TASK_COMPLETED
            task.result = self.result
            if task.total is not None:
                task.done = task.total
            task.updated_at = self.timestamp

    @dataclass(frozen=True, kw_only=True)
    class TaskFailed(Aggregate.Event):
        task_id: str
        error: str

        def apply(self, aggregate: Session) -> None:
            task = aggregate.tasks[self.task_id]
            task.state = TASK_FAILED
            task.error = self.error
            task.updated_at = self.timestamp

    @dataclass(frozen=True, kw_only=True)
    class ConnectionAttached(Aggregate.Event):
        connection_id: str
        user_id: str
        node: str

        def apply(self, aggregate: Session) -> None:
            aggregate.connections.append(self.connection_id)
            aggregate.connection_users[self.connection_id] = self.user_id

    @dataclass(frozen=True, kw_only=True)
    class ConnectionDetached(Aggregate.Event):
        connection_id: str
        reason: str
        superseded_by: str | None

        def apply(self, aggregate: Session) -> None:
            if self.connection_id in aggregate.connections:
                aggregate.connections.remove(self.connection_id)
            aggregate.connection_users.pop(self.connection_id, None)

    @dataclass(frozen=True, kw_only=True)
    class SessionEnded(Aggregate.Event):
        user_id: str

        def apply(self, aggregate: Session) -> None:
            aggregate.state = ENDED
            aggregate.ended_at = self.timestamp

    # --- state (assigned only by the events above) -------------------------
    # Declared for type checkers only: at run time the annotations would make
    # eventsourcing treat the aggregate as a dataclass with a generated __init__.

    if TYPE_CHECKING:
        session_id: str
        owner: str
        metadata: dict[str, Any]
        state: str
        message_ids: dict[str, int]
        message_count: int
        tasks: dict[str, TaskState]
        connections: list[str]
        connection_users: dict[str, str]
        ended_at: datetime | None

    # --- commands ---------------------------------------------------------

    @classmethod
    def create(cls, session_id: str, owner: str, metadata: dict[str, Any] | None = None) -> Session:
        return cls._create(
            cls.SessionCreated,
            id=session_stream(session_id),
            session_id=session_id,
            owner=owner,
            metadata=dict(metadata or {}),
            timestamp=utcnow(),
        )

    @property
    def position(self) -> int:
        """The position of the session's last recorded event."""
        return self.version

    def check_owner(self, user_id: str) -> None:
        if self.owner != user_id:
            raise SessionOwnedByOther(f"session {self.session_id!r} belongs to another user")

    def _check_active(self) -> None:
        if self.state == ENDED:
            raise SessionEnded(f"session {self.session_id!r} has ended")

    def record_message(
        self,
        *,
        message_id: str,
        role: str,
        content: str,
        user_id: str,
        model: str | None = None,
        tokens: int | None = None,
        metadata: dict[str, Any] | None = None,
        connection_id: str | None = None,
    ) -> tuple[int, bool]:
        """Record a message; returns (its position, whether it is new).

        A ``message_id`` already recorded records nothing and answers with the
        position it was first recorded at.
        """
        first = self.message_ids.get(message_id)
        if first is not None:
            return first, False
        self._check_active()
        if role not in MESSAGE_ROLES:
            raise InvalidCommand(f"role must be one of {', '.join(MESSAGE_ROLES)}")
        if tokens is not None and tokens < 0:
            raise InvalidCommand("tokens must not be negative")
        self.trigger_event(
            self.MessageRecorded,
            message_id=message_id,
            role=role,
            content=content,
            model=model,
            tokens=tokens,
            metadata=metadata,
            user_id=user_id,
            connection_id=connection_id,
            timestamp=utcnow(),
        )
        return self.version, True

    def start_task(
        self, *, task_id: str, name: str, total: float | None, user_id: str
    ) -> tuple[int, bool]:
        """Start a task; a ``task_id`` already started records nothing."""
        if task_id in self.tasks:
            return self.tasks[task_id].started_position, False
        self._check_active()
        if total is not None and total < 0:
            raise InvalidCommand("total must not be negative")
        self.trigger_event(
            self.TaskStarted,
            task_id=task_id,
            name=name,
            total=total,
            user_id=user_id,
            timestamp=utcnow(),
        )
        return self.version, True

    def _running_task(self, task_id: str) -> TaskState:
        task = self.tasks.get(task_id)
        if task is None:
            raise TaskNotFound(f"no task {task_id!r} in session {self.session_id!r}")
        if task.state != TASK_RUNNING:
            raise TaskFinished(f"task {task_id!r} is {task.state}")
        return task

    def report_progress(
        self, *, task_id: str, done: float, total: float | None, note: str | None
    ) -> int:
        self._check_active()
        self._running_task(task_id)
        if done < 0 or (total is not None and total < 0):
            raise InvalidCommand("done and total must not be negative")
        self.trigger_event(
            self.TaskProgressed,
            task_id=task_id,
            done=done,
            total=total,
            note=note,
            timestamp=utcnow(),
        )
        return self.version

    def complete_task(self, *, task_id: str, result: Any) -> int:
        self._check_active()
        self._running_task(task_id)
        self.trigger_event(self.TaskCompleted, task_id=task_id, result=result, timestamp=utcnow())
        return self.version

    def fail_task(self, *, task_id: str, error: str) -> int:
        self._check_active()
        self._running_task(task_id)
        self.trigger_event(self.TaskFailed, task_id=task_id, error=error, timestamp=utcnow())
        return self.version

    def attach(
        self, *, connection_id: str, user_id: str, node: str, max_connections: int
    ) -> list[str]:
        """Attach a live connection; returns the IDs it supersedes.

        The oldest live connections beyond ``max_connections`` are detached in
        the same breath, with reason ``superseded``: the node holding each of
        them sees that event and closes the socket with 4409.
        """
        self._check_active()
        if max_connections < 1:
            raise InvalidCommand("max_connections must be at least 1")
        if connection_id in self.connections:
            return []
        self.trigger_event(
            self.ConnectionAttached,
            connection_id=connection_id,
            user_id=user_id,
            node=node,
            timestamp=utcnow(),
        )
        superseded: list[str] = []
        while len(self.connections) > max_connections:
            oldest = self.connections[0]
            self.trigger_event(
                self.ConnectionDetached,
                connection_id=oldest,
                reason="superseded",
                superseded_by=connection_id,
                timestamp=utcnow(),
            )
            superseded.append(oldest)
        return superseded

    def detach(self, *, connection_id: str, reason: str) -> bool:
        """Detach a connection that is attached; returns whether it was."""
        if connection_id not in self.connections:
            return False
        self.trigger_event(
            self.ConnectionDetached,
            connection_id=connection_id,
            reason=reason,
            superseded_by=None,
            timestamp=utcnow(),
        )
        return True

    def end(self, *, user_id: str) -> bool:
        """End the session; ending an ended session records nothing.

        Its live connections are detached first (reason ``session_ended``):
        the node holding each socket sees its detach and closes it 4403. So
        ``SessionEnded`` is the session's last event: nothing can attach to,
        or be recorded in, an ended session after it."""
        if self.state == ENDED:
            return False
        for connection_id in list(self.connections):
            self.detach(connection_id=connection_id, reason="session_ended")
        self.trigger_event(self.SessionEnded, user_id=user_id, timestamp=utcnow())
        return True

    def view(self) -> dict[str, Any]:
        """The session view of PROTOCOL.md, as it stands at this version."""
        return {
            "session_id": self.session_id,
            "owner": self.owner,
            "state": self.state,
            "created_at": self.created_on,
            "updated_at": self.modified_on,
            "position": self.version,
            "metadata": self.metadata,
            "message_count": self.message_count,
            "tasks": [t.view() for t in self.tasks.values()],
            "connections": list(self.connections),
        }
