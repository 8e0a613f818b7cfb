"""PostgreSQL backend: many processes on many machines share one database.

psycopg 3 with a psycopg_pool.ConnectionPool per process, autocommit connections (one
statement = one transaction; `_cursor(True)` opens an explicit one), `?` placeholders of the
portable SQL rewritten to psycopg's `%s`, and `FOR UPDATE SKIP LOCKED` so that job workers
never wait on each other's claimed rows.

gevent: psycopg never blocks in C while waiting for the server; it hands the socket to a
wait function. It picks that function when `psycopg.waiting` is first imported: the C one
(`wait_c`, which would block the whole gevent hub) unless gevent has already patched
`select`, in which case it uses `wait_poll` on gevent's cooperative `select.poll`. gunicorn's
gevent worker patches before it imports the app, so the right one is chosen; if psycopg was
imported first (e.g. `--preload`), `_cooperate_with_gevent` switches it at store creation.
Host names are resolved by psycopg in Python (``socket.getaddrinfo``, which gevent patches) and
passed to libpq as ``hostaddr``, so libpq never resolves a name in C.

A statement waits at most LOCK_TIMEOUT_SECONDS for a lock (another session's ``LOCK TABLE``, a
long migration) and then fails with StoreUnavailable (503), like a connection the pool cannot
give within ``timeout``.
"""

import contextlib
import logging
import os
import selectors
import sys
import threading
import time
from functools import lru_cache

import psycopg
import psycopg_pool
from psycopg import conninfo, waiting

from app.runtime import current_pid
from app.store.sql import SQLStore

log = logging.getLogger(__name__)
# psycopg_pool logs every checkout at INFO; keep its warnings (failed connections) only.
logging.getLogger("psycopg.pool").setLevel(logging.WARNING)

MIGRATION_LOCK_ID = 0x41675068  # any constant shared by every process of this app
LOCK_TIMEOUT_SECONDS = 1.5
CONNECTION_DEFAULTS = {
    # Fail a connection attempt (server down, network gone) in seconds, not libpq's default
    # of waiting for the TCP stack.
    "connect_timeout": "3",
    # Notice a dead server or a silent network partition on an idle or busy connection.
    "keepalives": "1",
    "keepalives_idle": "30",
    "keepalives_interval": "10",
    "keepalives_count": "3",
    "application_name": "agentphone-backend",
    "options": f"-c lock_timeout={int(LOCK_TIMEOUT_SECONDS * 1000)}",
}


def translate_placeholders(sql):
    """Rewrite the portable ``?`` placeholders as psycopg's ``%s`` and escape ``%`` as ``%%``.

    ``?`` inside quoted strings ('...', E'...' with backslash escapes), quoted identifiers
    ("...") and comments (-- and /* */) is left alone; ``%`` is doubled everywhere, since
    psycopg reads ``%`` in the whole statement. Dollar-quoted strings ($$...$$) are not
    recognised: do not put ``?`` in one.
    """
    return _translate(sql)


@lru_cache(maxsize=512)
def _translate(sql):
    out = []
    i, n = 0, len(sql)
    while i < n:
        c = sql[i]
        if c == "?":
            out.append("%s")
            i += 1
        elif c == "%":
            out.append("%%")
            i += 1
        elif c in "'\"":
            backslashes = c == "'" and i > 0 and sql[i - 1] in "eE" and (
                i == 1 or not (sql[i - 2].isalnum() or sql[i - 2] == "_"))
            end = _quoted_end(sql, i, backslashes)
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("--", i):
            end = sql.find("\n", i)
            end = n if end < 0 else end
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        elif sql.startswith("/*", i):
            end = sql.find("*/", i + 2)
            end = n if end < 0 else end + 2
            out.append(sql[i:end].replace("%", "%%"))
            i = end
        else:
            out.append(c)
            i += 1
    return "".join(out)


def _quoted_end(sql, start, backslashes):
    """Index just past the quoted token opening at ``start`` (doubled quote = literal)."""
    quote, i, n = sql[start], start + 1, len(sql)
    while i < n:
        c = sql[i]
        if backslashes and c == "\\":
            i += 2
        elif c == quote:
            if i + 1 < n and sql[i + 1] == quote:
                i += 2
            else:
                return i + 1
        else:
            i += 1
    return n


def _gevent_patched_select():
    monkey = sys.modules.get("gevent.monkey")
    return bool(monkey and monkey.is_module_patched("select"))


def _cooperate_with_gevent():
    """Make psycopg wait through gevent when gevent patched `select` after psycopg chose its
    wait functions at import; returns True when something had to be switched."""
    if not _gevent_patched_select():
        return False
    changed = False
    if waiting.wait is getattr(waiting, "wait_c", None):
        waiting.wait = waiting.wait_poll  # looks up select.poll at call time: gevent's
        changed = True
    if waiting.DefaultSelector is not selectors.DefaultSelector:
        waiting.DefaultSelector = selectors.DefaultSelector  # used while connecting
        changed = True
    if changed:
        log.warning("psycopg was imported before gevent patched the standard library: "
                    "switched psycopg to gevent-cooperative waiting")
    return changed


class _Cursor:
    """The DB-API subset SQLStore uses, with ``?`` placeholders."""

    __slots__ = ("_cur",)

    def __init__(self, cur):
        self._cur = cur

    def execute(self, sql, params=()):
        self._cur.execute(translate_placeholders(sql), tuple(params))
        return self

    def executemany(self, sql, seq_of_params):
        self._cur.executemany(translate_placeholders(sql), [tuple(p) for p in seq_of_params])
        return self

    def fetchone(self):
        return self._cur.fetchone()

    def fetchall(self):
        return self._cur.fetchall()

    @property
    def rowcount(self):
        return self._cur.rowcount

    @property
    def description(self):
        return self._cur.description


class PostgresStore(SQLStore):
    """The store protocols over a PostgreSQL database (``SQLStore``'s SQL)."""

    backend = "postgresql"
    types = {"real": "DOUBLE PRECISION", "serial": "BIGSERIAL PRIMARY KEY"}
    lock_clause = " FOR UPDATE SKIP LOCKED"
    # PoolTimeout and PoolClosed are psycopg.OperationalError subclasses.
    errors = (psycopg.Error,)
    # DataError: NUL in text, a number out of range; checked before `errors`, its base.
    value_errors = (psycopg.DataError, *SQLStore.value_errors)

    def __init__(self, url, clock=time.time, min_size=1, max_size=10, timeout=3.0,
                 reconnect_timeout=1.0):
        """``timeout``: longest wait for a connection (pool busy or server down) before the
        operation fails with StoreUnavailable. ``reconnect_timeout``: how long the pool keeps
        retrying one lost connection in the background (with backoff from 1 s) before giving
        it up. Kept short: a request that finds the pool short of connections starts a fresh
        attempt at once, so a server that comes back is used by the next request instead of
        after the pool's backoff."""
        super().__init__(clock)
        params = conninfo.conninfo_to_dict(url)  # accepts postgres:// and postgresql://
        for key, value in CONNECTION_DEFAULTS.items():
            params.setdefault(key, value)
        self.conninfo = conninfo.make_conninfo(**params)
        self.min_size, self.max_size = min_size, max_size
        self.timeout, self.reconnect_timeout = timeout, reconnect_timeout
        self._pool = None
        self._pid = None
        self._lock = threading.Lock()
        self._checking = False
        _cooperate_with_gevent()

    def _get_pool(self):
        pool = self._pool
        if pool is not None and self._pid == current_pid():
            return pool
        with self._lock:
            if self._pool is None or self._pid != os.getpid():
                # A pool must not cross a fork: the child opens its own. psycopg does not
                # close the parent's connections from a child process.
                self._pool = psycopg_pool.ConnectionPool(
                    self.conninfo, min_size=self.min_size, max_size=self.max_size,
                    kwargs={"autocommit": True}, timeout=self.timeout,
                    reconnect_timeout=self.reconnect_timeout, name=f"store-{os.getpid()}",
                    open=False,
                )
                self._pool.open(wait=False)
                self._pid = os.getpid()
            return self._pool

    @contextlib.contextmanager
    def _cursor(self, transaction):
        pool = self._get_pool()
        with pool.connection() as conn:
            try:
                if transaction:
                    with conn.transaction(), conn.cursor() as cur:
                        yield _Cursor(cur)
                else:
                    with conn.cursor() as cur:
                        yield _Cursor(cur)
            except psycopg.OperationalError:
                # The pool discards this connection on return. Its idle siblings are most
                # likely dead too (server restarted, failover): check them now rather than
                # let each fail one more request after the server is back.
                if conn.broken:
                    self._check_idle_connections(pool)
                raise

    def _check_idle_connections(self, pool):
        with self._lock:
            if self._checking:
                return
            self._checking = True

        def check():
            try:
                pool.check()
            except Exception as exc:
                log.warning("checking pooled connections failed: %s", exc)
            finally:
                self._checking = False

        # A greenlet under gevent (threading is patched), a thread otherwise.
        threading.Thread(target=check, name="store-pool-check", daemon=True).start()

    @property
    def lock_wait(self):
        """A wait for a pooled connection, then for a lock (``EventStore.lock_wait``)."""
        return self.timeout + LOCK_TIMEOUT_SECONDS

    def _lock_migrations(self, cur):
        # Another process's migration may take longer than a request's lock wait.
        cur.execute("SET LOCAL lock_timeout = 0")
        # Held until the migration transaction ends: concurrent starts run it one at a time.
        cur.execute("SELECT pg_advisory_xact_lock(?)", (MIGRATION_LOCK_ID,))

    def close(self):
        """Close this process's pool; the store must not be used afterwards."""
        self.closed = True
        with self._lock:
            pool, self._pool = self._pool, None
        if pool is not None and self._pid == os.getpid():
            pool.close()
