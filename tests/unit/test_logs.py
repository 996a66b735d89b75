"""Log lines: text (``time level logger message key=value``) with values
quoted when they need it, and JSON lines; times in UTC with their zone; a
client's ID byte for byte, and never a forged line."""

from __future__ import annotations

import json
import logging
import shlex
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import IO, Any

import pytest

from service.cli.main import main
from service.runtime.logs import (
    BufferedStreamHandler,
    JsonFormatter,
    KeyValueFormatter,
    OfferedSubprotocols,
    configure,
    formatter,
    text_value,
)
from service.runtime.settings import Settings, SettingsError

ODD_ID = "sess_mgpresmh_6655kc3b0:a.b-c"


def record(msg: str = "connection %s", *args: object, **extra: object) -> logging.LogRecord:
    rec = logging.LogRecord(
        "sessiond.ws", logging.INFO, __file__, 1, msg, args or ("opened",), None
    )
    rec.__dict__.update(extra)
    return rec


def utc(stamp: str) -> datetime:
    parsed = datetime.fromisoformat(stamp)
    assert parsed.utcoffset() == timedelta(0), stamp
    return parsed


def test_a_text_line_is_time_level_logger_message_then_the_fields() -> None:
    rec = record(connection_id=ODD_ID, session_id="s-1", after=0)
    stamp, rest = KeyValueFormatter().format(rec).split(" ", 1)
    assert (
        rest == f"INFO sessiond.ws connection opened connection_id={ODD_ID} session_id=s-1 after=0"
    )
    assert stamp.endswith("Z")
    assert utc(stamp).timestamp() == pytest.approx(rec.created, abs=0.001)


def test_a_text_line_without_fields_ends_with_its_message() -> None:
    assert KeyValueFormatter().format(record()).endswith(" INFO sessiond.ws connection opened")


@pytest.mark.parametrize(
    "value",
    ['a reason with "quotes" in it', "", "key=value", "two\nlines", "back\\slash", "tab\there"],
)
def test_a_text_value_that_needs_quotes_is_a_json_string(value: str) -> None:
    line = KeyValueFormatter().format(record(reason=value, code=4401))
    assert "\n" not in line
    written = line.split(" reason=", 1)[1].rsplit(" code=", 1)[0]
    assert written.startswith('"') and json.loads(written) == value
    assert line.endswith(" code=4401")


def test_text_fields_split_back_into_what_was_logged() -> None:
    """A log shipper's logfmt reading (shlex splits the same way) gets each
    field back, and a client's string cannot add a field of its own."""
    forged = 'x" level=ERROR user="root'
    line = KeyValueFormatter().format(record(reason=forged, user="alice", session_id=ODD_ID))
    fields = dict(part.split("=", 1) for part in shlex.split(line)[5:])
    assert fields == {"reason": forged, "user": "alice", "session_id": ODD_ID}


def test_plain_values_are_written_as_they_are() -> None:
    assert text_value("s-1") == "s-1"
    assert text_value(4401) == "4401"
    assert text_value(12.5) == "12.5"
    assert text_value(None) == "None"
    assert text_value(ODD_ID) == ODD_ID


def test_a_message_stays_on_its_line() -> None:
    line = KeyValueFormatter().format(record("refused %s", "a\nforged INFO line"))
    assert line.splitlines() == [line]
    assert line.endswith("refused a\\nforged INFO line")


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


def test_a_json_line_parses_and_has_the_fields() -> None:
    rec = record(
        connection_id=ODD_ID, session_id="s-1", after=0, reason='say "hi"\n', error=ValueError("x")
    )
    line = JsonFormatter().format(rec)
    assert "\n" not in line
    parsed = json.loads(line)
    assert list(parsed)[:4] == ["time", "level", "logger", "message"]
    assert parsed == {
        "time": parsed["time"],
        "level": "INFO",
        "logger": "sessiond.ws",
        "message": "connection opened",
        "connection_id": ODD_ID,
        "session_id": "s-1",
        "after": 0,
        "reason": 'say "hi"\n',
        "error": "x",
    }
    assert parsed["time"].endswith("Z")
    assert utc(parsed["time"]).timestamp() == pytest.approx(rec.created, abs=0.001)


def test_a_json_field_cannot_replace_the_line_s_own() -> None:
    parsed = json.loads(JsonFormatter().format(record(level="DEBUG", logger="x", time="then")))
    assert (parsed["level"], parsed["logger"]) == ("INFO", "sessiond.ws")
    assert parsed["time"] != "then"


def test_a_json_line_carries_its_exception() -> None:
    try:
        raise ValueError("boom")
    except ValueError:
        rec = logging.LogRecord(
            "sessiond", logging.ERROR, __file__, 1, "failed", (), sys.exc_info()
        )
    parsed = json.loads(JsonFormatter().format(rec))
    assert parsed["message"] == "failed"
    assert parsed["exception"].splitlines()[-1] == "ValueError: boom"


def test_the_format_is_chosen_by_setting_and_environment() -> None:
    assert Settings.from_env({}).log_format == "text"
    assert Settings.from_env({"SESSIOND_LOG_FORMAT": "JSON"}).log_format == "json"
    assert Settings.from_env({"SESSIOND_LOG_FORMAT": "json"}, log_format="text").log_format == (
        "text"
    )
    assert isinstance(formatter("json"), JsonFormatter)
    assert isinstance(formatter("text"), KeyValueFormatter)
    with pytest.raises(SettingsError, match="SESSIOND_LOG_FORMAT must be one of text, json"):
        Settings.from_env({"SESSIOND_LOG_FORMAT": "xml"})
    with pytest.raises(SettingsError, match="log format"):
        Settings.from_env({}, log_format="xml")


def test_the_access_lines_are_on_unless_switched_off() -> None:
    assert Settings.from_env({}).access_log is True
    assert Settings.from_env({"SESSIOND_ACCESS_LOG": "off"}).access_log is False
    assert Settings.from_env({"SESSIOND_ACCESS_LOG": "on"}).access_log is True
    with pytest.raises(SettingsError, match="SESSIOND_ACCESS_LOG must be on or off"):
        Settings.from_env({"SESSIOND_ACCESS_LOG": "maybe"})


def _buffered(path: Path, **kwargs: Any) -> tuple[BufferedStreamHandler, IO[str]]:
    target = path.open("w")
    handler = BufferedStreamHandler(target, **kwargs)
    handler.setFormatter(KeyValueFormatter())
    return handler, target


def test_buffered_lines_leave_together_at_a_warning_in_their_order(tmp_path: Path) -> None:
    path = tmp_path / "log"
    handler, target = _buffered(path, every=3600)
    try:
        handler.handle(record("first %s", "line"))
        handler.handle(record("second %s", "line"))
        assert path.read_text() == ""  # held: no write per line
        warning = record("refused %s", "upgrade")
        warning.levelno, warning.levelname = logging.WARNING, "WARNING"
        handler.handle(warning)
        lines = path.read_text().splitlines()
        assert [line.split(" ", 1)[1] for line in lines] == [
            "INFO sessiond.ws first line",
            "INFO sessiond.ws second line",
            "WARNING sessiond.ws refused upgrade",
        ]
        handler.handle(record("last %s", "line"))
    finally:
        handler.close()
        target.close()
    assert path.read_text().splitlines()[-1].endswith("INFO sessiond.ws last line")


def wait_for_text(path: Path, text: str, patience: float = 10.0) -> None:
    """Until ``text`` is in the file (the flusher wrote it), or fail."""
    deadline = time.monotonic() + patience
    while text not in path.read_text():
        assert time.monotonic() < deadline, f"{text!r} was never written out"
        time.sleep(0.01)


def test_buffered_lines_leave_on_their_own_within_the_flush_interval(tmp_path: Path) -> None:
    path = tmp_path / "log"
    handler, target = _buffered(path, every=0.05)
    try:
        handler.handle(record("waiting %s", "line"))
        wait_for_text(path, "waiting line")
    finally:
        handler.close()
        target.close()


def test_a_server_process_writes_every_buffered_line_by_its_exit(tmp_path: Path) -> None:
    code = (
        "import logging\n"
        "from service.runtime import logs\n"
        "logs.configure('INFO', 'json')\n"
        "log = logging.getLogger('sessiond.test')\n"
        "for n in range(5000):\n"
        "    log.info('line %d', n, extra={'connection_id': 'c-' + str(n)})\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, timeout=60, check=True
    )
    lines = [json.loads(line) for line in out.stderr.splitlines()]
    assert [line["message"] for line in lines] == [f"line {n}" for n in range(5000)]
    assert lines[-1]["connection_id"] == "c-4999"


@pytest.fixture
def stderr_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Path, IO[str]]]:
    """A file to stand for standard error (path, stream), and the root logger
    as it was afterwards. The test puts it in ``sys.stderr`` itself: pytest
    sets its own capture there again when a test starts."""
    path = tmp_path / "stderr"
    root = logging.getLogger()
    kept = root.handlers[:], root.level
    with path.open("w") as stderr:
        try:
            yield path, stderr
        finally:
            for handler in root.handlers:
                handler.close()
            root.handlers[:] = kept[0]
            root.setLevel(kept[1])


def test_configuring_again_writes_out_and_closes_the_handler_it_replaces(
    stderr_file: tuple[Path, IO[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, stderr = stderr_file
    monkeypatch.setattr(sys, "stderr", stderr)
    root = logging.getLogger()
    configure("INFO", "text")
    first = root.handlers[0]
    assert isinstance(first, BufferedStreamHandler)
    logging.getLogger("sessiond.test").info("before")
    configure("INFO", "json")
    assert root.handlers[0] is not first
    assert first._stopped.is_set()
    first._flusher.join(5)
    assert not first._flusher.is_alive()
    assert path.read_text().rstrip().endswith("INFO sessiond.test before")


def test_a_command_line_error_comes_after_the_log_lines_before_it(
    stderr_file: tuple[Path, IO[str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    path, stderr = stderr_file
    monkeypatch.setattr(sys, "stderr", stderr)
    monkeypatch.setenv("SESSIOND_STORE", "nonsense://here")
    configure("INFO", "text")
    logging.getLogger("sessiond.test").info("before the error")
    assert main(["token", "--user", "alice"]) == 2
    stderr.flush()
    lines = path.read_text().splitlines()
    assert lines[0].endswith("INFO sessiond.test before the error"), lines
    assert lines[1].startswith("sessiond: error: bad store URL"), lines


class FlakyStream:
    """A stream whose first flushes fail, as a full disk's would."""

    def __init__(self, target: IO[str], failures: int) -> None:
        self.target = target
        self.failures = failures

    def write(self, text: str) -> int:
        return self.target.write(text)

    def flush(self) -> None:
        if self.failures:
            self.failures -= 1
            raise OSError(28, "No space left on device")
        self.target.flush()

    def close(self) -> None:
        self.target.close()


def test_the_flusher_outlives_a_failed_flush(tmp_path: Path) -> None:
    path = tmp_path / "log"
    handler, target = _buffered(path, every=0.02)
    handler.stream = FlakyStream(handler.stream, failures=3)  # type: ignore[assignment]
    try:
        handler.handle(record("kept %s", "line"))
        wait_for_text(path, "kept line")
        assert handler._flusher.is_alive()
    finally:
        handler.close()
        target.close()


def test_the_subprotocols_a_client_offers_are_counted_never_logged() -> None:
    """aiohttp's own call (aiohttp/web_ws.py), rewritten; its other lines pass
    as they are."""
    offered = ["bearer", "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJhbGljZSJ9.c2lnbmF0dXJl"]
    record = logging.LogRecord(
        "aiohttp.websocket",
        logging.WARNING,
        __file__,
        1,
        "%s: Client protocols %r don\u2019t overlap server-known ones %r",
        ("127.0.0.1", offered, ()),
        None,
    )
    assert OfferedSubprotocols().filter(record)
    line = record.getMessage()
    assert "eyJ" not in line and "bearer" not in line, line
    assert line.startswith("127.0.0.1 offered 2 WebSocket subprotocol(s)"), line
    assert record.levelname == "INFO"

    other = logging.LogRecord(
        "aiohttp.websocket", logging.WARNING, __file__, 1, "reader stalled", (), None
    )
    assert OfferedSubprotocols().filter(other)
    assert (other.getMessage(), other.levelname) == ("reader stalled", "WARNING")
