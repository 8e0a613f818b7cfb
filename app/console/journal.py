"""The console's delivery log: rows kept in memory and written to the store in batches.

Recording a delivery costs an append to a bounded deque, never a store round trip on the
path of a voice turn or an acknowledgement. A background task writes what has gathered
about once a second, and a worker that stops writes the rest; a process that dies loses at
most its last second or two of log rows (never an event: the log is for people to look at).
When the store cannot keep up, the oldest unwritten rows are dropped first. A voice turn's
row is written once it has ended, and before that, as in flight, only if it is still running
IN_FLIGHT_AFTER after it arrived: most turns end sooner, and each row written is CPU taken
from the callers whose first lines are due.
"""

from __future__ import annotations

import collections
import itertools
import logging
import os
import secrets
import threading
import time
from typing import Any

from gevent.monkey import get_original

from app.runtime import current_pid, gevent_active
from app.store.console import IN_FLIGHT, LOG_COLUMNS

log = logging.getLogger(__name__)

FLUSH_SECONDS = 1.0
IN_FLIGHT_AFTER = 1.0  # seconds a voice turn runs before the log shows it in flight
MAX_PENDING = 20_000
TEXT_LIMIT = 500
Row = tuple[Any, ...]  # one delivery-log row, its values in LOG_COLUMNS order
_OUTCOME, _RECEIVED_AT = LOG_COLUMNS.index("outcome"), LOG_COLUMNS.index("received_at")
EXTENSION = "journal"  # the key of an app's Journal in app.extensions


class Journal:
    """The log of one app's deliveries (``get_journal()``), written to its ``store``."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self._pending: collections.deque[Row] = collections.deque(maxlen=MAX_PENDING)
        self._young: dict[str, Row] = {}  # turns in flight, held back from the last flush
        self._started_pid: int | None = None
        # Held for an append or a swap, never across a switch: a native lock is enough.
        self._lock = get_original("_thread", "allocate_lock")()
        # One flush at a time: two could write a turn's versions out of order.
        self._flushing = get_original("_thread", "allocate_lock")()

    def record(self, delivery_id: str, event: str, outcome: str, status: int | None = None,
               channel: str | None = None, agent_id: str | None = None,
               call_id: str | None = None, conversation_id: str | None = None,
               said: str | None = None, received_at: float | None = None) -> Row:
        """Log one delivery; returns the row, which ``voice_finished`` completes later."""
        # A tuple in LOG_COLUMNS order: a held voice turn keeps its row, and a dict is 3x larger.
        row = (_row_id(), delivery_id, event, channel, agent_id, call_id,
               conversation_id, outcome, status, _cut(said), None,
               received_at or time.time(), None, None)
        self._add(row)
        return row

    def voice_finished(self, row: Row, outcome: str, first_line: float | None,
                       final_line: float | None, answered: str | None) -> None:
        """Complete a voice turn's row: how it ended, its line times (seconds), its answer."""
        first_ms = None if first_line is None else first_line * 1000
        final_ms = None if final_line is None else final_line * 1000
        self._add((*row[:7], outcome, row[8], row[9], _cut(answered), row[11], first_ms,
                   final_ms))

    def flush(self, last: bool = False) -> int:
        """Write what has gathered; returns how many rows were written (0 while another
        flush runs). ``last``: the process is stopping, so turns in flight are written too."""
        if not self._flushing.acquire(blocking=False):  # never waits: it may be the loop
            return 0
        try:
            return self._flush(time.time() - (0 if last else IN_FLIGHT_AFTER))
        finally:
            self._flushing.release()

    def _flush(self, shown_from: float) -> int:
        with self._lock:
            pending, self._pending = self._pending, collections.deque(maxlen=MAX_PENDING)
            latest, self._young = self._young, {}
        # A voice turn that started and ended since the last flush: only its last version.
        latest.update((row[0], row) for row in pending)
        rows, young = [], {}
        for key, row in latest.items():
            if row[_OUTCOME] == IN_FLIGHT and row[_RECEIVED_AT] > shown_from:
                young[key] = row
            else:
                rows.append(row)
        if young:
            with self._lock:  # a version recorded since is in _pending, and replaces these
                self._young.update(young)
        if not rows:
            return 0
        try:
            self.store.write_delivery_log(rows)
        except Exception as exc:
            log.warning("console delivery log: %d rows not written: %s", len(rows), exc)
            return 0
        return len(rows)

    def _add(self, row: Row) -> None:
        pid = current_pid()
        with self._lock:
            self._pending.append(row)
            start = self._started_pid != pid
            if start:  # under the lock: two threads' first rows start one loop
                self._started_pid = pid
        if start:
            self._start()

    def _start(self) -> None:
        if gevent_active():
            import gevent

            gevent.spawn(self._loop)
        else:
            threading.Thread(target=self._loop, name="delivery-log", daemon=True).start()

    def _loop(self) -> None:
        while True:
            time.sleep(FLUSH_SECONDS)
            if self.store.closed:  # the app is gone (tests, a scenario's server)
                return
            self.flush()


_sequence = itertools.count()
_token = [secrets.token_hex(6)]  # this process's: a new one in each forked child
os.register_at_fork(after_in_child=lambda: _token.__setitem__(0, secrets.token_hex(6)))


def _row_id() -> str:
    """A log row's id: unique across processes and machines, and in time order, so that the
    store appends to its index rather than writing at a random place in it."""
    return f"{time.time_ns():016x}{_token[0]}{next(_sequence) % 0x1000000:06x}"


def _cut(text: str | None) -> str | None:
    return text[:TEXT_LIMIT] if isinstance(text, str) else None


def get_journal(app: Any = None) -> Journal:
    """The delivery log of ``app``, by default the current one."""
    from flask import current_app

    return (current_app if app is None else app).extensions[EXTENSION]
