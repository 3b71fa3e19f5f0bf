"""Logging for osnova-server: JSON or text lines written off the event loop, and an audit log.

Every record goes through one `QueueHandler` on the root logger; a `QueueListener` thread formats
it and writes it to stderr (journald) or a rotating file, so a slow disk or a blocked pipe never
stalls the event loop. The queue is bounded: when it is full, records are dropped and counted, and
the next line written says how many were lost.
"""

from __future__ import annotations

import atexit
import json
import logging
import logging.handlers
import os
import re
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import lru_cache
from queue import Empty, SimpleQueue
from typing import Any, Final, TextIO

_LOGGER = logging.getLogger(__name__)

LOG_LEVELS: Final[frozenset[str]] = frozenset({"debug", "info", "warning", "error", "critical"})
LOG_FORMATS: Final[frozenset[str]] = frozenset({"json", "text"})
AUDIT_LOGGER_NAME: Final = "osnova.audit"
ACCESS_LOGGER_NAME: Final = "aiohttp.access"
SQL_DRIVER_LOGGER_NAME: Final = "aiosqlite"
REDACTED: Final = "[REDACTED]"

ROTATE_MAX_BYTES: Final = 10 * 1024 * 1024
ROTATE_BACKUP_COUNT: Final = 5
# About 10,000 lines of ~300 bytes: a few MB at most while the sink is stalled. Counted in
# lines: a record of a batch's calls counts as one line per call.
QUEUE_MAX_RECORDS: Final = 10_000
# Once the queue is drained the writer waits this long before looking again, so under load it
# wakes about 200 times a second and writes a batch, instead of being woken (and taking the GIL
# from the event loop) once per record; a record logged while the writer is idle goes out at once.
# Not longer: the longer it waits, the longer the burst it then writes while holding the GIL, and
# the longer the event loop waits for it. With 20 ms, bench/run.py's 10-call batch had a p99 of
# 2.5-2.8x the bare server's (bursts of ~2 ms); with 5 ms, 1.85-1.9x at the same CPU per request.
WRITER_LINGER_SECONDS: Final = 0.005

_SECRET_KEY_RE: Final = re.compile(
    "token|secret|password|code|key|refresh|authorization|nonce", re.IGNORECASE
)
# Keys of the LogRecord a JSON line must keep; `fields` cannot overwrite them.
_BASE_KEYS: Final = frozenset({"ts", "level", "logger", "msg", "exc"})
_NEEDS_QUOTES_RE: Final = re.compile(r'[\s"=\\]')
# Neither format shows the caller's file and line, thread or process, so logging need not
# collect them for every record (the `logging` HOWTO's "Optimization" section); this halves the
# cost of a log call. `stop()` restores them.
_UNUSED_RECORD_ATTRIBUTES: Final[dict[str, Any]] = {
    "_srcfile": None,
    "logThreads": False,
    "logProcesses": False,
    "logMultiprocessing": False,
}

# Built once: json.dumps with any option builds a new encoder on every call.
_COMPACT_ENCODE: Final = json.JSONEncoder(default=str, separators=(",", ":")).encode


def _stdlib_line(line: dict[str, Any]) -> str:
    """A compact JSON line from the standard library, in ASCII so that any str can be written."""
    # Escaping keeps a lone surrogate (a client can send "\ud800") from failing the UTF-8 sink.
    return _COMPACT_ENCODE(line)


try:  # pragma: no cover - depends on the installed `speedups` extra
    import orjson

    def _json_line(line: dict[str, Any]) -> str:
        """A JSON line through orjson (UTF-8 kept as it is), ~8x faster than the stdlib encoder."""
        try:
            return orjson.dumps(line, default=str).decode()
        except TypeError:  # an integer beyond 64 bits or a lone surrogate: the stdlib copes
            return _stdlib_line(line)

except ImportError:  # pragma: no cover
    _json_line = _stdlib_line

# One call as its audit line tells it: method label, outcome, seconds it ran, the wall-clock
# time it ended, and the (trace id, span id) it ran in, or None (the record's then, if any).
AuditedCall = tuple[str, str, float, float, tuple[str, str] | None]

_AUDIT_LOGGER: Final = logging.getLogger(AUDIT_LOGGER_NAME)
# What LogRecord.relativeCreated counts from.
_LOGGING_START: Final[float] = logging._startTime  # type: ignore[attr-defined]
_AUDIT_ENABLED_FOR = _AUDIT_LOGGER.isEnabledFor

_current: LoggingHandle | None = None
_setup_lock: Final = threading.Lock()
# With tracing on: returns the (trace id, span id) open where a record is made, or None.
_trace_ids: Callable[[], tuple[str, str] | None] | None = None


def set_trace_ids(source: Callable[[], tuple[str, str] | None] | None) -> None:
    """Have records stamped with the current span's ids (tracing.py installs this), or stop."""
    global _trace_ids
    _trace_ids = source


def current_trace_ids() -> tuple[str, str] | None:
    """The (trace id, span id) of the span open here, as a record made now would carry them, or None."""
    source = _trace_ids
    return None if source is None else source()


def _level_number(level: str) -> int:
    """Turn a config level name into a `logging` number, refusing names outside `LOG_LEVELS`."""
    name = level.strip().lower()
    if name not in LOG_LEVELS:
        raise ValueError(
            f"log level {level!r} is not valid; use one of {', '.join(sorted(LOG_LEVELS))}"
        )
    return logging.getLevelNamesMapping()[name.upper()]


# The whole second most consecutive lines share, formatted once; a tuple so that a reader on
# another thread never sees a second paired with another second's text.
_last_second: tuple[int, str] = (-1, "")
# ".000Z" to ".999Z": a lookup instead of formatting the milliseconds of every line.
_MILLISECONDS: Final = tuple(f".{millis:03d}Z" for millis in range(1000))


def _timestamp(created: float) -> str:
    """Format a time (a record's creation, a call's end) as RFC 3339 UTC with milliseconds and a `Z`."""
    global _last_second
    seconds = int(created)
    cached_seconds, text = _last_second
    if cached_seconds != seconds:
        text = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(seconds))
        _last_second = (seconds, text)
    return text + _MILLISECONDS[int((created - seconds) * 1000)]


def _fields(record: logging.LogRecord) -> dict[str, Any]:
    """Return the `extra={"fields": {...}}` of a record, or an empty dict."""
    fields = getattr(record, "fields", None)
    return fields if isinstance(fields, dict) else {}


class JsonFormatter(logging.Formatter):
    """One JSON object per line, so log shippers need no parsing rules."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record and its fields as a single JSON line (a record of calls: a line each)."""
        calls = getattr(record, "calls", None)
        if calls is not None:
            return "\n".join(self._call_lines(record, calls))
        line: dict[str, Any] = {
            "ts": _timestamp(record.created),
            "level": record.levelname,
            "logger": record.name,
            "msg": record.getMessage(),
        }
        for key, value in _fields(record).items():
            if key not in _BASE_KEYS:
                line[str(key)] = value
        ids = getattr(record, "trace_ids", None)
        if ids is not None:
            line["trace_id"], line["span_id"] = ids
        exc = _exception_text(self, record)
        if exc:
            line["exc"] = exc
        return _json_line(line)

    def _call_lines(self, record: logging.LogRecord, calls: Sequence[AuditedCall]) -> Iterator[str]:
        """The line of each call, as `audit("rpc", ...)` at the call's end would have written it."""
        level, name, msg = record.levelname, record.name, record.getMessage()
        fields = _fields(record)
        event, principal = fields.get("event", "rpc"), fields.get("principal")
        remote, transport = fields.get("remote"), fields.get("transport")
        record_ids = getattr(record, "trace_ids", None)
        for method, outcome, seconds, ended, ids in calls:
            # The keys of _call_fields, in its order, written out: this runs for every call.
            line: dict[str, Any] = {
                "ts": _timestamp(ended), "level": level, "logger": name, "msg": msg, "event": event,
                "principal": principal, "method": method, "outcome": outcome,
                "duration_ms": round(seconds * 1000, 3), "remote": remote, "transport": transport,
            }
            ids = ids or record_ids
            if ids is not None:
                line["trace_id"], line["span_id"] = ids
            yield _json_line(line)


class TextFormatter(logging.Formatter):
    """`<ts> LEVEL logger: msg key=value ...`, for people reading a terminal."""

    def format(self, record: logging.LogRecord) -> str:
        """Render the record on one line (plus a traceback, if any, on the following lines)."""
        # Newlines in a message would let a client-supplied string forge a log line.
        msg = record.getMessage().replace("\r", "\\r").replace("\n", "\\n")
        head = f"{record.levelname} {record.name}: {msg}"
        ids = getattr(record, "trace_ids", None)
        calls = getattr(record, "calls", None)
        if calls is not None:
            fields = _fields(record)
            return "\n".join(
                _text_line(_timestamp(call[3]), head, call[4] or ids, _call_fields(fields, call)) for call in calls
            )
        text = _text_line(_timestamp(record.created), head, ids, _fields(record))
        exc = _exception_text(self, record)
        return f"{text}\n{exc}" if exc else text


def _text_line(ts: str, head: str, ids: tuple[str, str] | None, fields: Mapping[str, Any]) -> str:
    """`<ts> <head> [trace_id=... span_id=...] key=value ...`."""
    parts = [ts, head]
    if ids is not None:
        parts.append(f"trace_id={ids[0]} span_id={ids[1]}")
    for key, value in fields.items():
        parts.append(f"{key}={_text_value(value)}")
    return " ".join(parts)


def _text_value(value: Any) -> str:
    """Render a field value so that `key=value` pairs stay unambiguous."""
    if isinstance(value, str):
        return json.dumps(value) if not value or _NEEDS_QUOTES_RE.search(value) else value
    if value is None or isinstance(value, (bool, int, float)):
        return json.dumps(value)
    return _COMPACT_ENCODE(value)


def _exception_text(formatter: logging.Formatter, record: logging.LogRecord) -> str:
    """Return the traceback (and stack) text of a record, or an empty string."""
    text = record.exc_text or ""
    if not text and record.exc_info:
        text = formatter.formatException(record.exc_info)
    if record.stack_info:
        text = f"{text}\n{record.stack_info}" if text else record.stack_info
    return text


class _QueueHandler(logging.handlers.QueueHandler):
    """Hands records to the listener thread with as little work as possible on the caller."""

    queue: SimpleQueue[logging.LogRecord | None]

    def __init__(self, records: SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__(records)
        self.dropped = 0
        # Lines queued (by any thread, under the lock) and written (by the listener thread only):
        # their difference is what waits, in lines, whatever the records' sizes.
        self.queued = 0
        self.written = 0
        self._count_lock = threading.Lock()
        self._exc_formatter = logging.Formatter()

    def handle(self, record: logging.LogRecord) -> bool:
        """Filter and queue the record; SimpleQueue is thread-safe, so the handler lock is skipped."""
        if not self.filters:  # as it is set up: no filter to run
            self.emit(record)
            return True
        passed = self.filter(record)
        if isinstance(passed, logging.LogRecord):  # Python 3.12+: a filter may swap the record
            record = passed
        if passed:
            self.emit(record)
        return bool(passed)

    def prepare(self, record: logging.LogRecord) -> logging.LogRecord:
        """Freeze the message text; the full line is formatted on the listener thread."""
        # The span is known only here, on the thread (and in the task) that made the record.
        if _trace_ids is not None:
            record.trace_ids = _trace_ids()
        # Merging args here means a mutable argument changed later cannot alter the line.
        if record.args:
            record.msg = record.getMessage()
            record.args = None
        if record.exc_info and not record.exc_text:
            record.exc_text = self._exc_formatter.formatException(record.exc_info)
        return record

    def enqueue(self, record: logging.LogRecord) -> None:
        """Queue the record, or count its lines as dropped when the sink has fallen too far behind."""
        lines = line_count(record)
        with self._count_lock:
            if self.queued - self.written + lines > QUEUE_MAX_RECORDS:
                self.dropped += lines
                return
            self.queued += lines
        self.queue.put_nowait(record)


def line_count(record: logging.LogRecord) -> int:
    """How many lines a record writes: one, or one per call for a record of calls."""
    calls = getattr(record, "calls", None)
    return 1 if calls is None else len(calls)


class _QueueListener(logging.handlers.QueueListener):
    """Writes queued records and reports records dropped while the sink was stalled."""

    def __init__(self, source: _QueueHandler, sink: logging.Handler) -> None:
        super().__init__(source.queue, sink, respect_handler_level=True)
        self._source = source
        self._sink = sink
        self._reported = 0

    def dequeue(self, block: bool) -> logging.LogRecord:
        """The next record; when there is none, linger first so the next burst is one batch."""
        pending = self._source.queue
        try:
            record = pending.get_nowait()
        except Empty:
            time.sleep(WRITER_LINGER_SECONDS)
            record = pending.get(block)
        # None is the stop sentinel, which the base class recognises by identity.
        return record  # type: ignore[return-value]

    def handle(self, record: logging.LogRecord) -> None:
        """Write the record, preceded by a warning if records were dropped since the last one."""
        dropped = self._source.dropped
        if dropped != self._reported:
            lost = dropped - self._reported
            self._reported = dropped
            warning = logging.makeLogRecord({
                "name": __name__,
                "levelno": logging.WARNING,
                "levelname": "WARNING",
                "msg": f"dropped {lost} log records: the log sink is too slow",
                "fields": {"dropped": lost},
            })
            self._write(warning)
        self._write(record)
        self._source.written += line_count(record)

    def _write(self, record: logging.LogRecord) -> None:
        """Hand one record to the sink (QueueListener.handle, minus its generic handler loop)."""
        sink = self._sink
        if record.levelno < sink.level:
            return
        if sink.filters:
            sink.handle(record)
        else:
            # Only this thread writes to the sink (stop() flushes and closes it once this thread
            # has ended), so Handler.handle's lock and empty filter pass can be skipped.
            sink.emit(record)


def is_journal(stream: TextIO, environ: Mapping[str, str] = os.environ) -> bool:
    """Whether `stream` is systemd's journal: `$JOURNAL_STREAM` names its device and inode (systemd.exec(5))."""
    device, _, inode = environ.get("JOURNAL_STREAM", "").partition(":")
    try:
        status = os.fstat(stream.fileno())
        return (status.st_dev, status.st_ino) == (int(device), int(inode))
    except (OSError, ValueError, AttributeError):  # no such fd, no number, a stream without a file
        return False


def syslog_priority(levelno: int) -> int:
    """The syslog priority of a `logging` level, as sd-daemon(3)'s `<N>` prefixes use them."""
    if levelno >= logging.CRITICAL:
        return 2
    if levelno >= logging.ERROR:
        return 3
    if levelno >= logging.WARNING:
        return 4
    if levelno >= logging.INFO:
        return 6
    return 7


class _StreamSink(logging.StreamHandler[TextIO]):
    """Writes lines to stderr (journald), flushing when the queue drains rather than per line.

    When stderr is the journal, every line starts with its syslog priority (`<4>` for a warning),
    which journald reads and strips, so `journalctl -p warning` shows warnings and worse only.
    """

    def __init__(self, stream: TextIO, pending: SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__(stream)
        self._pending = pending
        self._journal = is_journal(stream)

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line; flush only once no other record is waiting."""
        try:
            text = self.format(record)
            if self._journal:
                # journald reads each line as one entry: a traceback's lines carry the prefix too.
                prefix = f"<{syslog_priority(record.levelno)}>"
                text = prefix + text.replace("\n", "\n" + prefix)
            self.stream.write(text + "\n")
            if self._pending.empty():
                self.stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - a failed write must never reach the caller
            self.handleError(record)


class _RotatingSink(logging.handlers.RotatingFileHandler):
    """A rotating file that counts its own size instead of formatting twice and stat-ing per line."""

    def __init__(self, filename: str, pending: SimpleQueue[logging.LogRecord | None]) -> None:
        super().__init__(
            filename, maxBytes=ROTATE_MAX_BYTES, backupCount=ROTATE_BACKUP_COUNT, encoding="utf-8"
        )
        self._pending = pending
        if not os.path.isfile(self.baseFilename):
            # A FIFO or /dev/stderr cannot be rotated (bpo-45401).
            self.maxBytes = 0
        self._size = os.path.getsize(self.baseFilename) if self.maxBytes else 0

    def emit(self, record: logging.LogRecord) -> None:
        """Write one line, rotating first if it would take the file past its limit."""
        try:
            line = self.format(record) + "\n"
            size = len(line) if line.isascii() else len(line.encode("utf-8"))
            if self.maxBytes and self._size and self._size + size > self.maxBytes:
                self.doRollover()
                self._size = 0
            stream = self.stream
            if stream is None:
                stream = self.stream = self._open()
            stream.write(line)
            self._size += size
            if self._pending.empty():
                stream.flush()
        except RecursionError:
            raise
        except Exception:  # noqa: BLE001 - a failed write must never reach the caller
            self.handleError(record)


class LoggingHandle:
    """The running logging pipeline: reload its level on SIGHUP, stop it at shutdown."""

    __slots__ = ("_handler", "_listener", "_lock", "_saved_flags", "_sink", "_stopped")

    def __init__(
        self,
        handler: _QueueHandler,
        listener: _QueueListener,
        sink: logging.Handler,
        saved_flags: dict[str, Any],
    ) -> None:
        self._handler = handler
        self._listener = listener
        self._sink = sink
        self._saved_flags = saved_flags
        self._stopped = False
        self._lock = threading.Lock()

    @property
    def dropped(self) -> int:
        """How many records were dropped because the sink could not keep up."""
        return self._handler.dropped

    def set_level(self, level: str) -> None:
        """Change the root level at run time (SIGHUP); raise ValueError on an unknown name."""
        logging.getLogger().setLevel(_level_number(level))

    def stop(self) -> None:
        """Write every queued record, detach from the root logger, close the sink; idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
        logging.getLogger().removeHandler(self._handler)
        self._listener.stop()
        self._sink.flush()
        self._sink.close()
        for name, value in self._saved_flags.items():
            setattr(logging, name, value)
        atexit.unregister(self.stop)


def setup_logging(level: str, fmt: str, file: str) -> LoggingHandle:
    """Route every logger (the aiohttp access log and the audit log too) through one queue."""
    global _current
    level_number = _level_number(level)
    if fmt not in LOG_FORMATS:
        raise ValueError(f"log format {fmt!r} is not valid; use \"json\" or \"text\"")

    with _setup_lock:
        if _current is not None:
            _current.stop()
            _current = None
        pending: SimpleQueue[logging.LogRecord | None] = SimpleQueue()
        sink: logging.Handler
        if file:
            try:
                sink = _RotatingSink(file, pending)
            except OSError as err:
                raise ValueError(
                    f"cannot open log file {file}: {err.strerror}; "
                    "fix [logging] file or the permissions of its directory"
                ) from None
        else:
            sink = _StreamSink(sys.stderr, pending)
        sink.setFormatter(JsonFormatter() if fmt == "json" else TextFormatter())
        handler = _QueueHandler(pending)
        listener = _QueueListener(handler, sink)
        saved_flags = {name: getattr(logging, name) for name in _UNUSED_RECORD_ATTRIBUTES}
        for name, value in _UNUSED_RECORD_ATTRIBUTES.items():
            setattr(logging, name, value)
        handle = LoggingHandle(handler, listener, sink, saved_flags)
        root = logging.getLogger()
        root.setLevel(level_number)
        root.addHandler(handler)
        for name in (ACCESS_LOGGER_NAME, AUDIT_LOGGER_NAME):
            logger = logging.getLogger(name)
            logger.setLevel(logging.NOTSET)
            logger.propagate = True
        # aiosqlite logs every statement with its parameter values at debug: manifest URIs with
        # their signed queries, token lookups. The SQL spans (tracing) name statements instead.
        logging.getLogger(SQL_DRIVER_LOGGER_NAME).setLevel(logging.INFO)
        listener.start()
        atexit.register(handle.stop)
        _current = handle
    _LOGGER.debug("logging to %s as %s at level %s", file or "stderr", fmt, level)
    return handle


@lru_cache(maxsize=1024)
def _is_secret_key(key: str) -> bool:
    """Tell whether a field name looks like it holds a secret."""
    return _SECRET_KEY_RE.search(key) is not None


def _looks_like_jwt(value: str) -> bool:
    """Catch a bearer token logged under an innocent field name."""
    return value.startswith(("eyJ", "Bearer ")) and value.count(".") == 2


_PLAIN_TYPES: Final = frozenset({int, float, bool, type(None)})


def _redact_dict(fields: dict[Any, Any]) -> dict[Any, Any]:
    """Redact one dict level; scalars are handled inline since audit() runs on every RPC call."""
    clean: dict[Any, Any] = {}
    for key, item in fields.items():
        if _is_secret_key(key if type(key) is str else str(key)):
            clean[key] = REDACTED
        elif type(item) in _PLAIN_TYPES:
            clean[key] = item
        elif type(item) is str:
            clean[key] = REDACTED if _looks_like_jwt(item) else item
        else:
            clean[key] = redact(item)
    return clean


def redact(value: Any) -> Any:
    """Return a copy of `value` with every secret-looking dict key's value replaced."""
    if isinstance(value, dict):
        return _redact_dict(value)
    if isinstance(value, (list, tuple)):
        return [redact(item) for item in value]
    if isinstance(value, str) and _looks_like_jwt(value):
        return REDACTED
    return value


def audit(event: str, **fields: Any) -> None:
    """Record a security-relevant event on the audit logger, with secrets redacted."""
    if not _AUDIT_ENABLED_FOR(logging.INFO):
        return
    # Straight to handle(): Logger.info() would only add a makeRecord() pass over `extra`.
    record = logging.getLogRecordFactory()(
        AUDIT_LOGGER_NAME, logging.INFO, "", 0, event, None, None
    )
    record.fields = {"event": event, **_redact_dict(fields)}
    _AUDIT_LOGGER.handle(record)


def record_template(name: str, msg: str) -> dict[str, Any]:
    """The attributes of an INFO record of logger `name`, taken from a real LogRecord.

    Records of the hot paths (an audit line per call, an access line per request) are built by
    copying this and filling in the time, which skips LogRecord.__init__ and the record factory;
    any handler (a test's caplog included) still finds every attribute it expects.
    """
    record = logging.LogRecord(name, logging.INFO, "", 0, msg, None, None)
    return {**vars(record), "thread": None, "threadName": None, "processName": None, "process": None}


_CALL_RECORD_BASE: Final = record_template(AUDIT_LOGGER_NAME, "rpc")
_new_record: Final = logging.LogRecord.__new__


def stamped_record(template: dict[str, Any]) -> tuple[logging.LogRecord, dict[str, Any]]:
    """A record made from `template` and stamped now; its attributes, to fill in."""
    record = _new_record(logging.LogRecord)
    attributes = template.copy()
    now = time.time()
    attributes["created"] = now
    attributes["msecs"] = int((now - int(now)) * 1000) + 0.0
    attributes["relativeCreated"] = (now - _LOGGING_START) * 1000
    record.__dict__ = attributes
    return record, attributes


def _call_fields(fields: Mapping[str, Any], call: AuditedCall) -> dict[str, Any]:
    """The fields of one call's audit line: the message's (who, from where) with the call's in between."""
    return {
        "event": fields.get("event", "rpc"), "principal": fields.get("principal"), "method": call[0],
        "outcome": call[1], "duration_ms": round(call[2] * 1000, 3), "remote": fields.get("remote"),
        "transport": fields.get("transport"),
    }


def call_fields(record: logging.LogRecord) -> list[dict[str, Any]]:
    """The fields of each audit line a record of calls stands for (none for any other record)."""
    calls: Sequence[AuditedCall] = getattr(record, "calls", ())
    fields = _fields(record)
    return [_call_fields(fields, call) for call in calls]


def audit_calls(principal: str, remote: str, transport: str, calls: Sequence[AuditedCall]) -> None:
    """The audit lines of one message's calls (a batch's, or a single call's), in one record.

    Every call still gets its own line, the same as `audit("rpc", ...)` at its end would write
    (its end time, its duration, its span's ids): the formatter on the writer thread writes one
    line per call. One record per message instead of one per call spares the event loop a pass
    through `logging` for each member of a batch.

    It skips the redaction pass: each field is made by the server from a bounded set (a device
    id or `admin`, a registered method name or `(unknown)`, an outcome label, an IP address,
    `http` or `ws`), never copied from what a client sent.
    """
    if not calls or not _AUDIT_ENABLED_FOR(logging.INFO):
        return
    record, attributes = stamped_record(_CALL_RECORD_BASE)
    attributes["fields"] = {"event": "rpc", "principal": principal, "remote": remote, "transport": transport}
    attributes["calls"] = calls
    _AUDIT_LOGGER.handle(record)


def audit_call(
    principal: str, method: str, outcome: str, seconds: float, remote: str, transport: str,
) -> None:
    """The audit line of one RPC call that just ended, the same as `audit("rpc", ...)` writes."""
    audit_calls(principal, remote, transport, [(method, outcome, seconds, time.time(), None)])
