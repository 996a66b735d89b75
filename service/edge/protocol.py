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
(by a command on the writer) before its frame is sent, and every close
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
read it cannot do ends the socket with 1013 (try again later); a CLOSED it
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

import uuid
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from domain.connection import Connection
from domain.errors import DomainError
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
    Wake,
    WakeAt,
    answer_errors,
    error_frame,
    peer_close,
)
from service.edge.expiry import Expiry
from service.edge.schema import (
    AuthFrame,
    SchemaError,
    TokenExpiringFrame,
    TokenFrame,
    decode_frame,
    frame_ref,
    server_frame,
)
from service.edge.seam import Seam

BAD_FRAME_WINDOW = 60.0

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
class ConnectionProtocol:
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

    def __post_init__(self) -> None:
        # The lifecycle's states by attribute (the class is the one table).
        lifecycle: Any = self.aggregate.lifecycle
        self.ready_state = str(lifecycle.SERVICES_READY.value)
        self.live_state = str(lifecycle.PROCESSING_READY.value)
        self.closed_state = str(lifecycle.CLOSED.value)
        self.state = initial_state(lifecycle)
        self.principal: Principal | None = None
        self.token: str | None = None  # from an auth frame, awaiting its check
        self.awaiting_auth = False
        self.ending: tuple[int, str] | None = None
        self.seam = Seam(
            self.after,
            self._deliver,
            stopped=lambda: self.ending is not None,
            settled=lambda: self._go_live() if self._going_live else [],
        )
        self._going_live = False
        self._bad_frames: deque[float] = deque()
        self.expiry = Expiry(self.wall_offset, self.limits.token_warning)

    @property
    def last_sent(self) -> int:
        """The last position sent to this socket."""
        return self.seam.last_sent

    @property
    def awaiting_token(self) -> bool:
        """Waiting for an ``auth`` frame that has not come yet."""
        return self.awaiting_auth and self.token is None and self.ending is None

    # --- opening ---------------------------------------------------------------

    def open_command(self, *, proposed: bool) -> Command[str]:
        """CONNECTING, recorded before the upgrade (an ID in use is refused)."""
        return commands.open_connection(
            self.connection_id, self.session_id, node=self.node, proposed=proposed
        )

    def upgraded(self, header_token: str | None, now: float) -> Effects:
        """The upgrade completed. With a valid token in the upgrade request,
        nothing waits between ACCEPTED, AUTHENTICATED and SERVICES_READY: the
        three are recorded in one commit (ADR 0015)."""
        if header_token is not None:
            try:
                principal = self.verify(header_token)
            except AuthError as e:
                return self._record(commands.accept(self.connection_id), self._refused_header(e))
            return self._authenticated(principal, now, accept=True)
        self.awaiting_auth = True
        deadline = now + self.limits.auth_timeout
        return self._record(
            commands.accept(self.connection_id),
            lambda state: [*self._welcome(state), AwaitAuth(deadline)],
        )

    def _refused_header(self, error: AuthError) -> Callable[[Any], Effects]:
        def then(state: Any) -> Effects:
            return [*self._welcome(state), *self.end(Close.UNAUTHENTICATED, _why(error))]

        return then

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
            return self.end(Close.UNAUTHENTICATED, _why(e))
        return self._authenticated(principal, now, accept=False)

    def _authenticated(self, principal: Principal, now: float, *, accept: bool) -> Effects:
        """Subscribe first, so nothing recorded from here on is missed; then
        AUTHENTICATED and SERVICES_READY (the attach) in one commit. The
        token's deadline runs from here. A user with all the live sockets the
        budget allows gets no other: 4429."""
        if not self.admission.authenticated(principal.user_id):
            return self.end(Close.RATE_LIMITED, "rate_limited")
        self.principal = principal
        self.expiry.hold(principal.exp, now)
        steps: list[Command[Any]] = [commands.accept(self.connection_id)] if accept else []
        steps.append(commands.authenticate(self.connection_id, principal))
        steps.append(
            commands.attach(
                self.connection_id,
                self.session_id,
                principal,
                node=self.node,
                max_connections=self.limits.max_connections_per_session,
                admit=self.admission.session_gate(principal.user_id),
            )
        )
        then = self._handshake_recorded(principal, accept)
        return [*self._wake(), Subscribe(), Record(commands.chain(*steps), then)]

    def _handshake_recorded(self, principal: Principal, accept: bool) -> Callable[..., Effects]:
        def then(outcome: Outcome) -> Effects:
            if self.ending is not None:
                return []
            if not isinstance(outcome, Recorded):
                return self._failed(outcome)
            effects: Effects = []
            steps = iter(outcome.value)
            if accept:
                ok, state = next(steps)
                if not ok:
                    return self.end(Close.INTERNAL, "internal_error")
                effects += self._welcome(state)
            ok, state = next(steps)
            if not ok:
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
            self.state = self.ready_state
            effects.append(self._announce(session_id=self.session_id, superseded=superseded))
            # The backlog: what was recorded before the attach comes from the
            # store; the attach commit and everything after it is already
            # queued by the subscription (the writer publishes before it answers).
            return effects + self._read_backlog(position_before)

        return then

    def _read_backlog(self, until: int) -> Effects:
        return self.seam.backlog(until, lambda: [TakeQueued(self._caught_up)])

    def _caught_up(self, queued: list[EventFrame]) -> Effects:
        self._going_live = True
        return self.live(queued)

    def _go_live(self) -> Effects:
        """PROCESSING_READY: every position up to ``last_sent`` has been sent."""
        self._going_live = False
        position = self.last_sent

        def then(outcome: Outcome) -> Effects:
            if self.ending is not None:
                return []
            if not isinstance(outcome, Recorded):
                return self._failed(outcome)
            self.state = outcome.value
            announce = self._announce(session_id=self.session_id, position=position)
            return [announce, *self._wake(), FollowLive()]

        return [Record(commands.go_live(self.connection_id, position), then)]

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
        if event["type"] == "ConnectionDetached":
            data = event["data"]
            if data.get("connection_id") == self.connection_id:
                # Superseded by a newer connection, kicked, its session ended,
                # or given up for lost by a peer that thought this node dead:
                # the socket must not outlive the record.
                reason = str(data.get("reason"))
                code = DETACHED_CLOSES.get(reason)
                if code is not None:
                    return effects + self.end(code, reason)
                return effects + self.end(Close.GOING_AWAY, f"detached: {reason}")
        return effects

    def overflowed(self) -> Effects:
        """The socket fell too far behind the session's events."""
        return self.end(Close.SLOW_CONSUMER, "slow_consumer")

    # --- frames from the client --------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> Effects:
        """A frame from the client: text (JSON), or bytes for a binary frame."""
        if self.ending is not None:
            return []
        if self.expiry.expired(now):
            return self.end(Close.UNAUTHENTICATED, "token_expired")
        if isinstance(data, bytes):
            return self._bad_frame("bad_frame", "frames are JSON text", None, now)
        try:
            frame = decode_frame(data)
        except SchemaError as e:
            kind, ref = frame_ref(data)
            if kind == "auth" and self.awaiting_auth and self.token is None:
                self.token = ""  # an auth frame without a token: unauthenticated
                return [Wake()]
            return self._bad_frame(e.code, e.message, ref, now)
        if isinstance(frame, AuthFrame):
            return self._on_auth(frame, now)
        if self.state != self.live_state:
            message = f"messages are accepted in {self.live_state}, not {self.state}"
            return [error_frame("not_ready", message, frame.ref)]
        assert self.principal is not None
        if self.admission.write(self.principal.user_id) > 0:
            return self.end(Close.RATE_LIMITED, "rate_limited")
        command = commands.record_message(
            self.session_id,
            self.principal,
            message_id=frame.message_id or _new_message_id(),
            role=frame.role,
            content=frame.content,
            model=frame.model,
            tokens=frame.tokens,
            metadata=frame.metadata,
            connection_id=self.connection_id,
        )
        return [Record(command, answer_errors(frame.ref))]

    def _on_auth(self, frame: AuthFrame, now: float) -> Effects:
        if self.awaiting_auth and self.token is None:
            self.token = frame.token
            return [Wake()]
        if self.principal is None:
            return [error_frame("invalid_transition", "already authenticating", frame.ref)]
        if self.state == self.live_state:
            return self._refresh(frame, now)
        # Authenticating twice is a transition the lifecycle refuses: record
        # the attempt for the audit, and tell the client.
        command = commands.authenticate(self.connection_id, self.principal)
        return [Record(command, answer_errors(frame.ref, "invalid_transition"))]

    # --- the token's deadline ----------------------------------------------------

    def _refresh(self, frame: AuthFrame, now: float) -> Effects:
        """A new token on a live socket. One for the same user is recorded
        (``TokenRefreshed``) and then holds; one for another user ends the
        socket (4403); one that is not valid is answered with an error (and
        counts as a bad frame), and the current token holds until its exp."""
        assert self.principal is not None
        try:
            principal = self.verify(frame.token)
        except AuthError as e:
            message = f"{_why(e)}; the socket's token holds until {self.expiry.exp}"
            return self._bad_frame("unauthenticated", message, frame.ref, now)
        if principal.user_id != self.principal.user_id:
            return self.end(Close.FORBIDDEN, "forbidden: a token for another user")
        command = commands.refresh_token(self.connection_id, principal)
        return [Record(command, self._refreshed(principal, frame.ref, now))]

    def _refreshed(
        self, principal: Principal, ref: str | None, now: float
    ) -> Callable[..., Effects]:
        def then(outcome: Outcome) -> Effects:
            if self.ending is not None:
                return []
            if isinstance(outcome, Recorded):
                self.principal = principal
                self.expiry.hold(principal.exp, now)
                return [Send(server_frame(TokenFrame(exp=outcome.value))), *self._wake()]
            if isinstance(outcome, Refused) and outcome.error.code == "forbidden":
                return self.end(Close.FORBIDDEN, f"forbidden: {outcome.error.message}"[:100])
            return answer_errors(ref)(outcome)

        return then

    def tick(self, now: float) -> Effects:
        """The clock reached a deadline asked for with :class:`WakeAt`: warn
        ahead of the token's exp (once live), or end the socket at it."""
        if self.ending is not None:
            return []
        if self.expiry.expired(now):
            return self.end(Close.UNAUTHENTICATED, "token_expired")
        effects: Effects = []
        if self.state == self.live_state and self.expiry.warning_due(now):
            exp = self.expiry.exp
            assert exp is not None
            effects.append(Send(server_frame(TokenExpiringFrame(exp=exp))))
        return effects + self._wake()

    def _wake(self) -> Effects:
        """Ask the shell to call :meth:`tick` at the next deadline, if any."""
        at = self.expiry.next_deadline(warn=self.state == self.live_state)
        return [] if at is None else [WakeAt(at)]

    def _bad_frame(self, code: str, message: str, ref: str | None, now: float) -> Effects:
        """Answer a bad frame; past the budget, close 4400."""
        window = self._bad_frames
        window.append(now)
        while window and now - window[0] > BAD_FRAME_WINDOW:
            window.popleft()
        effects: Effects = [error_frame(code, message, ref)]
        if len(window) > self.limits.bad_frames_per_minute:
            effects += self.end(Close.PROTOCOL, "protocol_error")
        return effects

    # --- the end -----------------------------------------------------------------

    def end(self, code: int, reason: str) -> Effects:
        """The server ends the connection: CLOSED recorded, announced, closed."""
        if self.ending is not None:
            return []
        self.ending = (code, reason)
        frame = {
            "type": "state",
            "connection_id": self.connection_id,
            "state": self.closed_state,
            "code": code,
            "reason": reason,
        }
        return [Closing(code, reason, self._close_record(code, reason), frame)]

    def socket_closed(
        self, code: int | None, *, timed_out: bool, layer_error: int | None = None
    ) -> Effects:
        """The socket ended without the server deciding it (the client closed
        it, it dropped, its pongs stopped): record why, once."""
        if self.ending is not None:
            return []
        return self._record_end(*peer_close(code, timed_out=timed_out, layer_error=layer_error))

    def upgrade_failed(self) -> Effects:
        """CONNECTING was recorded but the upgrade itself failed."""
        return [] if self.ending is not None else self._record_end(Close.ABNORMAL, "upgrade_failed")

    def read_failed(self) -> Effects:
        """A read asked for with :class:`ReadEvents` failed: the store cannot
        be read, so the socket cannot deliver without a gap. It is ended
        (1013); the client resumes with ``after``."""
        return self.end(Close.TRY_AGAIN_LATER, "store_unavailable")

    def _record_end(self, code: int, reason: str) -> Effects:
        self.ending = (code, reason)
        return [self._close_record(code, reason)]

    def _close_record(self, code: int, reason: str) -> Record:
        """CLOSED with the code sent; kept to be recorded later if the store
        cannot take it now (docs/adr/0028-fail-fast-while-the-store-is-down.md)."""
        self.state = self.closed_state
        command = commands.close_connection(self.connection_id, code=code, reason=reason)

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

    def _record(self, command: Command[Any], then: Callable[[Any], Effects]) -> Effects:
        """Record a single step; ``then`` gets its result (a failure ends the
        connection)."""

        def on_outcome(outcome: Outcome) -> Effects:
            if self.ending is not None:
                return []
            if isinstance(outcome, Recorded):
                return then(outcome.value)
            return self._failed(outcome)

        return [Record(command, on_outcome)]


def _why(error: AuthError) -> str:
    return f"unauthenticated: {error}"[:100]


def _new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex
