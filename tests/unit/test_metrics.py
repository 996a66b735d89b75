"""The fixed label sets of /metrics, without a server (the e2e side is
tests/e2e/test_metrics.py)."""

from __future__ import annotations

import pytest

from service.edge.effects import Close
from service.edge.metrics import close_labels, error_label


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
