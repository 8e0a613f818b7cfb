"""SQLite backend: the zero-setup default, one file shared by the workers of one machine."""

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from app.store.sql import SQLStore

BUSY_TIMEOUT_MS = 5000


def path_from_url(url):
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = url[len("sqlite:///"):]
    return path or ":memory:"


class SQLiteStore(SQLStore):
    backend = "sqlite"
    types = {"real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}
    errors = (sqlite3.Error,)

    def __init__(self, url, clock=time.time):
        super().__init__(clock)
        self.path = path_from_url(url)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._idle = []
        self._lock = threading.Lock()
        self._pid = os.getpid()

    def _connect(self):
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False,
        )
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextlib.contextmanager
    def _cursor(self, transaction):
        conn = self._checkout()
        try:
            cur = conn.cursor()
            if transaction:
                # IMMEDIATE takes the write lock up front, so two claims never deadlock.
                cur.execute("BEGIN IMMEDIATE")
                try:
                    yield cur
                except BaseException:
                    cur.execute("ROLLBACK")
                    raise
                cur.execute("COMMIT")
            else:
                yield cur
        except sqlite3.Error:
            conn.close()  # it may be broken: never reused
            raise
        except BaseException:
            self._checkin(conn)  # rolled back: fit for the next caller
            raise
        self._checkin(conn)

    def _checkout(self):
        with self._lock:
            if self._pid != os.getpid():
                # Connections must not cross a fork: drop the parent's.
                self._idle, self._pid = [], os.getpid()
            if self._idle:
                return self._idle.pop()
        return self._connect()

    def _checkin(self, conn):
        with self._lock:
            self._idle.append(conn)

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


def _enable_wal(conn):
    """Switch the file to WAL once. The switch needs the file to itself and SQLite does not
    wait on the busy timeout for it, so workers opening a new file together retry here."""
    deadline = time.monotonic() + BUSY_TIMEOUT_MS / 1000
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.01)
