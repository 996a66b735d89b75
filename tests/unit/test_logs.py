"""Log lines: the stock formatter's text, every extra field as key=value, and
the client's IDs byte for byte."""

from __future__ import annotations

import logging
import sys

from service.runtime.logs import KeyValueFormatter

ODD_ID = "sess_mgpresmh_6655kc3b0:a.b-c"


def record(**extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "sessiond.ws", logging.INFO, __file__, 1, "connection %s", ("opened",), None
    )
    rec.__dict__.update(extra)
    return rec


def test_a_line_is_the_stock_format_followed_by_the_fields() -> None:
    rec = record(connection_id=ODD_ID, session_id="s-1", after=0)
    stock = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(rec)
    line = KeyValueFormatter().format(rec)
    assert line == f"{stock} connection_id={ODD_ID} session_id=s-1 after=0"


def test_a_line_without_fields_is_just_the_stock_format() -> None:
    rec = record()
    stock = logging.Formatter("%(asctime)s %(levelname)s %(name)s %(message)s").format(rec)
    assert KeyValueFormatter().format(rec) == stock


def test_an_exception_follows_its_line() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord(
            "sessiond", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    rec.__dict__["connection_id"] = ODD_ID
    lines = KeyValueFormatter().format(rec).splitlines()
    assert lines[0].endswith(f"ERROR sessiond failed connection_id={ODD_ID}")
    assert lines[-1] == "ValueError: boom"
