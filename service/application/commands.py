"""Write commands: named functions of a UnitOfWork, run by the writer thread.

Each checks what the caller may do against the aggregates it loads, calls
their command methods, and returns a JSON-ready result. They never do I/O
themselves; the writer commits whatever events they leave pending. A
command's name is what the writer's log says when it fails.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

from domain.connection import Connection
from domain.errors import (
    ConnectionClosed,
    ConnectionIdTaken,
    ConnectionNotFound,
    DomainError,
    InvalidCommand,
    SessionNotFound,
    TokenExpired,
)
from domain.ids import connection_stream, session_stream
from domain.lifecycle import consult
from domain.session import Session
from service.application.auth import Principal
from service.application.writer import Command, UnitOfWork
from service.storage.wire import wire_view

T = TypeVar("T")


class Forbidden(DomainError):
    code = "forbidden"


def _session(uow: UnitOfWork, session_id: str) -> Session:
    session = uow.session(session_id)
    if session is None:
        raise SessionNotFound(f"no session {session_id!r}")
    return session


def _connection(uow: UnitOfWork, connection_id: str) -> Connection:
    connection = uow.connection(connection_id)
    if connection is None:
        raise ConnectionNotFound(f"no connection {connection_id!r}")
    return connection


def _check_writer(actor: Principal, session: Session) -> None:
    if not actor.can_write_to(session.owner):
        raise Forbidden(f"you may not write to session {session.session_id!r}")


def on_session(
    name: str, session_id: str, actor: Principal, act: Callable[[Session], T]
) -> Command[T]:
    """The command ``name``: load the session, check the actor may write to
    it, then ``act`` on it (the shape of every write to an existing session)."""

    def run(uow: UnitOfWork) -> T:
        session = _session(uow, session_id)
        _check_writer(actor, session)
        return act(session)

    return Command(name, run)


def within_token(exp: float | None) -> None:
    """A socket acts on its token until the token's exp (PROTOCOL.md v1.1):
    a step of it that the writer runs at or after that moment is refused,
    with nothing recorded, however shortly before it the frame arrived."""
    if exp is not None and time.time() >= exp:
        raise TokenExpired("the socket's token has expired")


# --- sessions -----------------------------------------------------------------


def create_session(
    session_id: str,
    actor: Principal,
    metadata: dict[str, Any] | None,
    *,
    admit: Callable[[], None] | None = None,
) -> Command[tuple[dict[str, Any], bool]]:
    """Create the session, or answer with it if the caller already has it.
    ``admit`` is called just before creating (the user's session budget; it
    raises to refuse)."""

    def run(uow: UnitOfWork) -> tuple[dict[str, Any], bool]:
        if not actor.can_write:
            raise Forbidden("auditors read; they do not create sessions")
        session = uow.session_to_create(session_id)
        if session is not None:
            # Another user's session, a service's token included: a service
            # may write to it, but it is not the service's to create.
            session.check_owner(actor.user_id)
            return wire_view(session.view()), False
        if admit is not None:
            admit()
        session = Session.create(session_id, actor.user_id, metadata)
        uow.add(session)
        return wire_view(session.view()), True

    return Command("create_session", run)


def session_recorded(session_id: str) -> Command[bool]:
    """Whether the session is recorded: asked before an upgrade only when
    its user has no sessions left to create, to refuse the upgrade that would
    create one. Asked of the writer, which holds what it has just created
    (the read models may not have it yet), as :func:`connection_recorded`."""
    return Command("session_recorded", lambda uow: uow.recorded(session_stream(session_id)))


def end_session(session_id: str, actor: Principal) -> Command[dict[str, Any]]:
    """End the session: its owner's alone, not any writer's (a ``service``
    token writes to every session but ends only its own)."""

    def run(uow: UnitOfWork) -> dict[str, Any]:
        session = _session(uow, session_id)
        if actor.user_id != session.owner:
            raise Forbidden(f"only its owner may end session {session_id!r}")
        if not actor.can_end(session.owner):
            raise Forbidden("auditors read; they do not end sessions")
        session.end(user_id=actor.user_id)
        return wire_view(session.view())

    return Command("end_session", run)


def record_message(
    session_id: str,
    actor: Principal,
    *,
    message_id: str,
    role: str,
    content: str,
    model: str | None = None,
    tokens: int | None = None,
    metadata: dict[str, Any] | None = None,
    connection_id: str | None = None,
    token_exp: float | None = None,
) -> Command[tuple[int, bool]]:
    """A message; from a socket (``connection_id``), refused once the
    socket's token has expired (``token_exp``)."""

    def record(session: Session) -> tuple[int, bool]:
        within_token(token_exp)
        return session.record_message(
            message_id=message_id,
            role=role,
            content=content,
            user_id=actor.user_id,
            model=model,
            tokens=tokens,
            metadata=metadata,
            connection_id=connection_id,
        )

    return on_session("record_message", session_id, actor, record)


def start_task(
    session_id: str, actor: Principal, *, task_id: str, name: str, total: float | None
) -> Command[tuple[int, bool]]:
    return on_session(
        "start_task",
        session_id,
        actor,
        lambda session: session.start_task(
            task_id=task_id, name=name, total=total, user_id=actor.user_id
        ),
    )


def report_progress(
    session_id: str,
    actor: Principal,
    *,
    task_id: str,
    done: float,
    total: float | None,
    note: str | None,
) -> Command[int]:
    return on_session(
        "report_progress",
        session_id,
        actor,
        lambda session: session.report_progress(task_id=task_id, done=done, total=total, note=note),
    )


def complete_task(session_id: str, actor: Principal, *, task_id: str, result: Any) -> Command[int]:
    return on_session(
        "complete_task",
        session_id,
        actor,
        lambda session: session.complete_task(task_id=task_id, result=result),
    )


def fail_task(session_id: str, actor: Principal, *, task_id: str, error: str) -> Command[int]:
    return on_session(
        "fail_task",
        session_id,
        actor,
        lambda session: session.fail_task(task_id=task_id, error=error),
    )


# --- connections --------------------------------------------------------------


def connection_recorded(connection_id: str) -> Command[bool]:
    """Whether anything is recorded under ``connection_id`` (a proposed ID is
    refused before the upgrade when it is). Asked of the writer, not of a
    reader thread: it answers from what it holds, else with one indexed read,
    and its answer comes back with the rest of its batch's (ADR 0043)."""
    return Command(
        "connection_recorded", lambda uow: uow.recorded(connection_stream(connection_id))
    )


def open_connection(
    connection_id: str, session_id: str, *, node: str, proposed: bool
) -> Command[str]:
    """Record CONNECTING under the connection's one ID; refuse an ID in use."""

    def run(uow: UnitOfWork) -> str:
        if uow.connection_to_create(connection_id) is not None:
            raise ConnectionIdTaken(f"connection ID {connection_id!r} is already recorded")
        connection = Connection.open(connection_id, session_id, node=node, proposed=proposed)
        uow.add(connection)
        return connection.state

    return Command("open_connection", run)


def transition(connection_id: str, name: str, **details: Any) -> Command[str]:
    """The lifecycle transition ``name`` of a connection, with its details:
    the command of any transition that needs nothing but the connection (a
    state added to the lifecycle needs no command of its own)."""
    return Command(name, lambda uow: _connection(uow, connection_id).transition(name, **details))


def accept(connection_id: str) -> Command[str]:
    return transition(connection_id, "accept")


def authenticate(connection_id: str, actor: Principal) -> Command[str]:
    """AUTHENTICATED, unless the token expired before the writer got to it."""

    def run(uow: UnitOfWork) -> str:
        within_token(actor.exp)
        connection = _connection(uow, connection_id)
        if connection.is_closed:
            # Kicked while it waited for its token: it ends as recorded, and
            # nothing more is recorded of it.
            raise ConnectionClosed(
                f"connection {connection_id!r} was closed before it authenticated",
                close_code=int(connection.close_code or 0),
                close_reason=str(connection.close_reason or ""),
            )
        return connection.authenticate(
            user_id=actor.user_id, roles=sorted(actor.roles), exp=actor.exp
        )

    return Command("authenticate", run)


def refuse_transition(connection_id: str, transition: str, reason: str) -> Command[None]:
    """Record an attempt the protocol refuses (``TransitionRefused``); the
    command is refused with InvalidTransition once that is recorded."""

    def run(uow: UnitOfWork) -> None:
        _connection(uow, connection_id).refuse(transition, reason)

    return Command("refuse_transition", run)


def refresh_token(
    connection_id: str, actor: Principal, *, holds_until: float | None = None
) -> Command[int]:
    """A live connection's new token (``TokenRefreshed``); returns its exp.

    The new token must allow what the attach allowed (write to the session:
    its owner, or a service), so a refresh cannot keep a socket on a session
    its new token could not open; and it must reach the writer while the
    token it replaces still holds (until ``holds_until``, its exp)."""

    def run(uow: UnitOfWork) -> int:
        within_token(holds_until)
        if actor.exp is None:
            raise InvalidCommand("a refreshed token must have an expiry")
        connection = _connection(uow, connection_id)
        session = _session(uow, connection.session_id)
        if not actor.can_write or (session.owner != actor.user_id and not actor.is_service):
            raise Forbidden(f"this token may not hold session {session.session_id!r}")
        connection.refresh_token(user_id=actor.user_id, roles=sorted(actor.roles), exp=actor.exp)
        return actor.exp

    return Command("refresh_token", run)


def attach(
    connection_id: str,
    session_id: str,
    actor: Principal,
    *,
    node: str,
    max_connections: int,
    admit: Callable[[], None] | None = None,
) -> Command[tuple[list[str], int]]:
    """SERVICES_READY: create the session if need be (``admit`` is called
    first, as by :func:`create_session`), check its owner, attach the
    connection and supersede the oldest beyond the limit, in one commit.

    Returns the superseded connection IDs and the session's position *before*
    this commit: everything after it reaches a socket subscribed beforehand
    through the hub, so only positions up to it need reading from the store.
    """

    def run(uow: UnitOfWork) -> tuple[list[str], int]:
        connection = _connection(uow, connection_id)
        if not actor.can_write:
            raise Forbidden("auditors read history over HTTP; they do not attach sockets")
        if consult(type(connection).lifecycle, connection.state, "attach") is None:
            # Ask before touching the session: a refused attach (the socket
            # closed meanwhile) must not create, attach or supersede anything.
            # This records the refusal and raises InvalidTransition.
            connection.attach(session_id=session_id, superseded=[])
        session = uow.session_to_create(session_id)
        position_before = 0
        if session is None:
            if admit is not None:
                admit()
            session = Session.create(session_id, actor.user_id, None)
            uow.add(session)
        elif session.owner != actor.user_id and not actor.is_service:
            raise Forbidden(f"session {session_id!r} belongs to another user")
        else:
            position_before = session.version
        superseded = session.attach(
            connection_id=connection_id,
            user_id=actor.user_id,
            node=node,
            max_connections=max_connections,
        )
        connection.attach(session_id=session_id, superseded=superseded)
        return superseded, position_before

    return Command("attach", run)


def go_live(connection_id: str, position: int) -> Command[str]:
    return transition(connection_id, "go_live", position=position)


def go_live_attached(
    connection_id: str, session_id: str, *, after: int
) -> Command[tuple[str, int]]:
    """PROCESSING_READY right after the attach, in the same commit: its
    position is where the backlog will end, the session's position with the
    attach's own events (or ``after``, if the client has seen further).
    Returns the state and that position."""

    def run(uow: UnitOfWork) -> tuple[str, int]:
        session = _session(uow, session_id)
        position = max(after, session.version)
        return _connection(uow, connection_id).go_live(position=position), position

    return Command("go_live", run)


def close_connection(
    connection_id: str, *, code: int, reason: str, said: str | None = None
) -> Command[bool]:
    """CLOSED with its code and reason (and the client's own close text,
    ``said``), and detached from its session.

    Closing a closed connection records nothing (the socket's last word may
    arrive after a supersede or a shutdown already closed it)."""

    def run(uow: UnitOfWork) -> bool:
        connection = uow.connection(connection_id)
        if connection is None or connection.is_closed:
            return False
        # Close first: were it refused, the session must not lose the connection.
        connection.close(code=code, reason=reason, said=said)
        session = uow.session(connection.session_id)
        if session is not None:
            session.detach(connection_id=connection_id, reason=reason)
        return True

    return Command("close_connection", run)


# How a kicked connection closes (PROTOCOL.md v1.1, Operators).
KICKED_CODE, KICKED_REASON = 4403, "kicked"


def kick_connection(connection_id: str, actor: Principal) -> Command[tuple[str, int | None, bool]]:
    """Kick a connection, by its session's owner or a service (ADR 0030, ADR
    0057). Returns its session's ID, the position of what was recorded on the
    session (None if nothing was), and whether this kick ended it.

    An attached one is detached from its session with reason ``kicked``: the
    node holding its socket sees the detach in the session's events and
    closes it 4403 ``kicked``, recording its CLOSED. One still in its
    handshake is in no session's list yet: its CLOSED (4403 ``kicked``) is
    recorded here, and its socket ends at once on its node, or at its next
    step elsewhere. A closed one, or one detached already, records nothing."""

    def run(uow: UnitOfWork) -> tuple[str, int | None, bool]:
        connection = _connection(uow, connection_id)
        session = uow.session(connection.session_id)
        if not actor.is_service and (session is None or not actor.can_write_to(session.owner)):
            raise Forbidden(
                f"only the owner of session {connection.session_id!r} or a service "
                "may kick its connections"
            )
        if connection.is_closed:
            return connection.session_id, None, False
        if session is not None and session.detach(connection_id=connection_id, reason="kicked"):
            return session.session_id, session.version, True
        if connection.live_position is not None:
            # Attached once and detached since (superseded, its session
            # ended, kicked by another call): its node is closing it and its
            # CLOSED is on the way. Nothing to record.
            return connection.session_id, None, False
        connection.close(code=KICKED_CODE, reason=KICKED_REASON)
        return connection.session_id, None, True

    return Command("kick_connection", run)


# --- several steps, one commit ------------------------------------------------


def chain(*steps: Command[Any]) -> Command[list[tuple[bool, Any]]]:
    """Run ``steps`` one after another in one commit, stopping at the first
    that is refused: each outcome is ``(True, result)`` or ``(False, error)``.

    For lifecycle transitions that follow one another with nothing to wait for
    in between (CONNECTING and ACCEPTED once the upgrade completed;
    AUTHENTICATED, SERVICES_READY and PROCESSING_READY once the token is
    valid; all five when the upgrade carried the token): each is still its
    own event, and all are durable before the first is announced, in one
    fsync instead of one each. What a refused step recorded (its
    TransitionRefused) and what the steps before it recorded are committed;
    the steps after it do not run. See
    docs/adr/0037-record-a-handshake-in-three-commits.md.
    """

    def run(uow: UnitOfWork) -> list[tuple[bool, Any]]:
        outcomes: list[tuple[bool, Any]] = []
        for step in steps:
            try:
                outcomes.append((True, step.run(uow)))
            except DomainError as e:
                outcomes.append((False, e))
                break
        return outcomes

    return Command("+".join(step.name for step in steps), run)
