"""Every error code sessiond answers with, and each one's HTTP status: the
one list that the HTTP error shape, the error frames, the contract documents
and the metrics' labels are built from (no imports, so any layer may read it)."""

from __future__ import annotations

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
    "task_finished": 409,
    "invalid_transition": 409,
    "too_large": 413,
    "unsupported_media_type": 415,
    "upgrade_required": 426,
    "rate_limited": 429,
    "unavailable": 503,
    "internal": 500,
}

# The error codes of error frames that HTTP never answers (PROTOCOL.md,
# "Frames from the server"); an error frame's other codes are HTTP's.
FRAME_ERROR_CODES = ("bad_frame", "unknown_type", "not_ready")
ERROR_CODES = frozenset(STATUS_BY_CODE) | frozenset(FRAME_ERROR_CODES)
