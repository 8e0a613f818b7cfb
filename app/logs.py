"""Logging: one stream (stderr) for gunicorn and the app, as text or JSON (``LOG_FORMAT``),
every line of a delivery or a job carrying its ids.

``bind(delivery_id=..., event=...)`` puts fields on every line logged afterwards in the same
greenlet or thread (a voice turn's stream runs in its request's greenlet, a job in its own),
until ``clear()``; they are context variables, so concurrent calls never mix them up.

In the server (``write_in_background()``, called by gunicorn.conf.py and the ``worker``
command) each process writes its lines from a thread of its own, a batch at most
WRITE_SECONDS after they were logged: a log reader that stops reading (a full pipe, a stuck
collector) then blocks that thread, never the event loop. Up to MAX_WAITING_LINES wait; later
lines are dropped and counted, and a warning says how many once the reader is back.
"""

from __future__ import annotations

import contextlib
import contextvars
import logging
import os
import sys
import time
import traceback
from collections.abc import Iterator
from typing import Any

from gevent.monkey import get_original
from pythonjsonlogger.json import JsonFormatter

from app.runtime import ProcessThread, current_pid

FIELDS = ("delivery_id", "event", "channel", "call_id", "conversation_id", "agent_id",
          "job_id", "attempt")


class _Bound:
    """What ``bind`` left for this greenlet or thread: the values in FIELDS order (None where
    unbound; a tuple, as a held voice stream keeps it), and their text, made when a line first
    needs it (a ``bind`` whose fields no line shows costs no formatting)."""

    __slots__ = ("_text", "values")

    def __init__(self, values: tuple[Any, ...]) -> None:
        self.values = values
        self._text: str | None = None

    @property
    def text(self) -> str:
        if self._text is None:
            self._text = "".join(f" {k}={v}" for k, v in zip(FIELDS, self.values, strict=True)
                                 if v is not None)
        return self._text


_POSITION = {name: i for i, name in enumerate(FIELDS)}
_NOTHING = _Bound((None,) * len(FIELDS))
_context: contextvars.ContextVar[_Bound] = contextvars.ContextVar("log_context",
                                                                  default=_NOTHING)
TEXT_FORMAT = "%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s%(context)s"
JSON_FIELDS = "%(asctime)s %(process)d %(levelname)s %(name)s %(message)s"


def bind(**fields: Any) -> None:
    """Add ``fields`` (names of FIELDS; a None value leaves that field as it was) to every
    later line of this greenlet or thread."""
    values = list(_context.get().values)
    for name, value in fields.items():
        position = _POSITION[name]  # an unknown name is refused, whatever its value
        if value is not None:
            values[position] = value
    _context.set(_Bound(tuple(values)))


def clear() -> None:
    _context.set(_NOTHING)


class ContextFilter(logging.Filter):
    """Copies the bound fields onto each record (``record.context`` is their text form)."""

    def filter(self, record: logging.LogRecord) -> bool:
        bound = _context.get()
        record.context = bound.text
        record.__dict__.update(zip(FIELDS, bound.values, strict=True))  # one call, not eight
        return True


class _SameSecond:
    """``formatTime`` that formats each second once (``time.strftime`` is most of a line's
    formatting), for the default date format."""

    _second: tuple[int, str] = (-1, "")
    default_time_format: str
    default_msec_format: str | None

    def formatTime(self, record: logging.LogRecord, datefmt: str | None = None) -> str:
        if datefmt is not None:
            return super().formatTime(record, datefmt)  # type: ignore[misc]
        return self._asctime(record.created, record.msecs)

    def _asctime(self, created: float, msecs: float) -> str:
        second, text = self._second
        if int(created) != second:
            second = int(created)
            text = time.strftime(self.default_time_format,
                                 self.converter(second))  # type: ignore[attr-defined]
            self._second = (second, text)
        if self.default_msec_format:
            return self.default_msec_format % (text, msecs)
        return text

    def _now(self) -> str:
        """The time as a record made now would show it."""
        created = time.time()
        return self._asctime(created, int((created - int(created)) * 1000))


class TextFormatter(_SameSecond, logging.Formatter):
    def __init__(self) -> None:
        super().__init__(TEXT_FORMAT)

    def line(self, name: str, message: str, bound: _Bound) -> str:
        """What ``format`` makes of an INFO record of ``message`` (no arguments, no
        exception) logged now on logger ``name`` with the fields ``bound``."""
        # TEXT_FORMAT written out (0.7 µs less than formatting it); tests compare the two.
        return f"{self._now()} {current_pid()} INFO {name}: {message}{bound.text}"


class JSONFormatter(_SameSecond, JsonFormatter):
    """One JSON object per line; the bound ids are top-level keys when present."""

    def __init__(self) -> None:
        super().__init__(JSON_FIELDS, rename_fields={"levelname": "level", "name": "logger",
                                                     "asctime": "time"})

    def add_fields(self, log_record: dict, record: logging.LogRecord,
                   message_dict: dict) -> None:
        super().add_fields(log_record, record, message_dict)
        for name in FIELDS:
            if getattr(record, name, None) is None:
                log_record.pop(name, None)
        log_record.pop("context", None)

    def line(self, name: str, message: str, bound: _Bound) -> str:
        """As TextFormatter.line: the same object as ``format`` makes, keys in its order."""
        data: dict[str, Any] = {"time": self._now(), "process": current_pid(), "level": "INFO",
                                "logger": name, "message": message}
        data.update((k, v) for k, v in zip(FIELDS, bound.values, strict=True) if v is not None)
        return self.serialize_log_record(self.process_log_record(data))


WRITE_SECONDS = 0.05  # how long a line may wait, in the server, before it is written
MAX_WAITING_LINES = 10_000  # lines kept while the log reader stalls; later ones are dropped
ATOMIC_WRITE = 4096  # PIPE_BUF: a write this small reaches a pipe whole, never interleaved

_background = [False]
# The lines waiting for the writer thread, of every handler, in the order they were logged.
_waiting: list[tuple[Any, str]] = []
# Reentrant: a signal handler may log while this thread holds it.
_waiting_lock = get_original("_thread", "RLock")()
_write_lock = get_original("_thread", "allocate_lock")()  # batches written in order
_wake = get_original("_thread", "allocate_lock")()  # released when a first line waits
_wake.acquire()
_state: dict[str, Any] = {"signalled": False, "dropped": 0, "dropped_by": None}


def write_in_background() -> None:
    """From now on, in this process and the processes it forks, log lines are written by a
    thread of each process (see the module's docstring)."""
    _background[0] = True


def write_waiting() -> None:
    """Write every line waiting for the writer thread, now, in this thread."""
    with _write_lock:
        with _waiting_lock:
            batch = _waiting[:]
            _waiting.clear()
            dropped, dropper = _state["dropped"], _state["dropped_by"]
            _state["dropped"], _state["dropped_by"] = 0, None
        if dropped:
            batch.append((dropper.stream, dropper.format(_dropped_record(dropper, dropped))
                          + dropper.terminator))
        for stream, chunk in _chunks(batch):
            try:
                _write(stream, chunk)
            except Exception:  # as Handler.handleError: say so where possible, and go on
                if logging.raiseExceptions:
                    with contextlib.suppress(Exception):
                        traceback.print_exc(file=sys.stderr)


def _write(stream: Any, text: str) -> None:
    """Write ``text`` to the descriptor under ``stream``, not through the stream: its buffer's
    lock, held by this thread while a stalled reader blocks it, would stay held for good in a
    process forked meanwhile. A stream with no descriptor gets the text its own way."""
    try:
        fd = stream.fileno()
    except (AttributeError, OSError, ValueError):  # io.UnsupportedOperation is both
        _write_through(stream, text)
        return
    data = memoryview(text.encode(_encoding(stream), "backslashreplace"))
    while data:
        try:
            data = data[os.write(fd, data):]
        except BlockingIOError:  # a non-blocking descriptor, full: wait until it takes more
            get_original("select", "select")([], [fd], [])


def _dropped_record(handler: logging.Handler, count: int) -> logging.LogRecord:
    record = logging.LogRecord(__name__, logging.WARNING, __file__, 0,
                               "%d log lines dropped: the log output was not being read",
                               (count,), None)
    handler.filter(record)  # the bound fields, of the thread that writes, a format may name
    return record


def _chunks(batch: list[tuple[Any, str]]) -> Iterator[tuple[Any, str]]:
    """``batch``'s lines joined into writes of at most ATOMIC_WRITE bytes, each to one stream;
    a longer line is a write of its own."""
    stream: Any = None
    parts: list[str] = []
    size = 0
    for target, line in batch:
        length = len(line) if line.isascii() else len(
            line.encode(_encoding(target), "backslashreplace"))
        if parts and (target is not stream or size + length > ATOMIC_WRITE):
            yield stream, "".join(parts)
            parts, size = [], 0
        stream = target
        parts.append(line)
        size += length
    if parts:
        yield stream, "".join(parts)


def _write_forever() -> None:
    sleep = get_original("time", "sleep")  # a native thread: gevent's sleep needs a hub
    while True:
        _wake.acquire()  # until a line waits
        sleep(WRITE_SECONDS)  # the lines logged meanwhile go in the same writes
        with _waiting_lock:
            _state["signalled"] = False  # the next line wakes this thread again
        with contextlib.suppress(Exception):  # the thread goes on: no other writes the lines
            write_waiting()


_writer = ProcessThread(_write_forever)


def _write_through(stream: Any, text: str) -> None:
    """StreamHandler's write, less its flush(), which takes the lock handle() holds."""
    stream.write(text)
    if flush := getattr(stream, "flush", None):
        flush()


def _encoding(stream: Any) -> str:
    return getattr(stream, "encoding", None) or "utf-8"


def _before_fork() -> None:
    _waiting_lock.acquire()  # not the write lock: a stalled reader must not stop a fork


def _after_fork_in_parent() -> None:
    _waiting_lock.release()


def _after_fork_in_child() -> None:
    """The parent's waiting lines are the parent's to write; this process starts afresh."""
    global _waiting_lock, _write_lock, _wake
    _waiting_lock = get_original("_thread", "RLock")()
    _write_lock = get_original("_thread", "allocate_lock")()
    _wake = get_original("_thread", "allocate_lock")()
    _wake.acquire()
    _waiting.clear()
    _state.update(signalled=False, dropped=0, dropped_by=None)


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_after_fork_in_child)


class EscapingStreamHandler(logging.StreamHandler):
    """A stream handler that never drops a line to encoding: characters the stream cannot
    encode (a lone surrogate from a delivery, say) are written as backslash escapes. In the
    server its lines go to the writer thread."""

    _agentphone: bool  # set on the handler `configure` installs, so that it installs one

    def createLock(self):
        # Not gevent's patched RLock, written in Python (~4 µs a line, taken twice): writing
        # to stderr never yields to another greenlet, so a native lock is never held across
        # a switch. The superclass registers the handler for re-initialising it after a fork.
        super().createLock()
        self.lock = get_original("_thread", "RLock")()

    def emit(self, record):
        try:
            self.emit_line(self.format(record))
        except RecursionError:
            raise
        except Exception:
            self.handleError(record)

    def emit_line(self, text: str) -> None:
        """Write one formatted line (``escaped``): to the writer thread in the server, else
        at once."""
        line = text + self.terminator
        if not (_background[0] and self._wait(line)):
            self.acquire()  # as handle() holds it around emit()
            try:
                _write_through(self.stream, line)
            finally:
                self.release()

    def _wait(self, line: str) -> bool:
        """Queue ``line`` for the writer thread; False if this process has none."""
        with _waiting_lock:
            if not _writer.ensure():
                return False
            if len(_waiting) >= MAX_WAITING_LINES:
                _state["dropped"] += 1
                _state["dropped_by"] = self
                return True
            _waiting.append((self.stream, line))
            if not _state["signalled"]:
                _state["signalled"] = True
                _wake.release()
        return True

    def flush(self):
        write_waiting()
        super().flush()

    def format(self, record):
        return self.escaped(super().format(record))

    def escaped(self, text: str) -> str:
        """``text`` with what the stream cannot encode written as backslash escapes."""
        if text.isascii():  # nearly every line: nothing to escape
            return text
        encoding = _encoding(self.stream)
        return text.encode(encoding, "backslashreplace").decode(encoding)


def info(logger: logging.Logger, message: str) -> None:
    """``logger.info("%s", message)``, and when the app's handler alone writes the logger's
    lines (as for gunicorn's access lines), the same line made without a LogRecord and the
    logging module's path: less than half the cost, paid by every request's access line."""
    handler = _sole_handler(logger)
    if handler is None:
        logger.info("%s", message)
        return
    try:
        handler.emit_line(handler.escaped(handler.formatter.line(  # type: ignore[union-attr]
            logger.name, message, _context.get())))
    except RecursionError:
        raise
    except Exception:
        handler.handleError(logger.makeRecord(logger.name, logging.INFO, "", 0, "%s",
                                              (message,), None))


def _sole_handler(logger: logging.Logger) -> EscapingStreamHandler | None:
    """The app's handler when it is the only place ``logger``'s INFO lines go, with nothing
    that could change them on the way (filters other than the bound fields'), else None."""
    if not logger.isEnabledFor(logging.INFO):
        return None  # as logger.info: nothing at all
    if (logger.propagate or logger.filters or len(logger.handlers) != 1
            or logging.getLogRecordFactory() is not logging.LogRecord):  # tracing adds fields
        return None
    handler = logger.handlers[0]
    formatter = handler.formatter
    if (type(handler) is not EscapingStreamHandler or handler.level > logging.INFO
            or type(formatter) not in _LINE_FORMATTERS
            or getattr(formatter, "datefmt", None) is not None
            or not logging.logProcesses
            or not all(type(f) is ContextFilter for f in handler.filters)):
        return None  # the line as this module's formatters make it, and nothing else
    return handler


def formatter(fmt: str) -> logging.Formatter:
    return JSONFormatter() if fmt == "json" else TextFormatter()


def configure(level: str = "INFO", fmt: str = "text") -> None:
    """Send the root logger (and so gunicorn's, see gunicorn.conf.py) to stderr, once.

    Records then carry no thread, file, line or function (``%(lineno)d`` reads 0, and
    ``stack_info`` is dropped): no format here names them, and under gevent finding the
    thread costs ~30 µs a line, the caller's frame a few more."""
    logging.logThreads = False
    logging.logMultiprocessing = False
    logging._srcfile = None
    # gevent's patch_all gave the handlers made before it (gunicorn's, in the master) its
    # Python RLock: back to a native one.
    for name in ("", "gunicorn.error", "gunicorn.access"):
        for existing in logging.getLogger(name).handlers:
            if isinstance(existing, EscapingStreamHandler):
                existing.createLock()
    root = logging.getLogger()
    handler = next((h for h in root.handlers if getattr(h, "_agentphone", False)), None)
    if handler is None:
        handler = EscapingStreamHandler(sys.stderr)
        handler._agentphone = True
        handler.addFilter(ContextFilter())
        root.addHandler(handler)
    handler.setFormatter(formatter(fmt))
    root.setLevel(level)


def logconfig(fmt: str, level: str) -> dict:
    """gunicorn's ``logconfig_dict``: its error and access logs through the same handler."""
    return {
        "version": 1,
        "disable_existing_loggers": False,
        "filters": {"context": {"()": ContextFilter}},
        "formatters": {"app": {"()": JSONFormatter if fmt == "json" else TextFormatter}},
        "handlers": {"stderr": {"class": "app.logs.EscapingStreamHandler",
                                "stream": "ext://sys.stderr",
                                "formatter": "app", "filters": ["context"]}},
        "loggers": {
            "gunicorn.error": {"handlers": ["stderr"], "level": level, "propagate": False},
            "gunicorn.access": {"handlers": ["stderr"], "level": "INFO", "propagate": False},
        },
        "root": {"handlers": [], "level": level},
    }


_LINE_FORMATTERS = (TextFormatter, JSONFormatter)
