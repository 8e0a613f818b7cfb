"""SQLite backend: the zero-setup default, one file shared by the workers of one machine.

Under gevent no SQLite call waits in the event loop's thread: SQLite waits in C (busy handler,
``fsync`` of a checkpoint, opening the file), and there such a wait would stop every greenlet
of the worker. An operation first tries the loop's own connection, which never waits: its busy
timeout is 0, it never checkpoints (so it never syncs) and it runs only when no other operation
of this process is queued. When the file is locked, or that try cannot run, the operation goes
to a thread: transactions to one writer thread per process, which commits the queued ones as a
group (one ``BEGIN IMMEDIATE`` ... ``COMMIT``, a savepoint per operation: one failing operation
does not undo the others), single statements to a small pool of native threads
(``STORE_THREADS``). Each operation waits for a lock at most ``LOCK_WAIT_SECONDS`` from the
moment it was submitted, queueing included, and then fails with StoreUnavailable (503).
Checkpoints run in a thread of their own every ``CHECKPOINT_EVERY`` commits, beside the writes;
only their last step, which starts the WAL over, holds writes up (a few ms).
"""

import collections
import contextlib
import logging
import os
import random
import sqlite3
import threading
import time
from pathlib import Path

from gevent import Timeout
from gevent.event import AsyncResult

from app.runtime import current_pid, gevent_active
from app.store.base import StoreUnavailable
from app.store.sql import SQLStore

log = logging.getLogger(__name__)

# Longest wait of one operation for the write lock (another process's transaction, a backup);
# a text delivery is stored or refused with 503 within about this.
LOCK_WAIT_SECONDS = 2.5
STORE_THREADS = 4
# SQLite's own wait for a lock, in rounds: it tries at 0, 1, 3 and 5 ms, then the statement is
# tried again (the Python between rounds takes the GIL from the event loop: not every ms).
BUSY_ROUND_MS = 5
GROUP_MAX = 256  # operations committed together at most
WRITER_SLACK_SECONDS = 30.0
WAL_PAGES = 256  # checkpoint the WAL at this many pages (1 MiB of 4 KiB pages)
CHECKPOINT_EVERY = 64  # commits between two checkpoints under gevent (a few pages each)
# Under gevent the WAL is started over once it holds this many pages (8 MiB): each start holds
# writes up for ~5 ms, and at 1,000 texts/s 64 commits add ~800 pages.
RESTART_PAGES = 2048
RESTART_WAIT_SECONDS = 0.1  # longest a checkpoint holds this process's writes to end the WAL
CHECKPOINT_TRIES = 5  # of a checkpoint that met another process's
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


class LockWaitExceeded(sqlite3.OperationalError):
    """The operation's lock-wait budget ran out before it could start."""


class _Busy(Exception):
    """The loop's connection could not run the operation without waiting: use a thread."""


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
        self._generation = 0  # bumped to retire every connection made before a stale error
        self._pool = self._pool_pid = self._queue = self._checkpoints = None
        self._loop_conn = None  # the event loop's connection (gevent only), opened in a thread
        self._loop_conn_state = _CLOSED
        self._loop_thread = None
        self._commits = 0  # since the last checkpoint (gevent only)
        self._restarts = 0  # WAL starts this process made (the value its starting write sets)
        self._checkpoint_due = False  # a checkpoint was asked for and has not ended
        self._checkpointing = False  # until it ends, every operation runs in a thread
        # One write transaction at a time per process without gevent (threads): more would only
        # take turns at the file lock through SQLite's sleeping busy handler.
        self._writer = _native_lock()

    def _attempt(self, fn, transaction, bulk=False):
        """Under gevent, run the operation on the loop's connection when it can run without
        waiting (and is not ``bulk``: many rows would hold the loop), else in a store thread
        (the event loop keeps running while it waits); in the calling thread otherwise."""
        give_up = time.monotonic() + self.lock_wait
        if not gevent_active():
            return super()._attempt(fn, transaction, give_up=give_up)
        conn = None if bulk else self._loop_connection(transaction)
        if conn is not None:
            try:
                return super()._attempt(fn, transaction, loop_conn=conn)
            except _Busy:
                pass  # another writer has the file, or the try failed: a thread waits for it
            finally:
                self._loop_conn_state = _IDLE if self._loop_conn is conn else _CLOSED
                if transaction:
                    self._writer.release()
        if transaction:
            result = AsyncResult()  # set by the writer thread
            self._writes().put((fn, give_up, result))
            # With a timeout: its timer keeps the loop alive while only another thread can
            # wake it (e.g. the migration while the worker boots). Never reached otherwise.
            try:
                ok, value = result.get(timeout=self.lock_wait + WRITER_SLACK_SECONDS)
            except Timeout:
                raise StoreUnavailable("sqlite store: the writer thread did not answer") from None
        else:
            # The outcome comes back as a value: gevent prints every exception a pool thread
            # raises, and a 503 while the file is locked is expected, not a crash.
            ok, value = self._threads().apply(self._outcome, (fn, transaction, give_up))
        if ok:
            return value
        if isinstance(value, self.errors):
            raise StoreUnavailable(f"{self.backend} store error: {value}") from value
        raise value

    def _outcome(self, fn, transaction, give_up):
        try:
            return True, super()._attempt(fn, transaction, give_up=give_up)
        except Exception as exc:
            return False, exc

    def _loop_connection(self, transaction):
        """The loop's connection when it may run this operation now, else None (and, the
        first time, open it in a pool thread for the next operations)."""
        self._fork_check()
        if self.closed or _native_thread_id() != self._loop_thread:
            return None  # a native thread of its own (a pool thread): not the loop's
        if self._loop_conn_state is _CLOSED:
            self._loop_conn_state = _OPENING
            self._threads().spawn(self._open_loop_connection)
            return None
        if self._loop_conn_state is not _IDLE or self._checkpointing:
            return None  # opening, in use by an operation that yielded (never expected)
        conn = self._loop_conn
        if conn.generation != self._generation:  # retired after a stale error
            self._loop_conn, self._loop_conn_state = None, _CLOSED
            conn.close()
            return None
        if transaction and (not self._queue.empty()
                            or not self._writer.acquire(blocking=False)):
            return None  # queued operations go first; the writer thread holds the lock
        self._loop_conn_state = _IN_USE
        if self._checkpointing:  # set by the checkpoint thread since the check above
            self._loop_conn_state = _IDLE
            if transaction:
                self._writer.release()
            return None
        return conn

    def _open_loop_connection(self):
        try:
            conn = self._connect()
            conn.execute("PRAGMA busy_timeout = 0")
        except Exception:
            self._loop_conn_state = _CLOSED  # the next operation tries again
            return
        self._loop_conn, self._loop_conn_state = conn, _IDLE

    def _committed(self):
        """Count a commit; every CHECKPOINT_EVERY, have the checkpoint thread checkpoint."""
        self._commits += 1
        if self._commits >= CHECKPOINT_EVERY and not self._checkpoint_due:
            self._commits, self._checkpoint_due = 0, True
            self._checkpoints.put(None)

    def _checkpoint_forever(self, requests):
        """The checkpoint thread: its fsyncs (~10 ms each) hold up no write of this process."""
        while True:
            requests.get()
            try:
                # A RESTART that met another process's checkpoint, or its readers, fails at
                # once: try again a moment later, at a random one, so that two do not keep meeting.
                for _ in range(CHECKPOINT_TRIES):
                    if self._checkpoint():
                        break
                    self._checkpointing = False
                    _native_sleep(random.uniform(0.002, 0.02))
            except Exception:  # the thread goes on: without it the WAL would grow unseen
                log.exception("sqlite store: checkpoint failed")
            finally:
                self._checkpoint_due = self._checkpointing = False

    def _checkpoint(self) -> bool:
        """Copy the WAL into the database, and start it over once it is long, holding writes
        up only while the last frames are copied. A PASSIVE copy (waiting for no one; its
        fsyncs take ~10 ms each) runs beside them. Past RESTART_PAGES, or when that copied it
        whole, a RESTART copies what came meanwhile, holding off this process's writes and,
        while it runs, every process's (under a steady load from several processes PASSIVE
        copies alone never end the WAL); then one write at once has this thread start the
        WAL over and sync its header. No operation runs on this process's loop connection
        meanwhile; another process's loop may still be the first to write after the RESTART
        and pay that sync (a few ms). False when it should be tried again."""
        give_up = time.monotonic() + self.lock_wait
        try:
            with self._cursor(False, give_up) as cur:
                busy, frames, copied = cur.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchone()
                if frames <= 0 or (not busy and copied < frames < RESTART_PAGES):
                    # Empty, another process's checkpoint at work, or not yet worth a start.
                    return True
                cur.give_up = 0.0  # tried once from here on: this process's writes wait
                self._checkpointing = True
                if not self._writer.acquire(timeout=RESTART_WAIT_SECONDS):
                    return False
                try:
                    if not self._loop_connection_idle(time.monotonic() + RESTART_WAIT_SECONDS):
                        return False
                    with cur.waiting(RESTART_WAIT_SECONDS * 1000):
                        busy, _, _ = cur.execute("PRAGMA wal_checkpoint(RESTART)").fetchone()
                        if busy:
                            return False
                        # One statement, no read first: another process's loop may write first.
                        self._restarts += 1
                        cur.execute(f"PRAGMA user_version = {self._restarts % 1000}")
                        return True
                finally:
                    self._writer.release()
        except sqlite3.Error:
            return False  # the next one tries again; the WAL only grows meanwhile

    def _loop_connection_idle(self, until):
        """Wait (this thread only) for a single statement on the loop's connection to end."""
        while self._loop_conn_state is _IN_USE:
            if time.monotonic() > until:
                return False
            _native_sleep(0.0005)
        return True

    def _threads(self):
        if self._pool_pid != current_pid():  # made in each process: threads do not cross a fork
            from gevent.monkey import get_original
            from gevent.threadpool import ThreadPool

            self._pool, self._pool_pid = ThreadPool(STORE_THREADS), os.getpid()
            # A parent's checkpoint, due or running, is not this process's.
            self._commits, self._checkpoint_due, self._checkpointing = 0, False, False
            self._loop_thread = _native_thread_id()
            self._queue = get_original("queue", "SimpleQueue")()
            self._checkpoints = get_original("queue", "SimpleQueue")()
            start = get_original("_thread", "start_new_thread")
            start(self._write_groups, (self._queue,))
            start(self._checkpoint_forever, (self._checkpoints,))
        return self._pool

    def _writes(self):
        self._threads()
        return self._queue

    def _write_groups(self, queue):
        """The writer thread, forever: take what is queued (up to ``GROUP_MAX``), commit it as
        one transaction, hand each greenlet its outcome. While another process holds the lock,
        operations whose budget ran out fail and the others wait on."""
        pending = []
        while True:
            if not pending:
                pending.append(queue.get())
            while len(pending) < GROUP_MAX and not queue.empty():
                pending.append(queue.get())
            now = time.monotonic()
            for _, give_up, result in pending:
                if give_up <= now:
                    result.set((False, LockWaitExceeded("gave up waiting for the database lock")))
            pending = [item for item in pending if item[1] > now]
            if not pending:
                continue
            try:
                outcomes = self._commit_group(pending)
                self._committed()
            except sqlite3.OperationalError as exc:
                if _locked(exc):
                    continue  # the earliest budget ran out: fail that one, try the rest again
                outcomes = [(False, exc)] * len(pending)
            except Exception as exc:  # the transaction as a whole failed
                outcomes = [(False, exc)] * len(pending)
            for (_, _, result), outcome in zip(pending, outcomes, strict=True):
                result.set(outcome)
            pending = []

    def _commit_group(self, group):
        give_up = min(item[1] for item in group)
        with self._cursor(True, give_up) as cur:
            outcomes = []
            for fn, _, _ in group:
                cur.execute("SAVEPOINT operation")
                try:
                    outcomes.append((True, fn(cur)))
                    cur.execute("RELEASE operation")
                except Exception as exc:
                    cur.execute("ROLLBACK TO operation")
                    cur.execute("RELEASE operation")
                    outcomes.append((False, exc))
            return outcomes

    def _connect(self):
        conn = sqlite3.connect(
            self.path, timeout=LOCK_WAIT_SECONDS, isolation_level=None,
            check_same_thread=False, factory=_Connection,
        )
        # SQLite opens a file it may not write read-only, silently: such a connection would
        # keep failing writes after the permissions are fixed, so it is not pooled.
        conn.generation = self._generation if self._writable() else -1
        _enable_wal(conn)
        conn.execute("PRAGMA synchronous = NORMAL")
        # A WAL left to its default 4 MiB can fill a small volume by itself, after which no
        # checkpoint (it must grow the database) can make room: keep it to 1 MiB. Under gevent
        # checkpoints are explicit (a checkpoint in the loop's thread would stop it), and a WAL
        # started over is not cut short: cutting and growing it again lengthened every start.
        if gevent_active():
            conn.execute("PRAGMA wal_autocheckpoint = 0")
            conn.execute(f"PRAGMA journal_size_limit = {2 * RESTART_PAGES * 4096}")
        else:
            conn.execute(f"PRAGMA wal_autocheckpoint = {WAL_PAGES}")
            conn.execute(f"PRAGMA journal_size_limit = {WAL_PAGES * 4096}")
        conn.execute(f"PRAGMA busy_timeout = {BUSY_ROUND_MS}")  # see _WaitingCursor
        return conn

    @contextlib.contextmanager
    def _cursor(self, transaction, give_up=None, loop_conn=None):
        if loop_conn is not None:
            yield from self._loop_transaction(loop_conn, transaction)
            return
        conn = self._checkout()
        try:
            cur = _waiting_cursor(conn, give_up)
            if not transaction:
                yield cur
            elif not self._writer.acquire(timeout=max(0.0, give_up - time.monotonic())):
                raise LockWaitExceeded("gave up waiting for this process's writer")
            else:
                try:
                    if time.monotonic() >= give_up:  # the writer came too late
                        raise LockWaitExceeded("gave up waiting for this process's writer")
                    yield from _transaction(cur)
                finally:
                    self._writer.release()
        except LockWaitExceeded:
            self._checkin(conn)
            raise
        except sqlite3.Error as exc:
            self._discard(conn, exc)
            raise
        except BaseException:
            self._checkin(conn)  # rolled back: fit for the next caller
            raise
        self._checkin(conn)

    def _loop_transaction(self, conn, transaction):
        """Run the operation on the loop's connection in a transaction of its own, which
        never waits: any SQLite error rolls it back and raises _Busy (a thread runs it again,
        and reports the error if there is one)."""
        cur = conn.cursor()
        try:
            cur.execute("BEGIN IMMEDIATE" if transaction else "BEGIN")
            try:
                yield cur
            except BaseException:
                if conn.in_transaction:
                    cur.execute("ROLLBACK")
                raise
            cur.execute("COMMIT")
        except sqlite3.Error as exc:
            if conn.in_transaction:
                with contextlib.suppress(sqlite3.Error):
                    cur.execute("ROLLBACK")
            if not _locked(exc):  # a full disk, a permission: the thread path recovers
                self._loop_conn = None
                conn.close()
            raise _Busy() from exc
        if conn.total_changes != conn.seen_changes:
            conn.seen_changes = conn.total_changes
            self._committed()

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
                # It waits for readers and writers: longer than a statement's round.
                conn.execute(f"PRAGMA busy_timeout = {LOCK_WAIT_SECONDS * 1000:.0f}")
                conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        conn.close()
        if code in _STALE_ERRORS:
            self._generation += 1
            self._retire()

    def _fork_check(self):
        if self._pid != current_pid():
            # Connections and locks must not cross a fork: drop the parent's.
            self._idle, self._pid = collections.deque(), os.getpid()
            self._writer = _native_lock()
            self._loop_conn, self._loop_conn_state = None, _CLOSED

    def _checkout(self):
        self._fork_check()
        try:
            return self._idle.pop()
        except IndexError:
            return self._connect()

    def _checkin(self, conn):
        if conn.in_transaction:  # a thread cancelled just after BEGIN: the lock goes with it
            try:
                conn.execute("ROLLBACK")
            except sqlite3.Error:
                conn.close()
                return
        if conn.generation == self._generation and not self.closed:
            self._idle.append(conn)
        else:
            conn.close()

    def _retire(self):
        idle, self._idle = self._idle, collections.deque()
        for conn in idle:
            conn.close()

    def close(self):
        """Close the pooled connections; one still in use (a background task finishing) is
        closed when it comes back, not pooled."""
        self.closed = True
        self._retire()
        conn, self._loop_conn = self._loop_conn, None
        if conn is not None and self._loop_conn_state is not _IN_USE:
            conn.close()


_CLOSED, _OPENING, _IDLE, _IN_USE = (object() for _ in range(4))  # the loop connection's states


class _Connection(sqlite3.Connection):
    generation = 0  # the store's generation when it was opened; -1: never pooled
    seen_changes = 0  # total_changes at the loop connection's last counted commit


def _locked(exc):
    return isinstance(exc, LockWaitExceeded) or "locked" in str(exc) or "busy" in str(exc)


def _transaction(cur):
    # IMMEDIATE takes the write lock up front, so two claims never deadlock.
    cur.execute("BEGIN IMMEDIATE")
    try:
        yield cur
    except BaseException:
        cur.execute("ROLLBACK")
        raise
    cur.execute("COMMIT")


class _WaitingCursor(sqlite3.Cursor):
    """A cursor whose statements, while another process holds the write lock, are tried again
    after each BUSY_ROUND_MS round of SQLite's wait until ``give_up`` (a statement refused for
    the lock changed nothing). Left to itself, SQLite's wait backs off to a try every 100 ms,
    which seldom meets the moments a worker committing group after group leaves the lock free:
    the other worker's writes starved for the whole budget (503s at saturation)."""

    give_up = 0.0  # no second try

    def execute(self, sql, parameters=(), /):
        while True:
            in_transaction, tried = self.connection.in_transaction, time.monotonic()
            try:
                return super().execute(sql, parameters)
            except sqlite3.OperationalError as exc:
                # Only SQLITE_BUSY itself passes: a stale snapshot or a lock held by this
                # connection stays as it is, and a transaction rolled back is not run again.
                if (getattr(exc, "sqlite_errorcode", None) != sqlite3.SQLITE_BUSY
                        or (in_transaction and not self.connection.in_transaction)
                        or time.monotonic() >= self.give_up):
                    raise
                if time.monotonic() - tried < BUSY_ROUND_MS / 2000:  # refused without a wait
                    _native_sleep(BUSY_ROUND_MS / 5000)

    def executemany(self, sql, seq_of_parameters, /):
        # Never tried again (rows before a refusal may be written): SQLite waits out the budget.
        with self.waiting(self._budget_ms()):
            return super().executemany(sql, seq_of_parameters)

    def executescript(self, sql_script, /):
        with self.waiting(self._budget_ms()):
            return super().executescript(sql_script)

    def _budget_ms(self):
        return max(0, int((self.give_up - time.monotonic()) * 1000))

    @contextlib.contextmanager
    def waiting(self, ms):
        """SQLite's own wait for a lock set to ``ms`` in the block, then back to a round."""
        self.connection.execute(f"PRAGMA busy_timeout = {ms:.0f}")
        try:
            yield
        finally:
            self.connection.execute(f"PRAGMA busy_timeout = {BUSY_ROUND_MS}")


def _waiting_cursor(conn, give_up):
    """A cursor of ``conn`` that waits for the file lock until ``give_up``, no longer."""
    if give_up <= time.monotonic():
        raise LockWaitExceeded("gave up waiting for the database lock")
    cur = conn.cursor(_WaitingCursor)  # the connection waits in rounds since _connect
    cur.give_up = give_up
    return cur


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


def _native_thread_id():
    global _native_get_ident
    if _native_get_ident is None:
        from gevent.monkey import get_original

        _native_get_ident = get_original("_thread", "get_ident")
    return _native_get_ident()


_native_get_ident = None


def _native_sleep(seconds):
    """Sleep this thread: in a store thread, gevent's patched sleep would start a hub there."""
    if gevent_active():
        from gevent.monkey import get_original

        return get_original("time", "sleep")(seconds)
    return time.sleep(seconds)
