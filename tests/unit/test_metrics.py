"""The fixed label sets of /metrics and the commit stamps of delivery lag,
without a server (the e2e side is tests/e2e/test_metrics.py)."""

from __future__ import annotations

import pytest

from service.edge.effects import Close
from service.edge.metrics import Metrics, close_labels, error_label, stamped
from service.storage.wire import dumps


@pytest.mark.parametrize(
    ("code", "reason", "labels"),
    [
        (
            4401,
            'unauthenticated: invalid token: Token is missing the "exp" claim',
            ("4401", "unauthenticated"),
        ),
        (4403, "forbidden: session 's-1' belongs to another user", ("4403", "forbidden")),
        (4403, "session_ended", ("4403", "session_ended")),
        (1001, "store unavailable: connection refused", ("1001", "store_unavailable")),
        (1001, "detached: lost", ("1001", "detached")),
        (1000, "normal", ("1000", "normal")),
        (4321, "client_closed", ("other", "client_closed")),
        (1006, "timeout", ("1006", "timeout")),
        # A known reason with a code it is never sent with, and free text.
        (4403, "superseded", ("4403", "other")),
        (4409, 'conn-"1"\nx', ("4409", "other")),
        (9999, "whatever", ("other", "other")),
    ],
)
def test_a_close_is_counted_under_its_code_and_the_head_of_its_reason(
    code: int, reason: str, labels: tuple[str, str]
) -> None:
    assert close_labels(code, reason) == labels


def test_every_close_code_of_the_contract_is_a_label() -> None:
    for name, code in vars(Close).items():
        if not name.startswith("_"):
            assert close_labels(code, "client_closed") == (str(code), "client_closed")


def test_an_unknown_error_code_is_other() -> None:
    assert error_label("session_not_found") == "session_not_found"
    assert error_label("bad_frame") == "bad_frame"
    assert error_label('x"\n') == "other"


def test_a_stamped_event_is_sent_as_the_plain_event() -> None:
    event = {"session_id": "s", "position": 3, "type": "MessageRecorded", "data": {"a": 1}}
    copy = stamped(event, 12.5)
    assert copy.committed_at == 12.5
    assert copy == event
    assert dumps({"type": "event", "event": copy}) == dumps({"type": "event", "event": event})


def test_each_committed_batch_gets_its_own_commit_instant_back() -> None:
    metrics = Metrics(states=[], connections=dict, writer=lambda: None)
    lost, first, second = [1], [2, 3], [4]
    metrics.saved(lost, 1.0, 1.5)
    metrics.saved(first, 2.0, 2.5)
    metrics.saved(second, 3.0, 3.25)
    # The first batch never reached the event loop: skipped, not reused.
    assert metrics.committed_at(first) == 2.5
    assert metrics.committed_at(second) == 3.25
    assert metrics.committed_at([5]) is None
