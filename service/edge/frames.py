"""Frames from the client, and the token's deadline: the part of the
connection protocol (service/edge/protocol.py) that answers what a client
sends and what its token's clock says. A mixin of
:class:`~service.edge.protocol.ConnectionProtocol`, with no I/O either; it is
apart only to keep each module readable at a sitting.

A frame is decoded by the one schema (service/edge/schema.py). An ``auth``
frame is the token awaited during the handshake, a refresh in
PROCESSING_READY (docs/adr/0026-refresh-a-live-sockets-token-with-an-auth-frame.md),
or else a transition the lifecycle refuses, recorded for the audit. A
``message`` frame is recorded in PROCESSING_READY only, within the user's
write budget. A bad frame is answered with an ``error`` frame; past the
budget of bad frames a minute, the socket is closed 4400.
"""

from __future__ import annotations

import uuid
from collections import deque
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from domain.errors import TokenExpired
from service.application import commands
from service.application.auth import AuthError, Principal
from service.edge.effects import (
    Close,
    Effects,
    Outcome,
    Record,
    Recorded,
    Refused,
    Send,
    Wake,
    WakeAt,
    answer_errors,
    error_frame,
)
from service.edge.schema import (
    AuthFrame,
    SchemaError,
    TokenExpiringFrame,
    TokenFrame,
    decode_frame,
    frame_ref,
    server_frame,
)

if TYPE_CHECKING:
    from service.application.budgets import Admission
    from service.edge.expiry import Expiry

BAD_FRAME_WINDOW = 60.0


class ClientFrames:
    """What a connection does with its client's frames and its token's clock."""

    if TYPE_CHECKING:  # the state ConnectionProtocol keeps
        connection_id: str
        session_id: str
        state: str
        live_state: str
        principal: Principal | None
        token: str | None
        auth_frame_refused: str | None
        awaiting_auth: bool
        ending: tuple[int, str] | None
        announcing: int
        expiry: Expiry
        admission: Admission
        verify: Callable[[object], Principal]
        _bad_frames: deque[float]

        @property
        def limits(self) -> Any: ...

        def end(self, code: int, reason: str) -> Effects: ...

    # --- frames from the client --------------------------------------------------

    def receive(self, data: str | bytes, now: float) -> Effects:
        """A frame from the client: text (JSON), or bytes for a binary frame."""
        if self.ending is not None:
            return []
        if self.expiry.expired(now):
            return self._expired()
        if isinstance(data, bytes):
            return self._bad_frame("bad_frame", "frames are JSON text", None, now)
        try:
            frame = decode_frame(data)
        except SchemaError as e:
            kind, ref = frame_ref(data)
            if kind == "auth" and self.awaiting_auth and self.token is None:
                self.token = ""  # an auth frame without a token: unauthenticated
                self.auth_frame_refused = e.message
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
            role=frame.role or "user",
            content=frame.content,
            model=frame.model,
            tokens=frame.token_count,
            metadata=frame.metadata,
            connection_id=self.connection_id,
            token_exp=self.expiry.exp,
        )
        return [Record(command, self._answered(frame.ref))]

    def _answered(self, ref: str | None) -> Callable[[Outcome], Effects]:
        """A message frame's answer: an error frame if it was refused, and the
        socket's end if the refusal was its token's exp passing first."""
        answer = answer_errors(ref)

        def then(outcome: Outcome) -> Effects:
            if isinstance(outcome, Refused) and isinstance(outcome.error, TokenExpired):
                return self.end(Close.UNAUTHENTICATED, "token_expired")
            return answer(outcome)

        return then

    def _on_auth(self, frame: AuthFrame, now: float) -> Effects:
        if self.awaiting_auth and self.token is None:
            self.token = frame.token
            return [Wake()]
        if self.principal is None:
            # A second token while the first is checked: refused, and the
            # attempt recorded like any other refused transition.
            refusal = commands.refuse_transition(
                self.connection_id, "authenticate", "already authenticating"
            )
            return [Record(refusal, answer_errors(frame.ref, "invalid_transition"))]
        if self.state == self.live_state:
            return self._refresh(frame, now)
        # Authenticating twice is a transition the lifecycle refuses: record
        # the attempt for the audit, and tell the client.
        command = commands.authenticate(self.connection_id, self.principal)
        return [Record(command, answer_errors(frame.ref, "invalid_transition"))]

    # --- the token's deadline ----------------------------------------------------

    def _refresh(self, frame: AuthFrame, now: float) -> Effects:
        """A new token on a live socket. One for the same user is recorded
        (``TokenRefreshed``, one of the user's writes) and then holds; one for
        another user ends the socket (4403); one that is not valid is answered with an error (and
        counts as a bad frame), and the current token holds until its exp."""
        assert self.principal is not None
        try:
            principal = self.verify(frame.token)
        except AuthError as e:
            message = f"{why(e)}; the socket's token holds until {self.expiry.exp}"
            return self._bad_frame("unauthenticated", message, frame.ref, now)
        if principal.user_id != self.principal.user_id:
            return self.end(Close.FORBIDDEN, "forbidden: a token for another user")
        # A refresh records an event, so it is one of the user's writes, as a
        # message is: past the budget the socket is closed 4429.
        if self.admission.write(principal.user_id) > 0:
            return self.end(Close.RATE_LIMITED, "rate_limited")
        command = commands.refresh_token(self.connection_id, principal, holds_until=self.expiry.exp)
        self.announcing += 1
        return [Record(command, self._refreshed(principal, frame.ref, now))]

    def _refreshed(
        self, principal: Principal, ref: str | None, now: float
    ) -> Callable[..., Effects]:
        def then(outcome: Outcome) -> Effects:
            self.announcing -= 1
            if self.ending is not None:
                return []
            if isinstance(outcome, Recorded):
                self.principal = principal
                self.expiry.hold(principal.exp, now)
                return [Send(server_frame(TokenFrame(exp=outcome.value))), *self._wake()]
            if isinstance(outcome, Refused) and isinstance(outcome.error, TokenExpired):
                return self.end(Close.UNAUTHENTICATED, "token_expired")
            if isinstance(outcome, Refused) and outcome.error.code == "forbidden":
                return self.end(Close.FORBIDDEN, f"forbidden: {outcome.error.message}"[:100])
            # Refused or not recorded: the current token holds, and its exp
            # (which may have passed meanwhile) is looked at again.
            return answer_errors(ref)(outcome) + self._wake()

        return then

    def tick(self, now: float) -> Effects:
        """The clock reached a deadline asked for with :class:`WakeAt`: warn
        ahead of the token's exp (once live), or end the socket at it."""
        if self.ending is not None:
            return []
        if self.expiry.expired(now):
            return self._expired()
        effects: Effects = []
        if self.state == self.live_state and self.expiry.warning_due(now):
            exp = self.expiry.exp
            assert exp is not None
            effects.append(Send(server_frame(TokenExpiringFrame(exp=exp))))
        return effects + self._wake()

    def _expired(self) -> Effects:
        """The token's exp has passed: the socket ends (4401), once what is
        being recorded on its authority has been announced (the announcement
        asks for the clock again); until then, nothing more is acted on."""
        if self.announcing:
            return []
        return self.end(Close.UNAUTHENTICATED, "token_expired")

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


def why(error: AuthError) -> str:
    """The reason a refused token gives, as a close reason or an error text."""
    return f"unauthenticated: {error}"[:100]


def _new_message_id() -> str:
    return "msg_" + uuid.uuid4().hex
