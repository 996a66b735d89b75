"""The connection protocol: one socket's handshake, delivery and close, with no I/O.

Theory of operation
-------------------
A :class:`ConnectionProtocol` is everything a WebSocket of sessiond decides,
and nothing it does. It imports neither aiohttp nor asyncio: the shell
(service/edge/ws.py) owns the socket, the tasks and the clock, feeds the
protocol what happened, and performs what it is told, in order.

Inputs are method calls: the upgrade completed (:meth:`upgraded`), a frame
arrived (:meth:`receive`), the wait for a token ended (:meth:`auth_wait_over`),
session events arrived from the hub (:meth:`live`), the subscription overflowed
(:meth:`overflowed`), the clock reached a deadline the protocol asked for with
:class:`WakeAt` (:meth:`tick`), a read it asked for failed (:meth:`read_failed`),
the peer or the transport ended the socket (:meth:`socket_closed`), the node
wants it closed (:meth:`end`). Each returns a
list of *effects* (the dataclasses below): frames to send, commands to record,
events to read from the store, a wait, a close. An effect that needs an answer
carries a ``then``: the protocol's own method the shell calls with the answer,
which returns the next effects. So the whole walk

    CONNECTING -> ACCEPTED -> AUTHENTICATED -> SERVICES_READY -> PROCESSING_READY

is a chain of recorded steps and continuations here, each state recorded
(by a command on the writer) before its frame is sent, in three commits:
CONNECTING and ACCEPTED once the upgrade completed; AUTHENTICATED,
SERVICES_READY and PROCESSING_READY once the token is valid (one commit with
the first when the upgrade carried it); CLOSED
(docs/adr/0037-record-a-handshake-in-three-commits.md). Every close
decision (its code and reason) is made here. The lifecycle's state names come
from the lifecycle class and the connection aggregate's answers, never from
literals.

Budgets: the protocol asks its ``admission`` (service/application/budgets.py)
whether the user may hold one more live socket when its token verifies,
whether a ``message`` frame fits the user's writes, and passes its gate to
the attach that may create the session; over any of them it closes 4429
``rate_limited``. The budgets checked before the upgrade are the shell's.

Delivery: the seam (service/edge/seam.py, shared with the event stream)
sends the next position, drops older ones, and fills a hole (a position ahead
of the next) from the store first (:class:`ReadEvents`), so a socket sees
every position after ``after`` exactly once, in order
(docs/adr/0006-make-the-backlog-live-seam-gap-free.md).

The store down: a ``message`` frame it cannot record is answered with an
``error`` frame ``unavailable`` and the socket stays; a handshake step or a
read it cannot do ends the socket with 1013 (try again later), with nothing
recorded or announced if it was the first commit; a CLOSED it
cannot record is handed back (:class:`RecordLater`) to be recorded as soon as
it can (docs/adr/0028-fail-fast-while-the-store-is-down.md).

Tokens: a socket's authority ends at its token's ``exp`` (service/edge/expiry.py
keeps the deadline). Ahead of it the socket is sent ``token_expiring``; an
``auth`` frame in PROCESSING_READY refreshes the token (recorded
``TokenRefreshed``, answered ``token``); at ``exp`` the socket is closed 4401
``token_expired``, and a frame that arrives from then on is not acted on
(docs/adr/0026-refresh-a-live-sockets-token-with-an-auth-frame.md).
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any

from domain.connection import Connection
from domain.errors import ConnectionClosed, DomainError, TokenExpired
from domain.lifecycle import initial_state
from service.application import commands
from service.application.auth import AuthError, Principal
from service.application.budgets import Admission, Unlimited
from service.application.hub import EventFrame
from service.application.writer import Command
from service.edge.effects import (
    AwaitAuth,
    Close,
    Closing,
    Effects,
    FollowLive,
    Outcome,
    Record,
    Recorded,
    RecordLater,
    Refused,
    Send,
    Subscribe,
    TakeQueued,
    Unavailable,
    peer_close,
)
from service.edge.expiry import Expiry
from service.edge.frames import ClientFrames, why
from service.edge.seam import Seam

# How a socket whose detach it reads in its session's events is closed, by
# the detach's reason (any other reason: 1001 ``detached: <reason>``).
DETACHED_CLOSES = {
    "superseded": Close.SUPERSEDED,
    "kicked": Close.FORBIDDEN,
    "session_ended": Close.FORBIDDEN,
}


@dataclass(frozen=True, slots=True)
class Limits:
    auth_timeout: float = 10.0
    bad_frames_per_minute: int = 10
    max_connections_per_session: int = 1
    # How long before a token's exp the socket is sent token_expiring (0: never).
    token_warning: float = 60.0


# --- the protocol ---------------------------------------------------------------------


@dataclass(eq=False)
class ConnectionProtocol(ClientFrames):
    """One connection's decisions, from upgrade to close."""

    connection_id: str
    session_id: str
    after: int
    node: str
    verify: Callable[[object], Principal]
    limits: Limits = field(default_factory=Limits)
    # The budgets of its user (and, until it authenticates, its address).
    admission: Admission = field(default_factory=Unlimited)
    aggregate: type[Connection] = Connection
    # Wall-clock Unix seconds minus the shell's clock (``now``): turns a
    # token's exp into the shell's clock (service/edge/expiry.py).
    wall_offset: float = 0.0
    # Whether the client proposed the connection ID (recorded with CONNECTING).
    proposed: bool = False

    def __post_init__(self) -> None:
        # The lifecycle's states by attribute (the class is the one table).
        lifecycle: Any = self.aggregate.lifecycle
        self.ready_state = str(lifecycle.SERVICES_READY.value)
        self.live_state = str(lifecycle.PROCESSING_READY.value)
        self.closed_state = str(lifecycle.CLOSED.value)
        self.state = initial_state(lifecycle)
        self.principal: Principal | None = None
        self.token: str | None = None  # from an auth frame, awaiting its check
        # Why the schema refused an auth frame in the handshake (its token is
        # then taken to be missing), for the close reason.
        self.auth_frame_refused: str | None = None
        self.awaiting_auth = False
        self.ending: tuple[int, str] | None = None
        self.seam = Seam(
            self.after,
            self._deliver,
            stopped=lambda: self.ending is not None,
            settled=lambda: self._go_live() if self._going_live else [],
            passed=lambda event: self.detached(event) if self.detaches_me(event) else [],
        )
        self._going_live = False
        # CONNECTING: None until recorded or refused (``_opening`` once asked).
        self.opened: bool | None = None
        self._opening = False
        self._bad_frames: deque[float] = deque()
        self.expiry = Expiry(self.wall_offset, self.limits.token_warning)
        # Steps on the token's authority being recorded and not yet announced
        # (the handshake until PROCESSING_READY is sent, a refresh until its
        # answer): the token's exp passing meanwhile ends the socket only
        # once they are, so the client is told everything the record says.
        self.announcing = 0

    @property
    def last_sent(self) -> int:
        """The last position sent to this socket."""
        return self.seam.last_sent

    @property
    def awaiting_token(self) -> bool:
        """Waiting for an ``auth`` frame that has not come yet."""
        return self.awaiting_auth and self.token is None and self.ending is None

    # --- opening ---------------------------------------------------------------

    def upgraded(self, header_token: str | None, now: float) -> Effects:
        """The upgrade completed: CONNECTING and ACCEPTED are recorded in one
        commit, then announced by the welcome. With a valid token in the
        upgrade request nothing waits after them, so AUTHENTICATED,
        SERVICES_READY and PROCESSING_READY join that commit
        (docs/adr/0037-record-a-handshake-in-three-commits.md)."""
        self._opening = True
        opening = [
            commands.open_connection(
                self.connection_id, self.session_id, node=self.node, proposed=self.proposed
            ),
            commands.accept(self.connection_id),
        ]
        if header_token is not None:
            try:
                principal = self.verify(header_token)
            except AuthError as e:
                error = e
                return self._open(opening, lambda: self.end(Close.UNAUTHENTICATED, why(error)))
            return self._authenticated(principal, now, opening=opening)
        self.awaiting_auth = True
        deadline = now + self.limits.auth_timeout
        return self._open(opening, lambda: [AwaitAuth(deadline)])

    def _open(self, opening: list[Command[Any]], then: Callable[[], Effects]) -> Effects:
        """Record CONNECTING and ACCEPTED; welcome; then ``then()``."""

        def recorded(outcome: Outcome) -> Effects:
            effects, steps = self._opened(outcome)
            return effects if steps is None else effects + then()

        return [Record(commands.chain(*opening), recorded)]

    def _opened(self, outcome: Outcome) -> tuple[Effects, Iterator[tuple[bool, Any]] | None]:
        """A commit that began with CONNECTING and ACCEPTED: the welcome and
        the outcomes of the steps after them; or, if the connection cannot go
        on, the close and None. A connection whose CONNECTING was not recorded
        (the store down, the ID taken meanwhile by another node) is closed
        with nothing recorded and nothing announced: it never existed."""
        if not isinstance(outcome, Recorded):
            return self._never_opened(outcome), None
        steps = iter(outcome.value)
        ok, opened = next(steps)
        if not ok:
            return self._never_opened(Refused(opened)), None
        self.opened = True
        if self.ending is not None:
            return [], None
        ok, state = next(steps)
        if not ok:
            return self.end(Close.INTERNAL, "internal_error"), None
        return self._welcome(state), steps

    def _never_opened(self, outcome: Refused | Unavailable) -> Effects:
        self.opened = False
        if self.ending is not None:
            return []
        if isinstance(outcome, Unavailable):
            code, reason = Close.TRY_AGAIN_LATER, "store_unavailable"
        elif outcome.error.code == "connection_id_taken":
            code, reason = Close.PROTOCOL, "connection_id_taken"
        else:
            code, reason = Close.INTERNAL, "internal_error"
        self.ending = (code, reason)
        return [Closing(code, reason, None, None)]

    @property
    def recorded_anything(self) -> bool:
        """Whether CONNECTING is (or may be about to be) recorded: if not, an
        end records and announces nothing."""
        return self.opened is True or (self.opened is None and self._opening)

    def _welcome(self, state: str) -> Effects:
        self.state = state
        frame = {
            "type": "welcome",
            "connection_id": self.connection_id,
            "session_id": self.session_id,
            "state": state,
        }
        return [Send(frame)]

    def auth_wait_over(self, now: float) -> Effects:
        """The wait for an ``auth`` frame ended: by one, or by the deadline."""
        if not self.awaiting_auth or self.ending is not None:
            return []
        self.awaiting_auth = False
        if self.token is None:
            return self.end(Close.UNAUTHENTICATED, "auth_timeout")
        try:
            principal = self.verify(self.token)
        except AuthError as e:
            refused = e
            if self.auth_frame_refused is not None:
                refused = AuthError(f"the auth frame was refused: {self.auth_frame_refused}")
            return self.end(Close.UNAUTHENTICATED, why(refused))
        return self._authenticated(principal, now)

    def _authenticated(
        self, principal: Principal, now: float, opening: list[Command[Any]] | None = None
    ) -> Effects:
        """Subscribe first, so nothing recorded from here on is missed; then
        AUTHENTICATED, SERVICES_READY (the attach) and PROCESSING_READY in one
        commit (after ``opening``, if the upgrade carried the token), the
        last with the position the backlog will end at. The token's deadline
        runs from here. A user with all the live sockets the budget allows
        gets no other: 4429."""
        if not self.admission.authenticated(principal.user_id):
            if opening:
                return self._open(opening, self._rate_limited)
            return self._rate_limited()
        self.principal = principal
        self.expiry.hold(principal.exp, now)
        steps: list[Command[Any]] = [
            *(opening or ()),
            commands.authenticate(self.connection_id, principal),
            commands.attach(
                self.connection_id,
                self.session_id,
                principal,
                node=self.node,
                max_connections=self.limits.max_connections_per_session,
                admit=self.admission.session_gate(principal.user_id),
            ),
            commands.go_live_attached(self.connection_id, self.session_id, after=self.after),
        ]
        then = self._handshake_recorded(principal, opening=bool(opening))
        self.announcing += 1
        return [*self._wake(), Subscribe(), Record(commands.chain(*steps), then)]

    def _rate_limited(self) -> Effects:
        return self.end(Close.RATE_LIMITED, "rate_limited")

    def _handshake_recorded(self, principal: Principal, *, opening: bool) -> Callable[..., Effects]:
        def then(outcome: Outcome) -> Effects:
            effects: Effects = []
            if opening:
                effects, opened = self._opened(outcome)
                if opened is None:
                    return effects
                steps = opened
            else:
                if self.ending is not None:
                    return []
                if not isinstance(outcome, Recorded):
                    return self._failed(outcome)
                steps = iter(outcome.value)
            ok, state = next(steps)
            if not ok:
                if isinstance(state, TokenExpired):  # before the writer got to it
                    return effects + self.end(Close.UNAUTHENTICATED, "token_expired")
                if isinstance(state, ConnectionClosed):  # kicked while it waited
                    return effects + self.end(state.close_code, state.close_reason)
                return effects + self.end(Close.INTERNAL, "internal_error")
            self.state = state
            effects.append(self._announce(user_id=principal.user_id))
            ok, attached = next(steps)
            if not ok:
                error: DomainError = attached
                if error.code == "rate_limited":  # the user's sessions budget
                    return effects + self.end(Close.RATE_LIMITED, "rate_limited")
                why = f"forbidden: {error.message}" if error.code == "forbidden" else error.code
                return effects + self.end(Close.FORBIDDEN, why[:100])
            superseded, position_before = attached
            ok, live = next(steps)
            if not ok:
                return effects + self.end(Close.INTERNAL, "internal_error")
            _, position = live
            self.state = self.ready_state
            effects.append(self._announce(session_id=self.session_id, superseded=superseded))
            # The backlog: what was recorded before the attach comes from the
            # store; the attach commit and everything after it is already
            # queued by the subscription (the writer publishes before it
            # answers). It ends at the position PROCESSING_READY recorded: the
            # seam sends nothing after it before that frame.
            self.seam.hold(position, lambda: self._reached(position))
            return effects + self._read_backlog(position_before)

        return then

    def _read_backlog(self, until: int) -> Effects:
        return self.seam.backlog(until, lambda: [TakeQueued(self.live)])

    def _reached(self, position: int) -> Effects:
        """Every position up to the one PROCESSING_READY was recorded with has
        been sent: announce it; live events follow."""
        self.state = self.live_state
        self._going_live = True
        self.announcing -= 1
        return [self._announce(session_id=self.session_id, position=position), *self._wake()]

    def _go_live(self) -> Effects:
        """Nothing is left to send: follow the session's live events."""
        self._going_live = False
        return [FollowLive()]

    # --- delivery ----------------------------------------------------------------

    def live(self, events: list[EventFrame]) -> Effects:
        """Events the hub queued for this socket, in the order recorded (each
        with its frame, encoded once for every socket)."""
        return self.seam.queued(events)

    def _deliver(self, event: dict[str, Any], encoded: bytes | None) -> Effects:
        """Send ``event``, the next position (``encoded``: its frame, already
        encoded); end the connection when the log says it is no longer
        attached."""
        effects: Effects = [Send({"type": "event", "event": event}, data=encoded)]
        if self.detaches_me(event):
            return effects + self.detached(event)
        return effects

    def detaches_me(self, event: dict[str, Any]) -> bool:
        return bool(
            event["type"] == "ConnectionDetached"
            and event["data"].get("connection_id") == self.connection_id
        )

    def detached(self, event: dict[str, Any]) -> Effects:
        """Superseded by a newer connection, kicked, its session ended, or
        given up for lost by a peer that thought this node dead: the socket
        must not outlive the record, whatever ``after`` it gave (the seam
        hands over a detach it does not send again)."""
        reason = str(event["data"].get("reason"))
        code = DETACHED_CLOSES.get(reason)
        if code is not None:
            return self.end(code, reason)
        return self.end(Close.GOING_AWAY, f"detached: {reason}")

    def overflowed(self) -> Effects:
        """The socket fell too far behind the session's events."""
        return self.end(Close.SLOW_CONSUMER, "slow_consumer")

    # --- the end -----------------------------------------------------------------

    def end(self, code: int, reason: str) -> Effects:
        """The server ends the connection: CLOSED recorded, announced, closed."""
        if self.ending is not None:
            return []
        self.ending = (code, reason)
        if not self.recorded_anything:
            return [Closing(code, reason, None, None)]
        frame = self._closed_frame(code, reason)
        return [Closing(code, reason, self._close_record(code, reason), frame)]

    def socket_closed(
        self,
        code: int | None,
        *,
        timed_out: bool,
        layer_error: int | None = None,
        said: str | None = None,
    ) -> Effects:
        """The socket ended without the server deciding it (the client closed
        it, it dropped, its pongs stopped): record why, once, with the text of
        the client's close frame (``said``) when it sent one."""
        if self.ending is not None:
            return []
        code, reason = peer_close(code, timed_out=timed_out, layer_error=layer_error)
        return self._record_end(code, reason, said)

    def layer_closing(self, code: int) -> dict[str, Any] | None:
        """The ``state`` CLOSED frame for a close the WebSocket layer decided
        (1002, 1007, 1009: a client's frame it refused), written before its
        close frame; None if the connection was never recorded or already
        ends. Its CLOSED is recorded by :meth:`socket_closed`, with the same
        code and reason."""
        if self.ending is not None or self.opened is not True:
            return None
        return self._closed_frame(*peer_close(None, timed_out=False, layer_error=code))

    def _closed_frame(self, code: int, reason: str) -> dict[str, Any]:
        """The ``state`` CLOSED frame: the close's code and reason."""
        return {
            "type": "state",
            "connection_id": self.connection_id,
            "state": self.closed_state,
            "code": code,
            "reason": reason,
        }

    def upgrade_failed(self) -> Effects:
        """The upgrade itself failed: no connection, nothing recorded (the
        shell logs and counts it)."""
        return [] if self.ending is not None else self._record_end(Close.ABNORMAL, "upgrade_failed")

    def read_failed(self) -> Effects:
        """A read asked for with :class:`ReadEvents` failed: the store cannot
        be read, so the socket cannot deliver without a gap. It is ended
        (1013); the client resumes with ``after``."""
        return self.end(Close.TRY_AGAIN_LATER, "store_unavailable")

    def _record_end(self, code: int, reason: str, said: str | None = None) -> Effects:
        self.ending = (code, reason)
        return [self._close_record(code, reason, said)] if self.recorded_anything else []

    def _close_record(self, code: int, reason: str, said: str | None = None) -> Record:
        """CLOSED with the code sent; kept to be recorded later if the store
        cannot take it now (docs/adr/0028-fail-fast-while-the-store-is-down.md)."""
        self.state = self.closed_state
        command = commands.close_connection(self.connection_id, code=code, reason=reason, said=said)

        def then(outcome: Outcome) -> Effects:
            if isinstance(outcome, Unavailable):
                return [RecordLater(self.connection_id, command)]
            return []

        return Record(command, then)

    def _failed(self, outcome: Refused | Unavailable) -> Effects:
        if isinstance(outcome, Unavailable):
            return self.end(Close.TRY_AGAIN_LATER, "store_unavailable")
        return self.end(Close.INTERNAL, "internal_error")

    def _announce(self, **extra: Any) -> Send:
        frame = {"type": "state", "connection_id": self.connection_id, "state": self.state}
        return Send({**frame, **extra})
