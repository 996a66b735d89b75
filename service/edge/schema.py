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

import json
import re
from typing import Annotated, Any, Literal, TypeVar

import msgspec
import msgspec.inspect

from domain.ids import ID_PATTERN
from domain.session import MESSAGE_ROLES
from service.application.auth import utf8_text
from service.edge.codes import ERROR_CODES

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
# A count given as a whole float (``3.0``, a whole number to JSON Schema)
# is taken as the integer it is. The float's bound is the largest float
# below 2**63, inclusive: the float nearest INT64_MAX is 2**63 itself, which
# ``le=INT64_MAX`` (compared as floats) would let through to become an
# integer one past the range. An exclusive bound at 2**63 says the same to
# the decoder, but a tester that makes integers from a whole-number branch
# (Schemathesis) reads it as "below 2**63 as a float" and generates integers
# past INT64_MAX that the server refuses.
WHOLE_FLOAT_MAX = 9223372036854774784.0  # math.nextafter(2.0**63, 0)
Count = (
    Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    | Annotated[float, msgspec.Meta(ge=0, le=WHOLE_FLOAT_MAX, multiple_of=1)]
)
# An amount of a task's work: a whole number stays whole (``5``, not ``5.0``)
# in what is recorded; never negative; within 64 bits however it is written
# (``1e19`` is a whole number past the range to JSON Schema as to the store).
Amount = (
    Annotated[int, msgspec.Meta(ge=0, le=INT64_MAX)]
    | Annotated[float, msgspec.Meta(ge=0, lt=float(2**63))]
)
Role = Literal["user", "assistant", "system"]
assert set(Role.__args__) == set(MESSAGE_ROLES)  # type: ignore[attr-defined]
# Free JSON (metadata, a task's result): any JSON value, numbers within 64
# bits, nested at most MAX_DEPTH deep (checked by check_json).
JSON_VALUE = "#/components/schemas/JsonValue"
JsonObject = Annotated[
    dict[str, Any],
    msgspec.Meta(extra_json_schema={"additionalProperties": {"$ref": JSON_VALUE}}),
]
JsonAny = Annotated[Any, msgspec.Meta(extra_json_schema={"$ref": JSON_VALUE})]


def json_value_schema() -> dict[str, Any]:
    """The JSON Schema of one free JSON value (what check_json allows, but
    for the depth, which JSON Schema cannot say)."""
    ref = {"$ref": JSON_VALUE}
    return {
        "description": f"any JSON value; numbers within 64 bits; at most {MAX_DEPTH} deep",
        "anyOf": [
            {"type": "null"},
            {"type": "boolean"},
            {"type": "string"},
            {"type": "number", "minimum": INT64_MIN, "maximum": INT64_MAX},
            {"type": "array", "items": ref},
            {"type": "object", "additionalProperties": ref},
        ],
    }


class SchemaError(Exception):
    """Input the schema refuses: ``code`` is the contract's error code."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def check_json(value: Any, depth: int = 2) -> None:
    """Refuse free JSON (``metadata``, ``result``) the store could not record:
    nested deeper than MAX_DEPTH, or an integer outside 64 bits (and, so that
    the document can say it, any number outside that range).

    The depth counts objects and arrays, the body (or frame) itself being
    level 1, so a field's value is at level 2 (``depth``); a plain value adds
    no level. A body is refused when any object or array in it is deeper
    than MAX_DEPTH, whatever it holds."""
    if type(value) is int or type(value) is float:
        if not INT64_MIN <= value <= INT64_MAX:
            raise ValueError("a number outside the signed 64-bit range")
    elif type(value) is dict or type(value) is list:
        if depth > MAX_DEPTH:
            raise ValueError(f"JSON nested deeper than {MAX_DEPTH} levels")
        for item in value.values() if type(value) is dict else value:
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

    @property
    def token_count(self) -> int | None:
        """``tokens`` as the whole number it is (``3.0`` is 3)."""
        return None if self.tokens is None else int(self.tokens)


class PostMessage(MessageFields, kw_only=True):
    role: Role


class StartTask(Body):
    name: str
    task_id: ID | None = None
    total: Amount | None = None


class ReportProgress(Body):
    done: Amount
    total: Amount | None = None
    note: str | None = None


class CompleteTask(Body):
    result: JsonAny = None

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


class ConnectionEventsQuery(EventsQuery):
    """A connection's lifecycle: whole in one answer unless it is long (a
    socket that refreshed its token hundreds of times); then paged like a
    session's history."""

    limit: Annotated[int, msgspec.Meta(ge=1, le=1000)] = 1000


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
    # Optional in a frame, and ``null`` means absent (ADR 0008): a user's
    # either way (the socket records it so).
    role: Role | None = "user"
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


class WelcomeFrame(msgspec.Struct, tag="welcome", tag_field="type"):
    """The upgrade completed: the connection is ACCEPTED under its one ID."""

    connection_id: ID
    session_id: ID
    state: str


class StateFrame(msgspec.Struct, tag="state", tag_field="type", kw_only=True):
    """A transition, recorded before this frame is sent. Which fields come
    with it depends on the state: ``user_id`` with AUTHENTICATED;
    ``session_id`` and ``superseded`` with SERVICES_READY; ``session_id`` and
    ``position`` (the last position sent) with PROCESSING_READY; ``code`` and
    ``reason`` with CLOSED."""

    connection_id: ID
    state: str
    user_id: str | None = None
    session_id: ID | None = None
    superseded: list[ID] | None = None
    position: Annotated[int, msgspec.Meta(ge=0)] | None = None
    code: int | None = None
    reason: str | None = None


# Every timestamp of an answer or a frame: the same pattern in both documents.
Timestamp = Annotated[
    str,
    msgspec.Meta(
        pattern=r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}\.\d{6}Z$",
        description="RFC 3339, UTC, microseconds",
        examples=["2026-11-22T06:37:37.123456Z"],
    ),
]


class EventFrameBody(msgspec.Struct, kw_only=True):
    """A recorded session event, the same object as over HTTP."""

    session_id: ID
    position: Annotated[int, msgspec.Meta(ge=1)]
    type: str
    at: Timestamp
    data: dict[str, Any]


class EventFrame(msgspec.Struct, tag="event", tag_field="type"):
    """The session's next position: each exactly once, in order, no gaps."""

    event: EventFrameBody


class ErrorFrame(msgspec.Struct, tag="error", tag_field="type", kw_only=True):
    """A frame the server could not act on; ``ref`` echoes the frame's."""

    code: Annotated[
        str,
        msgspec.Meta(
            description=(
                "snake_case, stable: `bad_frame`, `unknown_type`, `not_ready`, "
                "`invalid_transition`, `unavailable` (the store is down); `unauthenticated` "
                "(a refresh whose token was refused: the current one holds); or a refused "
                "message's own code, as over HTTP (for example `session_ended`, `forbidden`, "
                "`invalid_body`)"
            ),
            extra_json_schema={"enum": sorted(ERROR_CODES)},
        ),
    ]
    message: str
    ref: str | None = None


ServerFrame = TokenFrame | TokenExpiringFrame
# Every frame the server sends, for the protocol's document and its tests.
SERVER_FRAMES = (WelcomeFrame, StateFrame, EventFrame, ErrorFrame, TokenFrame, TokenExpiringFrame)


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
    """The ID field msgspec refused a value in (or found missing): the
    contract refuses anything but an ID there with ``invalid_id``, a value
    of another JSON type (``7``, ``true``, an array) included."""
    if message.startswith("Object missing required field `"):
        field = message.split("`")[1]
    elif " - at `$." in message:
        field = message.rsplit("`$.", 1)[1].rstrip("`")
    else:
        return None
    return field if field in _id_fields(kind) else None


def _refusal(kind: Any, error: msgspec.ValidationError, code: str) -> SchemaError:
    message = str(error)
    field = _refused_id(kind, message)
    if field is None:
        return SchemaError(code, message)
    if "got `" in message:
        # Not a string at all: msgspec's message says which type came.
        return SchemaError("invalid_id", f"{field} {ID_RULE}, as a JSON string ({message})")
    return SchemaError("invalid_id", f"{field} {ID_RULE}")


def _undecodable(raw: bytes, kind: Any, error: msgspec.DecodeError) -> SchemaError:
    """What is wrong with a body msgspec could not decode. JSON's grammar
    allows an escaped lone surrogate (``"\\ud800"``), which msgspec refuses
    with a message about truncated input, although the body is whole. Such a
    string is no Unicode text, so it cannot be recorded: ``invalid_body``
    saying so (``invalid_id`` in an ID field), as for any value the store
    cannot hold. The standard library reads such a body; it runs only for a
    body already refused.

    A body that is JSON but for a number that is not finite (``NaN``,
    ``Infinity``: what Python's ``json.dumps`` writes for them) holds what
    the contract lists among what the store cannot record: ``invalid_body``
    too."""
    not_json = SchemaError("invalid_json", f"the body is not valid JSON: {error}")
    not_finite: list[str] = []
    try:
        value = json.loads(raw, parse_constant=not_finite.append)
    except (ValueError, RecursionError):
        return not_json
    if not_finite:
        return SchemaError(
            "invalid_body", f"a number that is not finite ({not_finite[0]}) cannot be recorded"
        )
    for field in sorted(_id_fields(kind)) if isinstance(value, dict) else ():
        found = value.get(field)
        if isinstance(found, str) and not utf8_text(found):
            return SchemaError(
                "invalid_id", f"{field} {ID_RULE}, and holds an escaped lone surrogate"
            )
    if not _all_text(value):
        return SchemaError(
            "invalid_body",
            "the body holds an escaped lone surrogate (a \\ud800 to \\udfff escape "
            "without its pair): a string that is not Unicode text cannot be recorded",
        )
    return not_json


def _all_text(value: Any, depth: int = 1) -> bool:
    """Whether every string in ``value`` (keys too) is Unicode text."""
    if type(value) is str:
        return utf8_text(value)
    if depth > MAX_DEPTH:
        return True
    if type(value) is dict:
        return all(utf8_text(k) and _all_text(v, depth + 1) for k, v in value.items())
    if type(value) is list:
        return all(_all_text(v, depth + 1) for v in value)
    return True


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
        raise _undecodable(raw, kind, e) from None
    except RecursionError:
        raise SchemaError("invalid_body", f"JSON nested deeper than {MAX_DEPTH} levels") from None


def decode_query(values: Any, kind: type[T]) -> T:
    """Query values (a mapping of text) as ``kind``. An empty value is a
    value: ``?limit=`` is not a number, and an empty ID is refused. A name
    ``kind`` declares, given twice, is refused whatever the values: which
    session a socket attaches to, or where a page starts, is never a guess
    (ADR 0047). Names it does not declare are ignored."""
    declared, whole = _query_names(kind)
    given: dict[str, str] = {}
    for name, value in values.items():
        if name in given and name in declared:
            raise SchemaError("invalid_query", f"the query gives {name!r} more than once")
        if name in whole and not _DECIMAL.fullmatch(value):
            # msgspec's reading of query text as a number also takes "1.0",
            # "1e3" and "1e-400" (as 0): a position or a count is written in
            # decimal digits, as Last-Event-ID must be.
            raise SchemaError("invalid_query", f"{name} must be a whole number in decimal digits")
        given.setdefault(name, value)
    try:
        return msgspec.convert(given, kind, strict=False)
    except msgspec.ValidationError as e:
        raise _refusal(kind, e, "invalid_query") from None


# Each query kind's names, and those of them whose values are integers.
_QUERY_NAMES: dict[type[Any], tuple[frozenset[str], frozenset[str]]] = {}
# A whole number as a query writes it: ASCII digits, no sign but a minus,
# no leading zero (a minus is then refused by the field's own bound).
_DECIMAL = re.compile(r"0|-?[1-9][0-9]*")


def _query_names(kind: type[Any]) -> tuple[frozenset[str], frozenset[str]]:
    names = _QUERY_NAMES.get(kind)
    if names is None:
        info = msgspec.inspect.type_info(kind)
        assert isinstance(info, msgspec.inspect.StructType)
        names = (
            frozenset(f.encode_name for f in info.fields),
            frozenset(f.encode_name for f in info.fields if _is_integer(f.type)),
        )
        _QUERY_NAMES[kind] = names
    return names


def _is_integer(t: msgspec.inspect.Type) -> bool:
    if isinstance(t, msgspec.inspect.Metadata):
        return _is_integer(t.type)
    if isinstance(t, msgspec.inspect.UnionType):
        return any(_is_integer(member) for member in t.types)
    return isinstance(t, msgspec.inspect.IntType)


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
        # JSON's grammar holds numbers no float or 64-bit integer can (1e999)
        # and escaped lone surrogates, which msgspec refuses to decode; the
        # standard library reads them, so such a frame's ``ref`` is echoed
        # too. It runs only for a frame already refused.
        try:
            raw = json.loads(data)
        except RecursionError:
            raw = _top_level_strings(data)
        except ValueError:
            return None, None
    if not isinstance(raw, dict):
        return None, None
    kind, ref = raw.get("type"), raw.get("ref")
    return (
        kind if isinstance(kind, str) else None,
        ref if isinstance(ref, str) and utf8_text(ref) else None,
    )


# What a scan of JSON text needs to see: a string, a run of openers or of
# closers (one match however deep it goes), a colon or a comma.
_JSON_TOKEN = re.compile(r'"[^"\\]*(?:\\.[^"\\]*)*"|[{\[][{\[\s]*|[}\]][}\]\s]*|[:,]')
_SCAN_TOKENS = 10_000


def _top_level_strings(data: str | bytes) -> dict[str, str]:
    """The members of a JSON object whose values are strings, at its top
    level only, read without recursion: a frame nested deeper than any
    parser's stack still has its ``type`` and ``ref`` (a scan of the text
    that keeps count of the depth; a later member wins, as in msgspec). The
    scan gives up after ``_SCAN_TOKENS`` tokens, so a frame made to be slow
    to scan costs little; its ``ref`` may then go unechoed."""
    if isinstance(data, bytes):
        try:
            data = data.decode()
        except UnicodeDecodeError:
            return {}
    found: dict[str, str] = {}
    depth, last, key = 0, "", None
    for count, match in enumerate(_JSON_TOKEN.finditer(data)):
        if count == _SCAN_TOKENS:
            return {}
        token = match.group()
        first = token[0]
        if first == '"':
            if depth == 1:
                try:
                    text = json.loads(token)
                except ValueError:  # a bad escape: no text to take
                    text = None
                if text is None:
                    key = None
                elif last in ("{", ","):
                    key = text
                elif last == ":" and key is not None:
                    found[key] = text
            last = '"'
            continue
        if first in "{[":
            depth += token.count("{") + token.count("[")
        elif first in "}]":
            depth -= token.count("}") + token.count("]")
        last = token.rstrip()[-1]
    return found


# Built now, so a declaration msgspec cannot compile fails at import, not on a request.
for _kind in (CreateSession, PostMessage, StartTask, ReportProgress, CompleteTask, FailTask):
    _decoder(_kind)
_decoder(ClientFrame)
