"""What the connection protocol tells its shell to do, and the close codes
of the contract.

Each effect is data. An effect that needs an answer (a command's outcome,
events read from the store) carries ``then``: the protocol's continuation,
which the shell calls with the answer and which returns the next effects.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from domain.errors import DomainError
from service.application.hub import EventFrame
from service.application.writer import Command


class Close:
    """The close codes of docs/PROTOCOL.md (plain ints, as recorded)."""

    NORMAL = 1000
    GOING_AWAY = 1001
    PROTOCOL_ERROR = 1002
    ABNORMAL = 1006
    INVALID_DATA = 1007
    TOO_LARGE = 1009
    INTERNAL = 1011
    TRY_AGAIN_LATER = 1013  # the store is down
    PROTOCOL = 4400
    UNAUTHENTICATED = 4401
    FORBIDDEN = 4403
    SLOW_CONSUMER = 4408
    SUPERSEDED = 4409
    RATE_LIMITED = 4429


Effects = list["Effect"]


# --- what the shell is told to do -----------------------------------------------------


@dataclass(slots=True)
class Send:
    """Send ``frame``; ``error`` is its code when it is an error frame;
    ``data`` is ``frame`` already encoded (an event's, shared by every socket)."""

    frame: dict[str, Any]
    error: str | None = None
    data: bytes | None = None


@dataclass(slots=True)
class Recorded:
    value: Any


@dataclass(slots=True)
class Refused:
    error: DomainError


@dataclass(slots=True)
class Unavailable:
    message: str


Outcome = Recorded | Refused | Unavailable


@dataclass(slots=True)
class Record:
    """Run ``command`` on the writer; call ``then`` with its outcome."""

    command: Command[Any]
    then: Callable[[Outcome], Effects]


@dataclass(slots=True)
class RecordLater:
    """The store could not take this connection's CLOSED (``command``) now:
    record it as soon as it takes writes again."""

    connection_id: str
    command: Command[Any]


@dataclass(slots=True)
class ReadEvents:
    """Read up to ``limit`` session events after ``after`` from the store
    (if the store cannot be read: :meth:`ConnectionProtocol.read_failed`)."""

    after: int
    limit: int
    then: Callable[[list[dict[str, Any]]], Effects]


@dataclass(slots=True)
class Subscribe:
    """Start queueing the session's recorded events for this socket."""


@dataclass(slots=True)
class TakeQueued:
    """Hand ``then`` every event queued so far (the overflow, if any, wins)."""

    then: Callable[[list[EventFrame]], Effects]


@dataclass(slots=True)
class AwaitAuth:
    """Wait for a token (:class:`Wake`) or ``deadline``, then call
    :meth:`ConnectionProtocol.auth_wait_over`."""

    deadline: float


@dataclass(slots=True)
class Wake:
    """End an :class:`AwaitAuth` wait now."""


@dataclass(slots=True)
class WakeAt:
    """Call :meth:`ConnectionProtocol.tick` once the clock reaches
    ``deadline`` (or now, if it has passed); replaces any earlier WakeAt."""

    deadline: float


@dataclass(slots=True)
class FollowLive:
    """From now on, feed each event the hub queues to :meth:`ConnectionProtocol.live`."""


@dataclass(slots=True)
class Closing:
    """End the connection: carry out ``record`` (its CLOSED; None when
    nothing of the connection was recorded), send ``frame`` (if the socket can
    still take one), close with ``code``/``reason``. Done apart from whatever
    else the shell is doing, and only once."""

    code: int
    reason: str
    record: Record | None
    frame: dict[str, Any] | None


Effect = (
    Send
    | Record
    | RecordLater
    | ReadEvents
    | Subscribe
    | TakeQueued
    | AwaitAuth
    | Wake
    | WakeAt
    | FollowLive
    | Closing
)


# Why the WebSocket layer itself closed a socket, by the code it sent.
LAYER_REASONS = {
    Close.PROTOCOL_ERROR: "protocol_error",
    Close.INVALID_DATA: "invalid_utf8",
    Close.TOO_LARGE: "too_large",
    Close.INTERNAL: "internal_error",
}


def peer_close(code: int | None, *, timed_out: bool, layer_error: int | None) -> tuple[int, str]:
    """The code and reason recorded for a close the server did not decide:
    the client's, a drop, a missed pong, or the WebSocket layer refusing a
    frame (``layer_error``: the code aiohttp sent, which is what is recorded)."""
    code = Close.ABNORMAL if code is None else code
    if code == 0:
        # A close frame without a status code (a browser's close() with no
        # arguments; aiohttp reads it as 0, a code RFC 6455 does not have):
        # the server's reply is 1000, so 1000 is what both ends saw.
        code = Close.NORMAL
    if timed_out:
        return code, "timeout"
    if layer_error is not None:
        return layer_error, LAYER_REASONS.get(layer_error, "protocol_error")
    if code == Close.TOO_LARGE:
        return code, "too_large"
    reasons = {
        Close.NORMAL: "normal",
        Close.GOING_AWAY: "client_going_away",
        Close.ABNORMAL: "dropped",
    }
    return code, reasons.get(code, "client_closed")


def error_frame(code: str, message: str, ref: str | None) -> Send:
    frame: dict[str, Any] = {"type": "error", "code": code, "message": message}
    if ref is not None:
        frame["ref"] = ref
    return Send(frame, error=code)


def answer_errors(ref: str | None, code: str | None = None) -> Callable[[Outcome], Effects]:
    """A client frame's command: nothing to say when recorded; else an error
    frame (``code``, or the refusal's own)."""

    def then(outcome: Outcome) -> Effects:
        if isinstance(outcome, Refused):
            return [error_frame(code or outcome.error.code, outcome.error.message, ref)]
        if isinstance(outcome, Unavailable):
            return [error_frame("unavailable", outcome.message, ref)]
        return []

    return then
