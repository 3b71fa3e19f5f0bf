"""Tests of logging: JSON and text lines, sinks, level reload, the queue, and the redacted audit log."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any, Final

import pytest

from osnova_server import logs
from osnova_server.logs import (
    AUDIT_LOGGER_NAME,
    LOG_LEVELS,
    REDACTED,
    LoggingHandle,
    audit,
    audit_call,
    audit_calls,
    call_fields,
    redact,
    setup_logging,
)

TOKEN = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJkZXYtMSJ9.c2lnbmF0dXJlLXNlY3JldA"
REFRESH = "rT0k3n-very-secret-refresh-value-abcdefghijk"
CODE = "ABCD-1234"
SECRETS = (TOKEN, REFRESH, CODE, "hunter2", "n0nce-value")
TIMESTAMP = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")


@pytest.fixture(autouse=True)
def restore_root_logger() -> Iterator[None]:
    """Leave the root logger as the test found it, whatever setup_logging did."""
    root = logging.getLogger()
    level, handlers = root.level, list(root.handlers)
    yield
    if logs._current is not None:
        logs._current.stop()
    root.setLevel(level)
    for handler in root.handlers:
        if handler not in handlers:
            root.removeHandler(handler)


def audit_everything() -> None:
    """Log an audit event full of secrets, in every shape a caller might pass them."""
    audit(
        "pairing.complete",
        device_id="dev-1",
        access_token=TOKEN,
        refresh_token=REFRESH,
        pairing_code=CODE,
        headers={"Authorization": f"Bearer {TOKEN}", "Accept": "*/*"},
        attempts=[{"password": "hunter2"}, {"Nonce": "n0nce-value"}],
        detail=TOKEN,
    )


def lines(path: Path) -> list[str]:
    """The lines of a log file."""
    return path.read_text(encoding="utf-8").splitlines()


def test_json_file_sink(tmp_path: Path) -> None:
    """JSON lines carry ts, level, logger, msg and the fields; secrets never reach the file."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "json", str(log_file))
    logging.getLogger("osnova.test").info(
        "hello %s", "world", extra={"fields": {"count": 3, "msg": "spoofed", "level": "DEBUG"}}
    )
    audit_everything()
    handle.stop()

    text = log_file.read_text(encoding="utf-8")
    for secret in SECRETS:
        assert secret not in text
    hello, audited = (json.loads(line) for line in lines(log_file))
    assert TIMESTAMP.match(hello["ts"])
    assert hello == {
        "ts": hello["ts"],
        "level": "INFO",
        "logger": "osnova.test",
        "msg": "hello world",
        "count": 3,
    }, "fields cannot overwrite the line's own keys"
    assert audited["logger"] == AUDIT_LOGGER_NAME
    assert audited["msg"] == audited["event"] == "pairing.complete"
    assert audited["device_id"] == "dev-1"
    assert audited["access_token"] == audited["refresh_token"] == REDACTED
    assert audited["pairing_code"] == REDACTED
    assert audited["headers"] == {"Authorization": REDACTED, "Accept": "*/*"}
    assert audited["attempts"] == [{"password": REDACTED}, {"Nonce": REDACTED}]
    assert audited["detail"] == REDACTED


def test_text_file_sink(tmp_path: Path) -> None:
    """Text lines read `ts LEVEL logger: msg key=value`; secrets never reach the file."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "text", str(log_file))
    logging.getLogger("osnova.test").warning(
        "device %s paired", "phone", extra={"fields": {"name": "Anna's phone", "n": 2}}
    )
    logging.getLogger("osnova.test").info("forged\n2026-01-01T00:00:00.000Z INFO admin: x")
    audit_everything()
    handle.stop()

    text = log_file.read_text(encoding="utf-8")
    for secret in SECRETS:
        assert secret not in text
    paired, forged, audited = lines(log_file)
    ts, rest = paired.split(" ", 1)
    assert TIMESTAMP.match(ts)
    assert rest == 'WARNING osnova.test: device phone paired name="Anna\'s phone" n=2'
    assert forged.endswith("INFO osnova.test: forged\\n2026-01-01T00:00:00.000Z INFO admin: x")
    assert f"INFO {AUDIT_LOGGER_NAME}: pairing.complete event=pairing.complete" in audited
    assert f"access_token={REDACTED}" in audited
    assert f"refresh_token={REDACTED}" in audited


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_stderr_sink(fmt: str, capsys: pytest.CaptureFixture[str]) -> None:
    """Without a file, lines go to stderr (journald), redacted the same way."""
    handle = setup_logging("info", fmt, "")
    audit_everything()
    handle.stop()
    err = capsys.readouterr().err
    assert "pairing.complete" in err
    for secret in SECRETS:
        assert secret not in err


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_exception_traceback(fmt: str, tmp_path: Path) -> None:
    """A logged exception carries its traceback, in `exc` for JSON."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", fmt, str(log_file))
    try:
        1 / 0  # noqa: B018
    except ZeroDivisionError:
        logging.getLogger("osnova.test").exception("division failed")
    handle.stop()
    text = log_file.read_text(encoding="utf-8")
    if fmt == "json":
        (line,) = lines(log_file)
        record = json.loads(line)
        assert record["msg"] == "division failed"
        assert "Traceback" in record["exc"]
        assert "ZeroDivisionError" in record["exc"]
    else:
        assert "division failed\nTraceback" in text
        assert "ZeroDivisionError" in text


def test_access_log_goes_through_the_same_sink(tmp_path: Path) -> None:
    """aiohttp's access logger writes through the same queue and format, whatever it was set to."""
    access = logging.getLogger("aiohttp.access")
    access.propagate = False
    access.setLevel(logging.ERROR)
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "json", str(log_file))
    access.info('127.0.0.1 "GET /health HTTP/1.1" 200')
    handle.stop()
    (line,) = lines(log_file)
    record = json.loads(line)
    assert record["logger"] == "aiohttp.access"
    assert record["msg"] == '127.0.0.1 "GET /health HTTP/1.1" 200'


def test_levels_reload(tmp_path: Path) -> None:
    """set_level (SIGHUP) changes what is written, the audit log included."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("WARNING", "json", str(log_file))
    logger = logging.getLogger("osnova.test")
    logger.info("hidden info")
    audit("hidden.audit", device_id="dev-1")
    handle.set_level("Debug")
    logger.debug("shown debug")
    audit("shown.audit", device_id="dev-1")
    handle.set_level("error")
    logger.warning("hidden warning")
    logger.error("shown error")
    with pytest.raises(ValueError, match="not valid"):
        handle.set_level("verbose")
    handle.stop()
    assert [json.loads(line)["msg"] for line in lines(log_file)] == [
        "shown debug",
        "shown.audit",
        "shown error",
    ]


def test_disabled_audit_does_no_work(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """When the audit logger is off, audit() returns before redacting anything."""
    handle = setup_logging("warning", "json", str(tmp_path / "osnova.log"))

    def must_not_run(value: Any) -> Any:
        raise AssertionError("redact ran although auditing is off")

    monkeypatch.setattr(logs, "_redact_dict", must_not_run)
    audit("ignored", token=TOKEN)
    handle.set_level("info")
    with pytest.raises(AssertionError, match="redact ran"):
        audit("redacted", token=TOKEN)
    handle.stop()


def test_setup_twice_does_not_duplicate(tmp_path: Path) -> None:
    """A second setup replaces the first: one handler, each line written once, to the new sink."""
    first_file, second_file = tmp_path / "first.log", tmp_path / "second.log"
    log_threads = logging.logThreads
    first = setup_logging("info", "json", str(first_file))
    logging.getLogger("osnova.test").info("one")
    second = setup_logging("info", "text", str(second_file))
    logging.getLogger("osnova.test").info("two")
    queue_handlers = [
        handler for handler in logging.getLogger().handlers
        if isinstance(handler, logging.handlers.QueueHandler)
    ]
    assert len(queue_handlers) == 1
    first.stop()  # already stopped by the second setup: a no-op
    second.stop()
    second.stop()
    assert logging.logThreads == log_threads, "stop() restores logging's module flags"
    assert [json.loads(line)["msg"] for line in lines(first_file)] == ["one"]
    (line,) = lines(second_file)
    assert line.endswith("INFO osnova.test: two")


def test_stop_flushes_everything(tmp_path: Path) -> None:
    """Every record logged before stop() is in the file after it."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "json", str(log_file))
    logger = logging.getLogger("osnova.test")
    for index in range(2000):
        logger.info("line %d", index)
    handle.stop()
    assert [json.loads(line)["msg"] for line in lines(log_file)] == [
        f"line {index}" for index in range(2000)
    ]
    assert handle.dropped == 0


def test_slow_sink_does_not_block_the_caller(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """While the sink is stuck, logging returns at once; the lines are written once it recovers."""
    stuck = threading.Event()
    release = threading.Event()
    original_emit = logs._RotatingSink.emit

    def stuck_emit(self: logs._RotatingSink, record: logging.LogRecord) -> None:
        stuck.set()
        assert release.wait(timeout=10)
        original_emit(self, record)

    monkeypatch.setattr(logs._RotatingSink, "emit", stuck_emit)
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "json", str(log_file))
    logger = logging.getLogger("osnova.test")
    logger.info("first")
    assert stuck.wait(timeout=10)
    for index in range(100):  # would hang here if logging waited for the disk
        logger.info("queued %d", index)
    release.set()
    handle.stop()
    assert len(lines(log_file)) == 101


def test_full_queue_drops_and_reports(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Past the queue bound, records are dropped and counted, and the next line says so."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "json", str(log_file))
    logger = logging.getLogger("osnova.test")
    monkeypatch.setattr(logs, "QUEUE_MAX_RECORDS", 0)
    for _ in range(7):
        logger.info("lost")
    monkeypatch.setattr(logs, "QUEUE_MAX_RECORDS", 10_000)
    logger.info("kept")
    handle.stop()
    assert handle.dropped == 7
    warning, kept = (json.loads(line) for line in lines(log_file))
    assert warning["level"] == "WARNING"
    assert warning["dropped"] == 7
    assert kept["msg"] == "kept"


def test_rotation(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The file rotates at its size limit and keeps a bounded number of backups."""
    monkeypatch.setattr(logs, "ROTATE_MAX_BYTES", 2000)
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "json", str(log_file))
    for index in range(1000):
        logging.getLogger("osnova.test").info("line %04d", index)
    handle.stop()
    files = sorted(tmp_path.iterdir())
    assert [path.name for path in files] == [
        "osnova.log", *(f"osnova.log.{number}" for number in range(1, 6))
    ]
    assert all(path.stat().st_size <= 2000 for path in files)
    assert json.loads(lines(log_file)[-1])["msg"] == "line 0999"


def test_bad_settings_are_refused(tmp_path: Path) -> None:
    """Unknown levels or formats and unopenable files are clear errors, not tracebacks."""
    with pytest.raises(ValueError, match="log level 'loud' is not valid"):
        setup_logging("loud", "json", "")
    with pytest.raises(ValueError, match="log format 'xml' is not valid"):
        setup_logging("info", "xml", "")
    with pytest.raises(ValueError, match="cannot open log file"):
        setup_logging("info", "json", str(tmp_path / "missing" / "osnova.log"))
    assert LOG_LEVELS == {"debug", "info", "warning", "error", "critical"}


@pytest.mark.parametrize(
    "key",
    ["token", "access_token", "Refresh", "client_secret", "PASSWORD", "pairing_code", "api_key",
     "Authorization", "nonce"],
)
def test_redact_secret_keys(key: str) -> None:
    """Any key naming a secret, in any case, has its value replaced."""
    assert redact({key: "value", "device_id": "dev-1"}) == {key: REDACTED, "device_id": "dev-1"}


def test_redact_is_a_deep_copy() -> None:
    """Nested dicts and lists are redacted in a copy; the caller's data is untouched."""
    original: dict[str, Any] = {"outer": [{"token": "t", "name": "n"}, ("x", {"secret": {"a": 1}})], "n": 1}
    redacted = redact(original)
    assert redacted == {"outer": [{"token": REDACTED, "name": "n"}, ["x", {"secret": REDACTED}]],
                        "n": 1}
    assert original["outer"][0]["token"] == "t"
    assert redacted["outer"][0] is not original["outer"][0]


def test_logging_handle_has_slots() -> None:
    """The handle is a small fixed object."""
    assert "__slots__" in vars(LoggingHandle)


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_audit_call_writes_the_line_audit_would(fmt: str, tmp_path: Path) -> None:
    """The per-call fast path is a shortcut, not a second format."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", fmt, str(log_file))
    audit("rpc", principal="dev-1", method="status.get", outcome="ok", duration_ms=2.5, remote="::1", transport="ws")
    audit_call("dev-1", "status.get", "ok", 0.0025, "::1", "ws")
    handle.set_level("warning")
    audit_call("dev-1", "status.get", "ok", 0.0025, "::1", "ws")  # not written: auditing is off
    handle.stop()
    first, second = lines(log_file)
    stamp = r"^\S+ " if fmt == "text" else r'^\{"ts":"[^"]+",'
    assert re.sub(stamp, "", first) == re.sub(stamp, "", second)
    assert "principal" in second and "duration_ms" in second


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_audit_calls_writes_a_line_per_call_as_audit_would(fmt: str, tmp_path: Path) -> None:
    """One record for a message's calls, and on disk each call's own line, in order, at its own time."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", fmt, str(log_file))
    calls = [
        ("status.get", "ok", 0.0025, 1_700_000_000.125, None),
        ("(unknown)", "method_not_found", 0.0001234, 1_700_000_001.5, None),
        ("apps.list", "ok", 1.5, 1_700_000_002.75, ("ab" * 16, "cd" * 8)),
    ]
    audit_calls("dev-1", "::1", "ws", calls)
    for method, outcome, seconds, _, _ in calls:
        audit("rpc", principal="dev-1", method=method, outcome=outcome, duration_ms=round(seconds * 1000, 3),
              remote="::1", transport="ws")
    handle.stop()
    written = lines(log_file)
    assert len(written) == 6
    batch, single = written[:3], written[3:]
    stamp = r"^\S+ " if fmt == "text" else r'^\{"ts":"[^"]+",'
    ids = r" trace_id=\S+ span_id=\S+" if fmt == "text" else r',"trace_id":"[^"]+","span_id":"[^"]+"'
    assert [re.sub(ids, "", re.sub(stamp, "", line)) for line in batch] == [re.sub(stamp, "", line) for line in single]
    if fmt == "json":
        parsed = [json.loads(line) for line in batch]
        assert [line["ts"] for line in parsed] == [
            "2023-11-14T22:13:20.125Z", "2023-11-14T22:13:21.500Z", "2023-11-14T22:13:22.750Z",
        ]
        assert [line["duration_ms"] for line in parsed] == [2.5, 0.123, 1500.0]
        assert "trace_id" not in parsed[0]
        assert (parsed[2]["trace_id"], parsed[2]["span_id"]) == ("ab" * 16, "cd" * 8)
    else:
        assert batch[0].startswith("2023-11-14T22:13:20.125Z INFO osnova.audit: rpc event=rpc principal=dev-1")
        assert f"rpc trace_id={'ab' * 16} span_id={'cd' * 8} event=rpc" in batch[2]


def test_call_fields_are_the_fields_of_each_line() -> None:
    """What a caplog reader of a record of calls sees: the fields of each line it stands for."""
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    handler = Keep()
    audit_logger = logging.getLogger(AUDIT_LOGGER_NAME)
    audit_logger.addHandler(handler)
    audit_logger.setLevel(logging.INFO)
    try:
        audit_calls("admin", "127.0.0.1", "http", [("a.b", "ok", 0.001, 1.0, None), ("c.d", "forbidden", 0.0, 2.0, None)])
        audit_calls("admin", "127.0.0.1", "http", [])  # a message that ran nothing writes nothing
    finally:
        audit_logger.removeHandler(handler)
        audit_logger.setLevel(logging.NOTSET)
    (record,) = records
    assert call_fields(record) == [
        {"event": "rpc", "principal": "admin", "method": "a.b", "outcome": "ok", "duration_ms": 1.0,
         "remote": "127.0.0.1", "transport": "http"},
        {"event": "rpc", "principal": "admin", "method": "c.d", "outcome": "forbidden", "duration_ms": 0.0,
         "remote": "127.0.0.1", "transport": "http"},
    ]


def test_the_queue_bound_counts_lines(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """A record of five calls takes five lines of the bound: past it, all five are dropped and counted."""
    log_file = tmp_path / "osnova.log"
    handle = setup_logging("info", "json", str(log_file))
    calls = [("status.get", "ok", 0.001, 1_700_000_000.0, None)] * 5
    monkeypatch.setattr(logs, "QUEUE_MAX_RECORDS", 4)
    audit_calls("dev-1", "::1", "http", calls)
    monkeypatch.setattr(logs, "QUEUE_MAX_RECORDS", 5)
    audit_calls("dev-1", "::1", "http", calls)
    handle.stop()
    assert handle.dropped == 5
    warning, *kept = (json.loads(line) for line in lines(log_file))
    assert warning["dropped"] == 5
    assert [line["method"] for line in kept] == ["status.get"] * 5


_LOG_EVERY_LEVEL: Final = """
import logging, sys
from osnova_server.logs import setup_logging
handle = setup_logging("debug", sys.argv[1], "")
log = logging.getLogger("osnova_server.probe")
log.debug("d-line"); log.info("i-line"); log.warning("w-line"); log.error("e-line"); log.critical("c-line")
try:
    raise ValueError("boom")
except ValueError:
    log.exception("x-line")
handle.stop()
"""
_PRIORITY: Final = re.compile(r"^<([0-7])>")


def _log_to_file(path: Path, fmt: str, journal_stream: str | None) -> list[str]:
    """Run a process whose stderr is `path` and that logs once per level; return the lines it wrote."""
    env = {key: value for key, value in os.environ.items() if key != "JOURNAL_STREAM"}
    if journal_stream is not None:
        env["JOURNAL_STREAM"] = journal_stream
    with path.open("w") as stderr:
        subprocess.run([sys.executable, "-c", _LOG_EVERY_LEVEL, fmt], stderr=stderr, env=env, check=True, timeout=30)
    return path.read_text().splitlines()


def _dev_inode(path: Path) -> str:
    """`$JOURNAL_STREAM`'s form of a file: device:inode."""
    status = path.stat()
    return f"{status.st_dev}:{status.st_ino}"


@pytest.mark.parametrize("fmt", ["json", "text"])
def test_journal_lines_carry_syslog_priorities(fmt: str, tmp_path: Path) -> None:
    """stderr is the journal ($JOURNAL_STREAM names it): `<7>` debug ... `<2>` critical, on every line."""
    path = tmp_path / "journal"
    path.touch()
    lines = _log_to_file(path, fmt, _dev_inode(path))
    assert lines, "nothing was logged"
    assert all(_PRIORITY.match(line) for line in lines), lines
    by_message = {
        message: int(match[1]) for line in lines if (match := _PRIORITY.match(line))
        for message in ("d-line", "i-line", "w-line", "e-line", "c-line", "x-line") if message in line
    }
    assert by_message == {"d-line": 7, "i-line": 6, "w-line": 4, "e-line": 3, "c-line": 2, "x-line": 3}
    # What `journalctl -p warning` keeps: priority 4 (warning) or more urgent.
    kept = [line for line in lines if int(_PRIORITY.match(line)[1]) <= 4]  # type: ignore[index]
    assert [m for m in ("d-line", "i-line", "w-line", "e-line", "c-line", "x-line") if any(m in k for k in kept)] == [
        "w-line", "e-line", "c-line", "x-line",
    ]
    if fmt == "text":  # the traceback's lines are the error's too, so filtering keeps them with it
        assert any(line.startswith("<3>ValueError: boom") for line in lines)


def test_no_prefix_when_stderr_is_not_the_journal(tmp_path: Path) -> None:
    """$JOURNAL_STREAM naming another file (stderr redirected elsewhere), or garbage: plain lines."""
    other = tmp_path / "other"
    other.touch()
    for journal_stream in (_dev_inode(other), "not-a-number", None):
        lines = _log_to_file(tmp_path / "stderr", "text", journal_stream)
        assert any("w-line" in line for line in lines)
        assert not [line for line in lines if _PRIORITY.match(line)], journal_stream
