"""The one schema of the edge (service/edge/schema.py): what it accepts as
declared, what it refuses and with which of the contract's codes."""

from __future__ import annotations

from typing import Any

import orjson
import pytest

from service.edge.schema import (
    MAX_DEPTH,
    CompleteTask,
    CreateSession,
    EventsQuery,
    MessageFrame,
    PostMessage,
    ReportProgress,
    SchemaError,
    SocketQuery,
    StartTask,
    TokenExpiringFrame,
    TokenFrame,
    decode_body,
    decode_frame,
    decode_query,
    server_frame,
)


def nested(depth: int) -> Any:
    value: Any = 1
    for _ in range(depth):
        value = {"a": value}
    return value


def refused(raw: bytes, kind: Any) -> str:
    with pytest.raises(SchemaError) as e:
        decode_body(raw, kind)
    return e.value.code


def test_a_message_is_declared_once_for_http_and_for_frames() -> None:
    body = decode_body(b'{"role": "assistant", "content": "hi", "tokens": 3}', PostMessage)
    frame = decode_frame('{"type": "message", "content": "hi", "tokens": 3, "ref": "r"}')
    assert isinstance(frame, MessageFrame)
    assert (body.content, body.tokens) == (frame.content, frame.tokens)
    assert frame.role == "user"  # a frame's role defaults; a body's is required
    # ``null`` for an optional field is the field left out (ADR 0008).
    unsaid = decode_frame('{"type": "message", "content": "hi", "role": null}')
    assert isinstance(unsaid, MessageFrame) and (unsaid.role or "user") == "user"
    assert refused(b'{"content": "hi"}', PostMessage) == "invalid_body"


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"{not json", "invalid_json"),
        (b"[1]", "invalid_body"),
        (b'{"session_id": 42}', "invalid_id"),
        (b'{"session_id": true}', "invalid_id"),
        (b'{"session_id": ["s-1"]}', "invalid_id"),
        (b'{"session_id": "\\ud800"}', "invalid_id"),
        (b'{"metadata": {"note": "\\udfff"}}', "invalid_body"),
        (b'{"session_id": "has space"}', "invalid_id"),
        (b'{"session_id": ""}', "invalid_id"),
        (b'{"session_id": "ends-in-newline\\n"}', "invalid_id"),
        (b'{"session_id": "' + b"x" * 129 + b'"}', "invalid_id"),
        (b'{"colour": "red"}', "invalid_body"),
        (b'{"metadata": {"n": 9223372036854775808}}', "invalid_body"),
        (b'{"metadata": {"n": 1e400}}', "invalid_body"),
        (b'{"metadata": ' + orjson.dumps(nested(MAX_DEPTH)) + b"}", "invalid_body"),
        (b'{"metadata": ' + b"[" * 5000 + b"]" * 5000 + b"}", "invalid_body"),
    ],
)
def test_what_cannot_be_recorded_as_it_stands_is_refused_with_its_code(
    raw: bytes, code: str
) -> None:
    assert refused(raw, CreateSession) == code


def test_a_refused_id_and_a_lone_surrogate_are_named_in_the_message() -> None:
    with pytest.raises(SchemaError) as wrong_type:
        decode_body(b'{"task_id": 7, "name": "job"}', StartTask)
    assert wrong_type.value.code == "invalid_id"
    assert "task_id must be 1 to 128 characters" in wrong_type.value.message
    assert "got `int`" in wrong_type.value.message
    with pytest.raises(SchemaError) as surrogate:
        decode_body(b'{"role": "user", "content": "a\\ud800"}', PostMessage)
    assert surrogate.value.code == "invalid_body"
    assert "lone surrogate" in surrogate.value.message
    assert "truncated" not in surrogate.value.message
    with pytest.raises(SchemaError) as truncated:
        decode_body(b'{"role": "user", "content": "a', PostMessage)
    assert truncated.value.code == "invalid_json"


def test_free_json_up_to_the_limits_is_accepted_as_sent() -> None:
    metadata = {"deep": nested(MAX_DEPTH - 2), "big": 2**63 - 1, "small": -(2**63)}
    body = decode_body(orjson.dumps({"metadata": metadata}), CreateSession)
    assert body.metadata == metadata
    assert decode_body(b"", CreateSession) == CreateSession()


def containers(count: int, innermost: Any) -> Any:
    """``count`` objects nested in one another, the innermost holding ``innermost``
    (an empty object holds nothing)."""
    value: Any = {} if innermost is None else {"a": innermost}
    for _ in range(count - 1):
        value = {"a": value}
    return value


@pytest.mark.parametrize("innermost", [None, 1, "text"], ids=["empty", "number", "string"])
def test_the_depth_counts_objects_and_arrays_from_the_body_whatever_the_innermost_holds(
    innermost: Any,
) -> None:
    """The body is level 1 and its metadata's object level 2: objects and
    arrays down to level 64 are taken, one more is refused."""
    deepest_allowed = containers(MAX_DEPTH - 1, innermost)
    body = orjson.dumps({"metadata": deepest_allowed})
    assert decode_body(body, CreateSession).metadata == deepest_allowed
    assert refused(orjson.dumps({"metadata": containers(MAX_DEPTH, innermost)}), CreateSession) == (
        "invalid_body"
    )
    frame = {"type": "message", "content": "c", "metadata": containers(MAX_DEPTH, innermost)}
    with pytest.raises(SchemaError) as e:
        decode_frame(orjson.dumps(frame).decode())
    assert e.value.code == "bad_frame"


@pytest.mark.parametrize("literal", [b"NaN", b"Infinity", b"-Infinity"])
def test_a_number_that_is_not_finite_is_invalid_body_not_invalid_json(literal: bytes) -> None:
    """What Python's json.dumps writes for float("nan") is JSON-like, but no
    store can record it: refused as the contract says, invalid_body."""
    assert refused(b'{"done": ' + literal + b"}", ReportProgress) == "invalid_body"
    assert refused(b'{"metadata": {"x": ' + literal + b"}}", CreateSession) == "invalid_body"
    assert refused(b'{"metadata": {"x": ' + literal + b"}", CreateSession) == "invalid_json"


def test_an_amount_past_64_bits_is_refused_however_it_is_written() -> None:
    for written in (b"9223372036854775808", b"9223372036854775808.0", b"1e19"):
        assert refused(b'{"done": ' + written + b"}", ReportProgress) == "invalid_body"
        assert refused(b'{"name": "n", "total": ' + written + b"}", StartTask) == "invalid_body"
    assert decode_body(b'{"done": 9.2e18}', ReportProgress).done == 9.2e18
    assert decode_body(b'{"done": 9223372036854775807}', ReportProgress).done == 2**63 - 1


def test_whole_numbers_stay_whole_and_results_are_checked_too() -> None:
    progress = decode_body(b'{"done": 5, "total": 7.5}', ReportProgress)
    assert (progress.done, type(progress.done)) == (5, int)
    assert refused(b'{"done": true}', ReportProgress) == "invalid_body"
    assert refused(b'{"result": [18446744073709551616]}', CompleteTask) == "invalid_body"
    # Found by the contract tests: JSON does not tell 3.0 from 3, so neither
    # does a count; an amount of work is never negative.
    counted = decode_body(b'{"role": "user", "content": "c", "tokens": 3.0}', PostMessage)
    assert (counted.token_count, type(counted.token_count)) == (3, int)
    assert refused(b'{"role": "user", "content": "c", "tokens": 3.5}', PostMessage) == (
        "invalid_body"
    )
    assert refused(b'{"done": -1}', ReportProgress) == "invalid_body"
    assert refused(b'{"done": 1, "total": -0.5}', ReportProgress) == "invalid_body"


def test_query_values_are_converted_and_bounded() -> None:
    assert decode_query({"after": "5"}, EventsQuery) == EventsQuery(after=5)
    for bad in (
        {"after": "x"},
        {"after": "-1"},
        {"after": str(2**63)},
        {"limit": "1001"},
        {"limit": ""},
    ):
        with pytest.raises(SchemaError) as e:
            decode_query(bad, EventsQuery)
        assert e.value.code == "invalid_query"
    for bad in (
        {},
        {"session_id": ""},
        {"session_id": "a b"},
        {"session_id": "s", "connection_id": ""},
    ):
        with pytest.raises(SchemaError) as e:
            decode_query(bad, SocketQuery)
        assert e.value.code == "invalid_id"


def test_a_whole_number_in_a_query_is_decimal_digits_and_nothing_else() -> None:
    """msgspec reads query text as a number loosely ("1.0", "1e3", and
    "1e-400" as 0); a position or a count is written in decimal digits, as
    an event stream's Last-Event-ID must be."""
    from service.edge.schema import StateQuery

    assert decode_query({"after": "0", "limit": "10"}, EventsQuery) == EventsQuery(
        after=0, limit=10
    )
    for kind, name in ((EventsQuery, "after"), (EventsQuery, "limit"), (StateQuery, "at")):
        for text in ("1.0", "1e3", "1e-400", "-0", "+1", "01", " 1", "1_0", "\u0663"):
            with pytest.raises(SchemaError) as e:
                decode_query({name: text}, kind)
            assert e.value.code == "invalid_query", (name, text)
    with pytest.raises(SchemaError) as e:
        decode_query({"session_id": "s", "after": "2e1"}, SocketQuery)
    assert e.value.code == "invalid_query"


def test_a_declared_query_name_given_twice_is_refused_and_others_are_ignored() -> None:
    from multidict import MultiDict

    for repeated in ("session_id", "connection_id", "after"):
        values = MultiDict([("session_id", "s"), (repeated, "a1"), (repeated, "a1")])
        with pytest.raises(SchemaError) as e:
            decode_query(values, SocketQuery)
        assert (e.value.code, repeated in e.value.message) == ("invalid_query", True)
    with pytest.raises(SchemaError):
        decode_query(MultiDict([("limit", "1"), ("limit", "2")]), EventsQuery)
    ignored = MultiDict([("session_id", "s"), ("utm", "1"), ("utm", "2")])
    assert decode_query(ignored, SocketQuery).session_id == "s"


@pytest.mark.parametrize(
    ("frame", "code"),
    [
        ("{nope", "bad_frame"),
        ('"text"', "bad_frame"),
        ("{}", "bad_frame"),
        ('{"type": "teleport"}', "unknown_type"),
        ('{"type": "message", "content": "x", "ref": 5}', "bad_frame"),
        ('{"type": "message", "content": "x", "metadata": {"n": 1e999}}', "bad_frame"),
        ('{"type": "auth"}', "bad_frame"),
    ],
)
def test_frames_are_refused_with_the_socket_codes(frame: str, code: str) -> None:
    with pytest.raises(SchemaError) as e:
        decode_frame(frame)
    assert e.value.code == code


@pytest.mark.parametrize("kind", ["token", "token_expiring"])
def test_the_servers_token_frames_are_not_client_frames(kind: str) -> None:
    with pytest.raises(SchemaError) as refused:
        decode_frame(orjson.dumps({"type": kind, "exp": 1_900_000_000}))
    assert refused.value.code == "unknown_type"


def test_the_servers_token_frames_are_built_from_their_declarations() -> None:
    assert server_frame(TokenFrame(exp=1_900_000_000)) == {"type": "token", "exp": 1_900_000_000}
    assert server_frame(TokenExpiringFrame(exp=7)) == {"type": "token_expiring", "exp": 7}
