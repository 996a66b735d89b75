"""The HTTP error shape of PROTOCOL.md, and how domain errors map onto it."""

from __future__ import annotations

from aiohttp import web

from service.application.budgets import retry_after_header
from service.storage.wire import dumps

STATUS_BY_CODE = {
    "bad_request": 400,
    "invalid_id": 400,
    "invalid_body": 400,
    "invalid_json": 400,
    "invalid_query": 400,
    "unauthenticated": 401,
    "forbidden": 403,
    "forbidden_origin": 403,
    "not_found": 404,
    "session_not_found": 404,
    "connection_not_found": 404,
    "task_not_found": 404,
    "method_not_allowed": 405,
    "session_owned_by_other": 409,
    "session_ended": 409,
    "connection_id_taken": 409,
    "connection_not_attached": 409,
    "task_finished": 409,
    "invalid_transition": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "upgrade_required": 426,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}


class ApiError(Exception):
    """An answer in the contract's error shape; ``retry_after`` (seconds) becomes
    a ``Retry-After`` header."""

    def __init__(
        self,
        code: str,
        message: str,
        status: int | None = None,
        *,
        retry_after: float | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.message = message
        self.status = status or STATUS_BY_CODE.get(code, 400)
        self.retry_after = retry_after


def error_response(
    code: str, message: str, status: int | None = None, *, retry_after: float | None = None
) -> web.Response:
    headers = None if retry_after is None else {"Retry-After": retry_after_header(retry_after)}
    return web.Response(
        body=dumps({"error": {"code": code, "message": message}}),
        status=status or STATUS_BY_CODE.get(code, 400),
        content_type="application/json",
        headers=headers,
    )
