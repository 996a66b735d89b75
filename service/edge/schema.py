"""The one schema of the edge: every HTTP body, query and WebSocket frame.

Each is a msgspec ``Struct``: its fields are declared once, with their types
and bounds, unknown fields are refused, and decoding checks everything in
one pass (about three times faster than the hand-written checks it replaced;
docs/adr/0023-declare-the-edge-once-with-msgspec.md). HTTP and WebSocket
share the declarations: a message's fields are ``MessageFields`` whether it
arrives as ``POST .../messages`` or as a ``message`` frame. The same Structs
export the JSON Schema of the contract's documents.

What the store cannot record as it stands is refused here, never later in a
batch where it would fail its neighbours too: JSON nested deeper than
``MAX_DEPTH``, integers outside the signed 64-bit range, and numbers that are
not finite (msgspec refuses those while decoding).

A refusal is a :class:`SchemaError` carrying the contract's code
(``invalid_json``, ``invalid_body``, ``invalid_id``, ``invalid_query``; a
frame's is ``bad_frame`` or ``unknown_type``) and msgspec's message, which
names the field (``Expected `str`, got `int` - at `$.content```).
"""

from __future__ import annotations

from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect

from domain.ids import ID_PATTERN
from domain.session import MESSAGE_ROLES

T = TypeVar("T")

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1
MAX_DEPTH = 64

ID_RULE = "must be 1 to 128 characters from [A-Za-z0-9._:-]"
ID = Annotated[
    str,
    msgspec.Meta(
        # (?!\n): a Python ``$`` also matches before a final newline.
        pattern=f"^{ID_PATTERN.pattern}(?!\\n)$",
        description=f"{ID_RULE}, kept byte for byte",
    ),
]
Position = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
Count = Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
# A whole number stays whole (``5``, not ``5.0``) in what is recorded.
Number = Annotated[int, msgspec.Meta(ge=INT64_MIN, le=INT64_MAX)] | float
Role = Literal["user", "assistant", "system"]
assert set(Role.__args__) == set(MESSAGE_ROLES)  # type: ignore[attr-defined]
JsonObject = dict[str, Any]


class SchemaError(Exception):
    """Input the schema refuses: ``code`` is the contract's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_json(value: Any, depth: int = 1) -> None:
    """Refuse free JSON (``metadata``, ``result``) the store could not record:
    nested deeper than MAX_DEPTH, or an integer outside 64 bits."""
    if depth > MAX_DEPTH:
        raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
    if type(value) is int:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("an integer outside the signed 64-bit range")
    elif type(value) is dict:
        for item in value.values():
            check_json(item, depth + 1)
    elif type(value) is list:
        for item in value:
            check_json(item, depth + 1)


class Body(msgspec.Struct, forbid_unknown_fields=True, kw_only=True):
    """A JSON request body: unknown fields refused. A body with free JSON
    in it checks that in its ``__post_init__``."""


# --- HTTP bodies ---------------------------------------------------------------------


class CreateSession(Body):
    session_id: ID | None = None
    metadata: JsonObject | None = None

    def __post_init__(self) -> None:
        if self.metadata:
            check_json(self.metadata)


class MessageFields(Body):
    """A message, over HTTP or in a ``message`` frame."""

    content: str
    message_id: ID | None = None
    model: str | None = None
    tokens: Count | None = None
    metadata: JsonObject | None = None

    def __post_init__(self) -> None:
        if self.metadata:
            check_json(self.metadata)


class PostMessage(MessageFields, kw_only=True):
    role: Role


class StartTask(Body):
    name: str
    task_id: ID | None = None
    total: Number | None = None


class ReportProgress(Body):
    done: Number
    total: Number | None = None
    note: str | None = None


class CompleteTask(Body):
    result: Any = None

    def __post_init__(self) -> None:
        check_json(self.result)


class FailTask(Body):
    error: str


# --- HTTP queries (values arrive as text and are converted) ----------------------------


class Query(msgspec.Struct, kw_only=True):
    """Query values; unknown names are ignored (cache busters, tracing tags)."""


class ListSessionsQuery(Query):
    limit: Annotated[int, msgspec.Meta(ge=1, le=500)] = 50
    cursor: str | None = None


class EventsQuery(Query):
    after: Position = 0
    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 100


class StateQuery(Query):
    at: Annotated[int, msgspec.Meta(ge=1, le=INT64_MAX)] | None = None


class StreamQuery(Query):
    """``GET /v1/sessions/{id}/stream``: the last position already seen (a
    ``Last-Event-ID`` header, when present, is taken instead)."""

    after: Position = 0


class SocketQuery(Query):
    session_id: ID
    connection_id: ID | None = None
    after: Position = 0


# --- WebSocket frames from the client ------------------------------------------------


class AuthFrame(msgspec.Struct, tag="auth", tag_field="type", forbid_unknown_fields=True):
    token: str
    ref: str | None = None


class MessageFrame(MessageFields, tag="message", tag_field="type", kw_only=True):
    role: Role = "user"
    ref: str | None = None


ClientFrame = AuthFrame | MessageFrame
FRAME_TYPES = ("auth", "message")


# --- WebSocket frames from the server --------------------------------------------------
# Declared for what they say, and built from these declarations; they are not
# client frames (``decode_frame`` refuses them as ``unknown_type``).

UnixSeconds = Annotated[int, msgspec.Meta(ge=0, description="Unix time, in seconds")]


class TokenFrame(msgspec.Struct, tag="token", tag_field="type"):
    """A refresh (an ``auth`` frame in PROCESSING_READY) was recorded: the
    socket's authority now ends at ``exp``."""

    exp: UnixSeconds


class TokenExpiringFrame(msgspec.Struct, tag="token_expiring", tag_field="type"):
    """The socket's token ends at ``exp``: refresh before then, or the socket
    is closed 4401 ``token_expired``."""

    exp: UnixSeconds


ServerFrame = TokenFrame | TokenExpiringFrame


def server_frame(frame: ServerFrame) -> dict[str, Any]:
    """A declared server frame as the JSON object it is sent as."""
    built: dict[str, Any] = msgspec.to_builtins(frame)
    return built


# --- decoding ----------------------------------------------------------------------------

_decoders: dict[Any, msgspec.json.Decoder[Any]] = {}


def _decoder(kind: Any) -> msgspec.json.Decoder[Any]:
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    return decoder


_ids_of: dict[Any, frozenset[str]] = {}


def _id_fields(kind: Any) -> frozenset[str]:
    """The fields of ``kind`` declared as IDs (text with a pattern)."""
    known = _ids_of.get(kind)
    if known is not None:
        return known
    info = msgspec.inspect.type_info(kind)
    structs = info.types if isinstance(info, msgspec.inspect.UnionType) else (info,)
    fields = [f for struct in structs for f in getattr(struct, "fields", ())]
    names: set[str] = set()
    for field in fields:
        kinds = (
            field.type.types if isinstance(field.type, msgspec.inspect.UnionType) else (field.type,)
        )
        kinds = tuple(k.type if isinstance(k, msgspec.inspect.Metadata) else k for k in kinds)
        if any(isinstance(k, msgspec.inspect.StrType) and k.pattern for k in kinds):
            names.add(field.encode_name)
    known = _ids_of[kind] = frozenset(names)
    return known


def _refused_id(kind: Any, message: str) -> str | None:
    """The ID field msgspec refused a well-typed string in (or found
    missing): the contract's ``invalid_id``, not a value of the wrong type."""
    if message.startswith("Object missing required field `"):
        field = message.split("`")[1]
    elif "got `" in message or " - at `$." not in message:
        return None
    else:
        field = message.rsplit("`$.", 1)[1].rstrip("`")
    return field if field in _id_fields(kind) else None


def _refusal(kind: Any, error: msgspec.ValidationError, code: str) -> SchemaError:
    message = str(error)
    field = _refused_id(kind, message)
    if field is None:
        return SchemaError(code, message)
    return SchemaError("invalid_id", f"{field} {ID_RULE}")


def decode_body(raw: bytes, kind: type[T]) -> T:
    """A JSON body as ``kind``; an empty body is ``{}``."""
    if not raw.strip():
        raw = b"{}"
    try:
        result: T = _decoder(kind).decode(raw)
        return result
    except msgspec.ValidationError as e:
        raise _refusal(kind, e, "invalid_body") from None
    except msgspec.DecodeError as e:
        raise SchemaError("invalid_json", f"the body is not valid JSON: {e}") from None
    except RecursionError:
        raise SchemaError("invalid_body", f"JSON nested deeper than {MAX_DEPTH} levels") from None


def decode_query(values: Any, kind: type[T]) -> T:
    """Query values (a mapping of text; the first of repeated names) as
    ``kind``. An empty value is left out, so it takes the default, except
    where an ID is expected: an empty ID is refused."""
    ids = _id_fields(kind)
    given: dict[str, str] = {}
    for name, value in values.items():
        if (value != "" or name in ids) and name not in given:
            given[name] = value
    try:
        return msgspec.convert(given, kind, strict=False)
    except msgspec.ValidationError as e:
        raise _refusal(kind, e, "invalid_query") from None


def decode_frame(data: str | bytes) -> AuthFrame | MessageFrame:
    """A client frame; SchemaError ``bad_frame`` or ``unknown_type``."""
    try:
        frame: AuthFrame | MessageFrame = _decoder(ClientFrame).decode(data)
        return frame
    except msgspec.ValidationError as e:
        message = str(e)
        if message.startswith("Invalid value") and message.endswith("`$.type`"):
            raise SchemaError("unknown_type", f"unknown frame type; known: {FRAME_TYPES}") from None
        raise SchemaError("bad_frame", _refusal(ClientFrame, e, "bad_frame").message) from None
    except msgspec.DecodeError:
        raise SchemaError("bad_frame", "the frame is not valid JSON") from None
    except RecursionError:
        raise SchemaError("bad_frame", f"JSON nested deeper than {MAX_DEPTH} levels") from None


def frame_ref(data: str | bytes) -> tuple[str | None, str | None]:
    """The ``type`` and ``ref`` of a frame the schema refused, where they are
    strings (the ``ref`` is echoed in the error; an ``auth`` frame that is
    wrong ends the handshake)."""
    try:
        raw = msgspec.json.decode(data)
    except (msgspec.DecodeError, RecursionError):
        return None, None
    if not isinstance(raw, dict):
        return None, None
    kind, ref = raw.get("type"), raw.get("ref")
    return (kind if isinstance(kind, str) else None), (ref if isinstance(ref, str) else None)


# Built now, so a declaration msgspec cannot compile fails at import, not on a request.
for _kind in (CreateSession, PostMessage, StartTask, ReportProgress, CompleteTask, FailTask):
    _decoder(_kind)
_decoder(ClientFrame)
