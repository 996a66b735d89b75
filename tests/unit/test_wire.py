"""Wire timestamps: the fast formatter says exactly what strftime says; a
spliced JSON line says exactly what the generic encoding says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import orjson
from hypothesis import given
from hypothesis import strategies as st

from service.storage.wire import _line_type, json_line_from_row4, timestamp, wire_from_row4

instants = st.datetimes(
    min_value=datetime(1970, 1, 1), max_value=datetime(2200, 1, 1), timezones=st.just(UTC)
)
offsets = st.integers(-12 * 60, 14 * 60).map(lambda m: timezone(timedelta(minutes=m)))


@given(instant=instants, offset=offsets, shift=st.booleans())
def test_timestamps_are_utc_with_six_digit_microseconds(
    instant: datetime, offset: timezone, shift: bool
) -> None:
    value = instant.astimezone(offset) if shift else instant
    assert timestamp(value) == instant.strftime("%Y-%m-%dT%H:%M:%S.%fZ")


def test_consecutive_timestamps_in_and_across_a_second() -> None:
    base = datetime(2026, 11, 25, 14, 59, 59, 999_999, tzinfo=UTC)
    assert [timestamp(base + timedelta(microseconds=i)) for i in range(3)] == [
        "2026-11-25T14:59:59.999999Z",
        "2026-11-25T15:00:00.000000Z",
        "2026-11-25T15:00:00.000001Z",
    ]
    assert timestamp(None) is None


json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**63), 2**63 - 1)
    | st.floats(allow_nan=False, allow_infinity=False)
    | st.text(),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3)
    ),
    max_leaves=8,
)
MESSAGE = "domain.session:Session.MessageRecorded"


@given(
    at=instants,
    whole_second=st.booleans(),
    content=st.text(),
    metadata=st.none() | st.dictionaries(st.text(max_size=8), json_values, max_size=4),
    position=st.integers(1, 2**62),
    client_id=st.sampled_from(["s", "a:b.c-d_e", "sess_0123456789ab0123456789abcdef0123"]),
)
def test_a_spliced_json_line_is_the_generic_encoding_byte_for_byte(
    at: datetime,
    whole_second: bool,
    content: str,
    metadata: dict[str, object] | None,
    position: int,
    client_id: str,
) -> None:
    """A stored state as the store writes it (orjson, the timestamp first):
    the spliced line is exactly the decoded-and-encoded one."""
    if whole_second:
        at = at.replace(microsecond=0)  # orjson writes no fraction then
    state = {
        "timestamp": at,
        "message_id": "m",
        "role": "user",
        "content": content,
        "model": None,
        "tokens": None,
        "metadata": metadata,
        "user_id": "u",
        "connection_id": None,
    }
    row = (f"session:{client_id}", position, MESSAGE, orjson.dumps(state))
    assert _line_type(MESSAGE) is not None  # this row is spliced
    assert json_line_from_row4(row) == orjson.dumps(wire_from_row4(row)) + b"\n"


def test_rows_the_splice_cannot_read_take_the_generic_path() -> None:
    at = orjson.dumps(datetime(2026, 1, 2, 3, 4, 5, 6, tzinfo=UTC)).decode()
    rows = [
        # the created event carries its topic, which is not data
        (
            "session:s",
            1,
            "domain.session:Session.Created",
            f'{{"timestamp":{at},"originator_topic":"x"}}',
        ),
        # a state written with the timestamp elsewhere, or another offset
        ("session:s", 2, MESSAGE, f'{{"role":"user","timestamp":{at}}}'),
        ("session:s", 3, MESSAGE, '{"timestamp":"2026-01-02T03:04:05.000006+02:00","a":1}'),
        # no data at all; an event class this code does not know
        ("session:s", 4, MESSAGE, f'{{"timestamp":{at}}}'),
        ("session:s", 5, "domain.session:Session.FromTheFuture", f'{{"timestamp":{at},"z":[1]}}'),
    ]
    for stream, position, topic, state in rows:
        row = (stream, position, topic, state.encode())
        assert json_line_from_row4(row) == orjson.dumps(wire_from_row4(row)) + b"\n"
    assert _line_type("domain.session:Session.Created") is None
    assert _line_type("domain.session:Session.FromTheFuture") is None
