"""SQLite backend: the zero-setup default, one file shared by the workers of one machine.

Under gevent every operation runs in a small pool of native threads of its own
(``STORE_THREADS`` per process): SQLite waits in C (busy handler, ``fsync`` of a checkpoint,
opening the file), and in the event loop's thread such a wait would stop every greenlet of
the worker. Each operation waits for a lock at most ``LOCK_WAIT_SECONDS`` from the moment it
was submitted, queueing for a pool thread included, and then fails with StoreUnavailable (503).
"""

import collections
import contextlib
import os
import sqlite3
import threading
import time
from pathlib import Path

from app.store.sql import SQLStore
from app.tasks import gevent_active

# Longest wait of one operation for the write lock (another process's transaction, a backup);
# a text delivery is stored or refused with 503 within about this.
LOCK_WAIT_SECONDS = 2.5
STORE_THREADS = 4


def path_from_url(url):
    """``sqlite:///relative.db`` -> ``relative.db``; ``sqlite:////abs/x.db`` -> ``/abs/x.db``."""
    if not url.startswith("sqlite:///"):
        raise ValueError(f"not a sqlite URL: {url!r}")
    path = url[len("sqlite:///"):]
    return path or ":memory:"


class LockWaitExceeded(sqlite3.OperationalError):
    """The operation's lock-wait budget ran out before it could start."""


class SQLiteStore(SQLStore):
    backend = "sqlite"
    types = {"real": "REAL", "serial": "INTEGER PRIMARY KEY AUTOINCREMENT"}
    errors = (sqlite3.Error,)
    lock_wait = LOCK_WAIT_SECONDS

    def __init__(self, url, clock=time.time):
        super().__init__(clock)
        self.path = path_from_url(url)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        # A deque, not a list behind a lock: pool threads take and return connections, and
        # under gevent threading.Lock is a greenlet lock. append/pop are atomic.
        self._idle = collections.deque()
        self._pid = os.getpid()
        self._pool = self._pool_pid = None
        # One write transaction at a time per process: more would only take turns at the
        # file lock through SQLite's sleeping busy handler (measured: a third of the claims/s).
        self._writer = _native_lock()

    def _execute(self, fn, transaction):
        """Run the operation in a store thread under gevent (the event loop keeps running
        while it waits), in the calling thread otherwise."""
        give_up = time.monotonic() + self.lock_wait
        if not gevent_active():
            return super()._execute(fn, transaction, give_up=give_up)
        # The outcome comes back as a value: gevent prints every exception a pool thread
        # raises, and a 503 while the file is locked is expected, not a crash.
        ok, value = self._threads().apply(self._outcome, (fn, transaction, give_up))
        if ok:
            return value
        raise value

    def _outcome(self, fn, transaction, give_up):
        try:
            return True, super()._execute(fn, transaction, give_up=give_up)
        except Exception as exc:
            return False, exc

    def _threads(self):
        if self._pool_pid != os.getpid():  # made in each process: threads do not cross a fork
            from gevent.threadpool import ThreadPool

            self._pool, self._pool_pid = ThreadPool(STORE_THREADS), os.getpid()
        return self._pool

    def _connect(self):
        conn = sqlite3.connect(
            self.path, timeout=LOCK_WAIT_SECONDS, isolation_level=None,
            check_same_thread=False,
        )
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        return conn

    @contextlib.contextmanager
    def _cursor(self, transaction, give_up):
        conn = self._checkout()
        try:
            cur = conn.cursor()
            if not transaction:
                _set_busy_timeout(conn, give_up)
                yield cur
            elif not self._writer.acquire(timeout=max(0.0, give_up - time.monotonic())):
                raise LockWaitExceeded("gave up waiting for this process's writer")
            else:
                try:
                    yield from _transaction(conn, cur, give_up)
                finally:
                    self._writer.release()
        except LockWaitExceeded:
            self._checkin(conn)
            raise
        except sqlite3.Error:
            conn.close()
            raise
        else:
            self._checkin(conn)

    def _fork_check(self):
        if self._pid != os.getpid():
            # Connections and locks must not cross a fork: drop the parent's.
            self._idle, self._pid = collections.deque(), os.getpid()
            self._writer = _native_lock()

    def _checkout(self):
        self._fork_check()
        try:
            return self._idle.pop()
        except IndexError:
            return self._connect()

    def _checkin(self, conn):
        self._idle.append(conn)

    def close(self):
        idle, self._idle = self._idle, collections.deque()
        for conn in idle:
            conn.close()


def _transaction(conn, cur, give_up):
    _set_busy_timeout(conn, give_up)
    # IMMEDIATE takes the write lock up front, so two claims never deadlock.
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    cur.execute("COMMIT")


def _set_busy_timeout(conn, give_up):
    """Wait for the file lock for what is left of the operation's budget, no longer."""
    wait_ms = int((give_up - time.monotonic()) * 1000)
    if wait_ms <= 0:
        raise LockWaitExceeded("gave up waiting for the database lock")
    conn.execute(f"PRAGMA busy_timeout = {wait_ms}")


def _native_lock():
    """A lock between native threads (the store's pool threads), also under gevent."""
    if gevent_active():
        from gevent.monkey import get_original

        return get_original("threading", "Lock")()
    return threading.Lock()


def _enable_wal(conn):
    """Switch the file to WAL once. The switch needs the file to itself and SQLite does not
    wait on the busy timeout for it, so workers opening a new file together retry here."""
    deadline = time.monotonic() + LOCK_WAIT_SECONDS
    while conn.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
        try:
            conn.execute("PRAGMA journal_mode = WAL")
        except sqlite3.OperationalError:
            if time.monotonic() > deadline:
                raise
            _native_sleep(0.01)


def _native_sleep(seconds):
    """Sleep this thread: in a store thread, gevent's patched sleep would start a hub there."""
    if gevent_active():
        from gevent.monkey import get_original

        return get_original("time", "sleep")(seconds)
    return time.sleep(seconds)
