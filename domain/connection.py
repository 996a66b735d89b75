"""The Connection aggregate: one socket's life, under one ID, from first
request to CLOSED.

Every transition is one ``Transitioned`` event whose wire type is the state it
enters (``ACCEPTED``, ``AUTHENTICATED``, ...); the created event enters the
initial state (``CONNECTING``). An attempt the lifecycle refuses is recorded
as ``TransitionRefused``, changes no state, and raises InvalidTransition.
A live connection's new token is ``TokenRefreshed``: an event of the
connection that is not a transition (its state stays as it was).
Subclasses may name another lifecycle class (see
docs/adr/0003-model-the-lifecycle-as-one-statemachine-class.md); the events
stay the same, so logs written before a state existed replay unchanged.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any, ClassVar, NoReturn

from statemachine import StateMachine

from domain.base import Aggregate, utcnow
from domain.errors import InvalidTransition, NotLive, TokenForAnotherUser
from domain.ids import connection_stream
from domain.lifecycle import (
    ConnectionLifecycle,
    consult,
    final_states,
    initial_state,
    live_state,
)


class Connection(Aggregate):
    """One connection and where it stands in its lifecycle."""

    lifecycle: ClassVar[type[StateMachine]] = ConnectionLifecycle

    # --- events -----------------------------------------------------------

    @dataclass(frozen=True, kw_only=True)
    class Opened(Aggregate.Created):
        connection_id: str
        session_id: str
        node: str
        state: str
        proposed: bool

        @classmethod
        def wire_name(cls, state: dict[str, Any]) -> str:
            return str(state["state"])

        def apply(self, aggregate: Connection) -> None:
            aggregate.connection_id = self.connection_id
            aggregate.session_id = self.session_id
            aggregate.node = self.node
            aggregate.state = self.state
            aggregate.user_id = None
            aggregate.roles = []
            aggregate.close_code = None
            aggregate.close_reason = None
            aggregate.closed_at = None
            aggregate.live_position = None
            aggregate.refused = 0

    @dataclass(frozen=True, kw_only=True)
    class Transitioned(Aggregate.Event):
        transition: str
        state: str
        details: dict[str, Any]

        @classmethod
        def wire_name(cls, state: dict[str, Any]) -> str:
            return str(state["state"])

        def apply(self, aggregate: Connection) -> None:
            aggregate.state = self.state
            details = self.details
            if "user_id" in details:
                aggregate.user_id = details["user_id"]
                aggregate.roles = list(details.get("roles", []))
            if "position" in details:
                aggregate.live_position = details["position"]
            if "code" in details:
                aggregate.close_code = details["code"]
                aggregate.close_reason = details.get("reason")
            if self.state in final_states(type(aggregate).lifecycle):
                aggregate.closed_at = self.timestamp

    @dataclass(frozen=True, kw_only=True)
    class TransitionRefused(Aggregate.Event):
        transition: str
        state: str
        reason: str

        def apply(self, aggregate: Connection) -> None:
            aggregate.refused += 1

    @dataclass(frozen=True, kw_only=True)
    class TokenRefreshed(Aggregate.Event):
        """The connection's authority now rests on a new token of its user,
        valid until ``exp`` (Unix seconds)."""

        user_id: str
        roles: list[str]
        exp: int

        def apply(self, aggregate: Connection) -> None:
            aggregate.roles = list(self.roles)

    # --- state (assigned only by the events above) -------------------------
    # Declared for type checkers only: at run time the annotations would make
    # eventsourcing treat the aggregate as a dataclass with a generated __init__.

    if TYPE_CHECKING:
        connection_id: str
        session_id: str
        node: str
        state: str
        user_id: str | None
        roles: list[str]
        close_code: int | None
        close_reason: str | None
        closed_at: datetime | None
        live_position: int | None
        refused: int

    # --- commands ---------------------------------------------------------

    @classmethod
    def open(cls, connection_id: str, session_id: str, *, node: str, proposed: bool) -> Connection:
        """Record a connection entering the lifecycle's initial state."""
        return cls._create(
            cls.Opened,
            id=connection_stream(connection_id),
            connection_id=connection_id,
            session_id=session_id,
            node=node,
            state=initial_state(cls.lifecycle),
            proposed=proposed,
            timestamp=utcnow(),
        )

    @property
    def is_closed(self) -> bool:
        return self.state in final_states(type(self).lifecycle)

    def transition(self, transition: str, **details: Any) -> str:
        """Ask the lifecycle, then record the transition; returns the new state.

        A refused transition is recorded as ``TransitionRefused`` (for the
        audit), leaves the state as it was, and raises InvalidTransition.
        """
        target = consult(type(self).lifecycle, self.state, transition)
        if target is None:
            self.refuse(transition, f"{transition!r} is not allowed in {self.state}")
        self.trigger_event(
            self.Transitioned,
            transition=transition,
            state=target,
            details=details,
            timestamp=utcnow(),
        )
        return target

    def refuse(self, transition: str, reason: str) -> NoReturn:
        """Record an attempt at ``transition`` as refused (``TransitionRefused``,
        for the audit), leave the state as it was, and raise InvalidTransition:
        what the lifecycle refuses, and what it would allow but the protocol
        does not (a second ``auth`` frame while the first is being checked)."""
        self.trigger_event(
            self.TransitionRefused,
            transition=transition,
            state=self.state,
            reason=reason,
            timestamp=utcnow(),
        )
        raise InvalidTransition(reason, transition=transition, state=self.state)

    def accept(self) -> str:
        return self.transition("accept")

    def authenticate(self, *, user_id: str, roles: list[str], exp: int | None = None) -> str:
        """AUTHENTICATED as ``user_id``; ``exp``: until when the token holds."""
        if exp is None:
            return self.transition("authenticate", user_id=user_id, roles=list(roles))
        return self.transition("authenticate", user_id=user_id, roles=list(roles), exp=exp)

    def attach(self, *, session_id: str, superseded: list[str]) -> str:
        return self.transition("attach", session_id=session_id, superseded=list(superseded))

    def go_live(self, *, position: int) -> str:
        return self.transition("go_live", position=position)

    def close(self, *, code: int, reason: str, said: str | None = None) -> str:
        """CLOSED with the close code sent and sessiond's reason for it; ``said``
        is the text of the peer's own close frame, when it sent one."""
        if said:
            return self.transition("close", code=code, reason=reason, said=said)
        return self.transition("close", code=code, reason=reason)

    def refresh_token(self, *, user_id: str, roles: list[str], exp: int) -> None:
        """Record a new token of the connection's user (``TokenRefreshed``).

        Only a live connection's token is refreshed, and only with a token for
        the user it authenticated as; anything else is refused (NotLive,
        TokenForAnotherUser) and records nothing: it is not a transition.
        """
        live = live_state(type(self).lifecycle)
        if self.state != live:
            raise NotLive(f"a token is refreshed in {live}, not in {self.state}")
        if user_id != self.user_id:
            raise TokenForAnotherUser(
                f"connection {self.connection_id!r} is {self.user_id!r}'s, not {user_id!r}'s"
            )
        self.trigger_event(
            self.TokenRefreshed, user_id=user_id, roles=list(roles), exp=exp, timestamp=utcnow()
        )

    def view(self) -> dict[str, Any]:
        """The connection view of PROTOCOL.md, as it stands at this version."""
        return {
            "connection_id": self.connection_id,
            "session_id": self.session_id,
            "user_id": self.user_id,
            "state": self.state,
            "opened_at": self.created_on,
            "updated_at": self.modified_on,
            "closed_at": self.closed_at,
            "close_code": self.close_code,
            "close_reason": self.close_reason,
            "node": self.node,
            "position": self.version,
        }
