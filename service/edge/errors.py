"""The HTTP error shape of PROTOCOL.md, and how domain errors map onto it."""

from __future__ import annotations

from aiohttp import web

from service.application.budgets import retry_after_header
from service.edge.codes import STATUS_BY_CODE
from service.storage.wire import dumps


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


# --- requests aiohttp refuses before the application sees them ---------------------


def malformed_request_error(status: int, exc: BaseException | None) -> tuple[str, str, int]:
    """(code, message, status) of the answer to a request aiohttp's parser
    refused (or, with a 5xx status, one that failed outside the application):
    an over-long request line is 414 and an over-long header 431, both
    ``too_large``; a body in a ``Content-Encoding`` this node cannot decode,
    415 ``unsupported_media_type``; anything else malformed, 400
    ``bad_request``. No message repeats an over-long line (it may hold a
    token)."""
    from aiohttp.http_exceptions import ContentEncodingError, HttpProcessingError, LineTooLong

    if status >= 500:
        return "internal", "internal error", status
    if isinstance(exc, LineTooLong):
        line, limit = exc.args[0], exc.args[1]
        head = line[:8].encode() if isinstance(line, str) else bytes(line[:8])
        if head.startswith((b"/", b"*")) or head.lower().startswith(b"http"):
            return "too_large", f"the request target is longer than {limit} bytes", 414
        return "too_large", f"a header is longer than {limit} bytes", 431
    if isinstance(exc, ContentEncodingError):
        # aiohttp's text goes on to ask for a package on the server: the
        # client is told which encoding, no more.
        which = str(exc.message).split(". ", 1)[0]
        return (
            "unsupported_media_type",
            f"the body's encoding is not one this node reads: {which}"[:200],
            415,
        )
    if isinstance(exc, HttpProcessingError):
        reason = str(exc.message or "").splitlines()[0].strip() if exc.message else ""
        return "bad_request", f"malformed HTTP request: {reason or 'unreadable'}"[:240], 400
    return "bad_request", "malformed HTTP request", status


class _ContractRequestHandler(web.RequestHandler):
    """aiohttp's per-connection protocol, answering what its parser refuses
    in the contract's error shape (aiohttp writes ``text/plain`` there)."""

    def handle_error(
        self,
        request: web.BaseRequest,
        status: int = 500,
        exc: BaseException | None = None,
        message: str | None = None,
    ) -> web.StreamResponse:
        # aiohttp's own: logs the refusal (service/runtime/logs.py's
        # ClientJunk turns a malformed request into one INFO line), and
        # raises if part of a response has already left.
        super().handle_error(request, status, exc, message)
        code, text, status = malformed_request_error(status, exc)
        response = error_response(code, text, status)
        response.force_close()
        return response


class _ContractServer(web.Server):
    def __call__(self) -> web.RequestHandler:
        return _ContractRequestHandler(self, loop=self._loop, **self._kwargs)


def answer_malformed_requests_in_the_contracts_shape(server: web.Server) -> None:
    """Make ``server`` (an ``AppRunner``'s, after ``setup``) answer the
    requests its parser refuses with the contract's error body: PROTOCOL.md
    says every non-2xx answer has it.

    aiohttp offers no setting for the protocol class an ``AppRunner``'s
    server makes for each connection, so the server becomes an instance of
    a subclass whose only change is that class (same state, same layout).
    """
    server.__class__ = _ContractServer
