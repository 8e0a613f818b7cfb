"""SQLite backend: the zero-setup default, one file shared by the workers of one machine."""

import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from app.store.sql import SQLStore

BUSY_TIMEOUT_MS = 5000
WAL_PAGES = 256  # checkpoint the WAL at this many pages (1 MiB of 4 KiB pages)
# Errors after which no pooled connection is trusted: each may have been opened read-only
# (the file was not writable then) or hold a WAL that could not be written.
_STALE_ERRORS = {sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR,
                 sqlite3.SQLITE_CANTOPEN, sqlite3.SQLITE_PERM}


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
        self._generation = 0  # bumped to retire every connection made before a stale error

    def _connect(self):
        conn = sqlite3.connect(
            self.path, timeout=BUSY_TIMEOUT_MS / 1000, isolation_level=None,
            check_same_thread=False, factory=_Connection,
        )
        # SQLite opens a file it may not write read-only, silently: such a connection would
        # keep failing writes after the permissions are fixed, so it is not pooled.
        conn.generation = self._generation if self._writable() else -1
        conn.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        # A WAL left to its default 4 MiB can fill a small volume by itself, after which no
        # checkpoint (it must grow the database) can make room: keep it to 1 MiB.
        conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
        conn.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * 4096}")
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
        except sqlite3.Error as exc:
            self._discard(conn, exc)
            raise
        else:
            self._checkin(conn)

    def _writable(self):
        if self.path == ":memory:":
            return True
        folder = os.path.dirname(os.path.abspath(self.path))
        return os.access(folder, os.W_OK) and (
            not os.path.exists(self.path) or os.access(self.path, os.W_OK))

    def _discard(self, conn, exc):
        """Close a connection that failed; after a full disk or a permission error, retire the
        pool too, and after a full disk empty the WAL, so the store recovers by itself as soon
        as there is space again (the WAL grows until a checkpoint, which a full disk stops)."""
        code = getattr(exc, "sqlite_errorcode", 0) & 0xFF
        if code == sqlite3.SQLITE_FULL:
            with contextlib.suppress(sqlite3.Error):
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        if code in _STALE_ERRORS:
            with self._lock:
                self._generation += 1
            self.close()

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
            if conn.generation == self._generation:
                self._idle.append(conn)
                return
        conn.close()

    def close(self):
        with self._lock:
            idle, self._idle = self._idle, []
        for conn in idle:
            conn.close()


class _Connection(sqlite3.Connection):
    generation = 0  # the store's generation when it was opened; -1: never pooled


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
