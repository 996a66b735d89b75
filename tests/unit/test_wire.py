"""Wire timestamps: the fast formatter says exactly what strftime says."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

from hypothesis import given
from hypothesis import strategies as st

from service.storage.wire import timestamp

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
