"""The domain's errors. Each has a stable snake_case ``code`` (the wire code)."""

from __future__ import annotations


class DomainError(Exception):
    code = "domain_error"

    def __init__(self, message: str) -> None:
        super().__init__(message)
        self.message = message


class InvalidId(DomainError):
    code = "invalid_id"


class InvalidCommand(DomainError):
    """A command carried a value the domain cannot accept (a negative count...)."""

    code = "invalid_body"


class SessionNotFound(DomainError):
    code = "session_not_found"


class SessionEnded(DomainError):
    code = "session_ended"


class SessionOwnedByOther(DomainError):
    code = "session_owned_by_other"


class ConnectionNotFound(DomainError):
    code = "connection_not_found"


class ConnectionIdTaken(DomainError):
    code = "connection_id_taken"


class ConnectionClosed(DomainError):
    """A step of a connection's handshake reached the writer after the
    connection was closed (kicked while it waited for its token): nothing is
    recorded, and the socket ends with the code and reason recorded."""

    code = "connection_closed"

    def __init__(self, message: str, *, close_code: int, close_reason: str) -> None:
        super().__init__(message)
        self.close_code = close_code
        self.close_reason = close_reason


class InvalidTransition(DomainError):
    """The lifecycle refused a transition. The refusal itself was recorded."""

    code = "invalid_transition"

    def __init__(self, message: str, *, transition: str, state: str) -> None:
        super().__init__(message)
        self.transition = transition
        self.state = state


class NotLive(DomainError):
    """What only a live connection may do (a token refresh), asked of one that
    is not live. Nothing is recorded."""

    code = "not_ready"


class TokenExpired(DomainError):
    """A socket's step (its handshake, a refresh, a message) reached the
    writer at or after its token's exp: nothing of it is recorded."""

    code = "token_expired"


class TokenForAnotherUser(DomainError):
    """A connection's token refreshed with a token for someone else."""

    code = "forbidden"


class TaskNotFound(DomainError):
    code = "task_not_found"


class TaskFinished(DomainError):
    code = "task_finished"
