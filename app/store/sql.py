"""Store operations written once in portable SQL; backends supply connections and dialect.

``SQLStore`` implements every protocol of ``app.store.base`` (``Store``): the core
``EventStore`` here, the repositories in ``records``, ``console`` and ``secrets``. Each
operation is one autocommit statement or one short transaction with no other I/O
inside, because under gevent a SQLite call never yields to other greenlets.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable, Iterable, Sequence
from typing import Any, TypeVar

from app.metrics import STORE_SECONDS
from app.store.base import (
    DEFAULT_RETENTION,
    Job,
    Replayed,
    Retention,
    SignedBytes,
    StoreUnavailable,
    UnstorableValue,
)
from app.store.console import DeliveryLogSQL
from app.store.records import (
    OUTBOX,
    CallRecordsSQL,
    OutboxSQL,
    ReactionsSQL,
    SessionsSQL,
    select_one,
)
from app.store.schema import MIGRATIONS, statements
from app.store.secrets import SecretsMixin

log = logging.getLogger(__name__)
T = TypeVar("T")

CORE_SCHEMA = "schema_version"  # the core's version table
MIGRATE_WAIT_SECONDS = 5.0  # longest wait for another caller's deferred migration
RENEW_BATCH = 500  # delivery ids per heartbeat statement (SQLite's variable limit is 999+)

JOB_COLUMNS = (
    "id, kind, payload, attempts, status, delivery_id, run_at, last_error, created_at, updated_at"
)


class SQLStore(SessionsSQL, OutboxSQL, CallRecordsSQL, ReactionsSQL, DeliveryLogSQL,
               SecretsMixin):
    """Every store protocol over portable SQL (``app.store.base.Store``).

    Subclasses define `backend`, `types`, `lock_clause`, `_connection`, `_cursor(transaction)`,
    `errors` (the driver's base exception classes), `value_errors` (raised for a value the
    database can never take), `lock_wait` (seconds an operation may wait on a lock held
    elsewhere before StoreUnavailable) and `close`.
    """

    backend = "sql"
    types: dict[str, str] = {}
    lock_clause = ""
    errors: tuple[type[Exception], ...] = ()
    lock_wait = 0.0
    closed = False  # set by close(): background tasks still holding the store stop using it
    value_errors: tuple[type[Exception], ...] = (OverflowError, UnicodeEncodeError)

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        # version table -> its migrations, in order
        self._schemas: dict[str, Sequence[str]] = {CORE_SCHEMA: MIGRATIONS}
        self._migrate_pending = False
        self._migrate_lock = threading.Lock()
        self._migrate_attempt = threading.Event()

    # -- plumbing ---------------------------------------------------------------------------

    def run(self, fn: Callable[[Any], T], transaction: bool = True, *,
            bulk: bool = False) -> T:
        """Run ``fn(cursor)``, in one transaction unless told otherwise; driver errors become
        StoreUnavailable (503) so that the platform retries instead of losing the event.
        ``bulk``: the operation may take a while (many rows); SQLite under gevent then never
        runs it on the event loop's own connection.

        The cursor takes ``?`` placeholders on every backend. Packages with tables of their own
        (``app.demo``) use it on the tables they add with ``add_schema``.
        """
        if self._migrate_pending:
            self._migrate_now()
        return self._execute(fn, transaction, bulk)

    def _execute(self, fn, transaction, bulk=False):
        started = time.perf_counter()
        try:
            return self._attempt(fn, transaction, bulk)
        finally:
            STORE_SECONDS.observe(time.perf_counter() - started)

    def _attempt(self, fn, transaction, bulk=False, **cursor_options):
        """One try at the operation; the backend may run it elsewhere (SQLite: in a thread,
        always for ``bulk`` work)."""
        try:
            with self._cursor(transaction, **cursor_options) as cur:
                return fn(cur)
        except self.value_errors as exc:
            log.warning("%s store refused a value: %s", self.backend, exc)
            raise UnstorableValue() from exc
        except self.errors as exc:
            raise StoreUnavailable(f"{self.backend} store error: {exc}") from exc

    def _one(self, sql: str, params: Sequence[Any] = ()) -> Any:
        """One autocommit statement; its first row (the statement must return rows)."""
        return self.run(lambda cur: _fetchone(cur, sql, params), transaction=False)

    def _exec(self, sql: str, params: Sequence[Any] = ()) -> int:
        """One autocommit statement; the number of rows it changed."""
        return self.run(lambda cur: _rowcount(cur, sql, params), transaction=False)

    def migrate(self) -> int:
        """Create or upgrade the schema (the core's and every added one); safe to run from
        many processes at once. Returns the core schema's version."""

        def upgrade(cur):
            self._lock_migrations(cur)
            for table, migrations in self._schemas.items():
                self._upgrade(cur, table, migrations)
            return len(MIGRATIONS)

        version = self._execute(upgrade, transaction=True)
        self._migrate_pending = False
        return version

    def _upgrade(self, cur, table, migrations):
        cur.execute(
            f"CREATE TABLE IF NOT EXISTS {table} "
            f"(version INTEGER PRIMARY KEY, applied_at {self.types['real']} NOT NULL)"
        )
        cur.execute(f"SELECT COALESCE(MAX(version), 0) FROM {table}")
        current = cur.fetchone()[0]
        for version, migration in enumerate(migrations, start=1):
            if version <= current:
                continue
            for statement in statements(migration, self.types):
                cur.execute(statement)
            cur.execute(f"INSERT INTO {table} (version, applied_at) VALUES (?, ?)",
                        (version, self.clock()))

    def add_schema(self, version_table: str, migrations: Sequence[str]) -> None:
        """Keep a package's own tables in this database: its ``migrations`` (each a string of
        statements, as in ``app.store.schema``), tracked in ``version_table``, are applied now
        and by every later ``migrate``. A database that is down defers them to first use."""
        self._schemas[version_table] = migrations
        if self._migrate_pending:
            return
        try:
            self.migrate()
        except StoreUnavailable as exc:
            log.error("database unavailable, will create %s's tables on first use: %s",
                      version_table, exc)
            self.migrate_on_first_use()

    def migrate_on_first_use(self) -> None:
        """The database could not be migrated at start-up (e.g. it is restarting): every
        operation tries again first and fails with StoreUnavailable until it succeeds."""
        self._migrate_pending = True

    def _migrate_now(self):
        # One caller attempts; the others wait for its outcome instead of queueing attempts of
        # their own, each of which could wait out a connection timeout in turn.
        if self._migrate_lock.acquire(blocking=False):
            attempt = self._migrate_attempt = threading.Event()
            try:
                if self._migrate_pending:
                    self.migrate()
                    log.info("%s store: schema migrated on first use", self.backend)
            finally:
                self._migrate_lock.release()
                attempt.set()
            return
        # Wait for the attempt in progress only (the lock could be taken again before a
        # waiter gets it).
        self._migrate_attempt.wait(MIGRATE_WAIT_SECONDS)
        if self._migrate_pending:
            raise StoreUnavailable(f"{self.backend} store: schema not migrated yet")

    def _lock_migrations(self, cur):
        """Serialize concurrent migrations; the backend's transaction may already do it."""

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a query."""
        self._one("SELECT 1")

    def schema_version(self, version_table: str | None = None) -> int | None:
        """The applied version of the core schema, or of the one tracked in ``version_table``."""
        table = version_table or CORE_SCHEMA
        return self._one(f"SELECT MAX(version) FROM {table}")[0]

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless the store takes a write: a transaction that takes the
        write lock and changes nothing (a read-only file or standby fails it)."""
        self.run(lambda cur: cur.execute(
            f"UPDATE {CORE_SCHEMA} SET applied_at = applied_at WHERE version < 0"))

    # -- deliveries -------------------------------------------------------------------------

    def _claim(self, cur, delivery_id, event, signed=None):
        """Record a delivery id; True if new. With ``signed`` (SignedBytes), raise Replayed
        when those bytes came before under another id."""
        if signed is not None:
            self._refuse_replay(cur, delivery_id, signed)
        cur.execute(
            "INSERT INTO deliveries (id, event, received_at) VALUES (?, ?, ?) "
            "ON CONFLICT (id) DO NOTHING",
            (delivery_id, event, self.clock()),
        )
        return cur.rowcount == 1

    def _refuse_replay(self, cur, delivery_id, signed):
        # In the claim's transaction: a replay leaves nothing behind, and costs no commit.
        cur.execute(
            "INSERT INTO signed_requests (digest, delivery_id, expires_at) VALUES (?, ?, ?) "
            "ON CONFLICT (digest) DO NOTHING",
            (signed.digest, delivery_id, signed.expires_at),
        )
        if cur.rowcount == 1:
            return
        cur.execute("SELECT delivery_id FROM signed_requests WHERE digest = ?",
                    (signed.digest,))
        row = cur.fetchone()
        # The same id again is a plain duplicate (a resend of the very same request).
        if row is not None and row[0] != delivery_id:
            raise Replayed(row[0])

    def claim_with_job(self, delivery_id: str, event: str, kind: str, payload: str,
                       signed: SignedBytes | None = None) -> bool:
        """Claim a delivery and enqueue its job atomically; True if it was new. ``signed`` as
        for ``_claim``."""

        def claim(cur):
            if not self._claim(cur, delivery_id, event, signed):
                return False
            now = self.clock()
            cur.execute(
                "INSERT INTO jobs (delivery_id, kind, payload, run_at, created_at, updated_at) "
                "VALUES (?, ?, ?, ?, ?, ?)",
                (delivery_id, kind, payload, now, now, now),
            )
            return True

        return self.run(claim)

    # -- voice claims and replies -----------------------------------------------------------

    def claim_voice(self, delivery_id: str, event: str, owner: str,
                    signed: SignedBytes | None = None) -> bool:
        """Claim a voice delivery for ``owner`` (attempt 0, heartbeat now); True if it was new.
        ``signed`` as for ``_claim``."""

        def claim(cur):
            if signed is not None:
                self._refuse_replay(cur, delivery_id, signed)
            now = self.clock()
            cur.execute(
                "INSERT INTO deliveries (id, event, received_at, owner, attempt, heartbeat_at) "
                "VALUES (?, ?, ?, ?, 0, ?) ON CONFLICT (id) DO NOTHING",
                (delivery_id, event, now, owner, now),
            )
            return cur.rowcount == 1

        # One statement needs no transaction; with the replay check it is two.
        return self.run(claim, transaction=signed is not None)

    def voice_claim(self, delivery_id: str) -> tuple[dict[str, Any] | None, float] | None:
        """(stored final line or None, time of the holder's last heartbeat) of a voice
        delivery; None when it was never claimed."""
        row = self._one(
            "SELECT r.reply, COALESCE(d.heartbeat_at, d.received_at) FROM deliveries d "
            "LEFT JOIN voice_replies r ON r.delivery_id = d.id WHERE d.id = ?",
            (delivery_id,),
        )
        if row is None:
            return None
        return (json.loads(row[0]) if row[0] is not None else None), row[1]

    def take_over_voice(self, delivery_id: str, owner: str, stale: float) -> int | None:
        """Compare-and-set: give ``owner`` a voice claim whose heartbeat is older than ``stale``
        seconds and that has no final line. The new attempt number, or None (the claim is
        live, answered, or another caller took it first)."""
        now = self.clock()
        row = self._one(
            "UPDATE deliveries SET owner = ?, attempt = attempt + 1, heartbeat_at = ? "
            "WHERE id = ? AND COALESCE(heartbeat_at, received_at) < ? "
            "AND NOT EXISTS (SELECT 1 FROM voice_replies WHERE delivery_id = ?) "
            "RETURNING attempt",
            (owner, now, delivery_id, now - stale, delivery_id),
        )
        return row[0] if row else None

    def renew_voice_claims(self, owner: str, delivery_ids: Iterable[str]) -> None:
        """Heartbeat: mark the claims ``owner`` still holds among ``delivery_ids`` alive now."""
        now = self.clock()
        ids = list(delivery_ids)

        def renew(cur):
            for start in range(0, len(ids), RENEW_BATCH):
                chunk = ids[start:start + RENEW_BATCH]
                cur.execute(
                    "UPDATE deliveries SET heartbeat_at = ? WHERE owner = ? "
                    f"AND id IN ({', '.join('?' * len(chunk))})",
                    (now, owner, *chunk),
                )

        self.run(renew, bulk=True)

    def save_voice_reply(self, delivery_id: str, reply: dict[str, Any], owner: str,
                         attempt: int) -> bool:
        """Store the final line of attempt ``attempt`` by ``owner``, unless the claim has
        been taken over since (or a line is stored already); True if it was stored."""
        return self._exec(
            "INSERT INTO voice_replies (delivery_id, reply, created_at) SELECT ?, ?, ? "
            "WHERE EXISTS (SELECT 1 FROM deliveries WHERE id = ? AND owner = ? AND attempt = ?) "
            "ON CONFLICT (delivery_id) DO NOTHING",
            (delivery_id, json.dumps(reply), self.clock(), delivery_id, owner, attempt),
        ) == 1

    def voice_reply(self, delivery_id: str) -> dict[str, Any] | None:
        """The stored final line of a voice delivery (None when there is none yet)."""
        row = self._one("SELECT reply FROM voice_replies WHERE delivery_id = ?", (delivery_id,))
        return json.loads(row[0]) if row else None

    # -- jobs -------------------------------------------------------------------------------

    def enqueue(self, kind: str, payload: str, delivery_id: str | None = None) -> int:
        """Queue a job, due now; its id."""
        now = self.clock()
        row = self._one(
            "INSERT INTO jobs (delivery_id, kind, payload, run_at, created_at, updated_at) "
            "VALUES (?, ?, ?, ?, ?, ?) RETURNING id",
            (delivery_id, kind, payload, now, now, now),
        )
        return row[0]

    def claim_job(self, worker: str, lease: float) -> Job | None:
        """Take the next due job (or one whose lease ran out) and lease it to ``worker``."""
        now = self.clock()
        row = self._one(
            "UPDATE jobs SET status = 'running', attempts = attempts + 1, lease_until = ?, "
            "worker = ?, updated_at = ? WHERE id = (SELECT id FROM jobs "
            "WHERE (status = 'pending' AND run_at <= ?) "
            "OR (status = 'running' AND lease_until < ?) "
            f"ORDER BY run_at, id LIMIT 1{self.lock_clause}) RETURNING {JOB_COLUMNS}",
            (now + lease, worker, now, now, now),
        )
        return Job(*row) if row else None

    def extend_lease(self, job_id: int, worker: str, lease: float) -> bool:
        """Keep a running job leased to ``worker`` for ``lease`` more seconds; False when the
        worker no longer holds it (its lease ran out and another worker took the job)."""
        now = self.clock()
        changed = self._exec(
            "UPDATE jobs SET lease_until = ?, updated_at = ? "
            "WHERE id = ? AND worker = ? AND status = 'running'",
            (now + lease, now, job_id, worker),
        )
        return changed == 1

    def release_job(self, job_id: int, worker: str) -> bool:
        """Give a running job back to the queue without counting the interrupted attempt
        (a worker shutting down); False when ``worker`` no longer holds it."""
        now = self.clock()
        changed = self._exec(
            "UPDATE jobs SET status = 'pending', attempts = attempts - 1, run_at = ?, "
            "lease_until = NULL, worker = NULL, updated_at = ? "
            "WHERE id = ? AND worker = ? AND status = 'running' AND attempts > 0",
            (now, now, job_id, worker),
        )
        return changed == 1

    def finish_job(self, job_id: int, owner: tuple[str, int] | None = None) -> None:
        """Mark a running job done (one handed back to the queue meanwhile stays queued)."""
        self._set_job(job_id, "done", None, None, owner)

    def fail_job(self, job_id: int, error: str, retry_at: float | None = None,
                 owner: tuple[str, int] | None = None) -> None:
        """Schedule another attempt at ``retry_at``, or dead-letter the job when it is None."""
        status = "pending" if retry_at is not None else "dead"
        self._set_job(job_id, status, str(error)[:2000], retry_at, owner)

    def _set_job(self, job_id, status, error, run_at, owner):
        # Only a running job has an outcome to record: one handed back to the queue by a
        # worker shutting down (its thread finishing late) stays queued.
        now = self.clock()
        sql = ("UPDATE jobs SET status = ?, last_error = COALESCE(?, last_error), "
               "run_at = COALESCE(?, run_at), lease_until = NULL, updated_at = ? "
               "WHERE id = ? AND status = 'running'")
        params: tuple[Any, ...] = (status, error, run_at, now, job_id)
        if owner is not None:
            sql += " AND worker = ? AND attempts = ?"
            params += owner
        self._exec(sql, params)

    def retry_job(self, job_id: int) -> bool:
        """Put a dead (or any) job back in the queue with a fresh set of attempts."""
        return self.run(lambda cur: _requeue(cur, job_id, self.clock()))

    def resend_reply(self, job_id: int) -> dict[str, Any] | None:
        """An operator's decision to send an unsure reply again: mark the job's outbox row
        ``resend`` and queue the job. Returns the outbox row, or None when job ``job_id`` has no
        unsure reply or is running (its send may be in flight right now)."""

        def resend(cur):
            row = select_one(cur, OUTBOX, "FROM outbox WHERE job_id = ? AND status IN "
                                          "('sending', 'unknown')", (job_id,))
            status = _fetchone(cur, "SELECT status FROM jobs WHERE id = ?", (job_id,))
            if row is None or status is None or status[0] == "running":
                return None
            cur.execute("UPDATE outbox SET status = 'resend', updated_at = ? "
                        "WHERE delivery_id = ?", (self.clock(), row["delivery_id"]))
            _requeue(cur, job_id, self.clock())
            return row

        return self.run(resend)

    def job(self, job_id: int) -> Job | None:
        """Job ``job_id`` (None when there is none)."""
        row = self._one(f"SELECT {JOB_COLUMNS} FROM jobs WHERE id = ?", (job_id,))
        return Job(*row) if row else None

    def jobs(self, status: str | None = None, limit: int = 50) -> list[Job]:
        """At most ``limit`` jobs, newest first (only those in ``status`` if given)."""
        where, params = ("WHERE status = ?", (status,)) if status else ("", ())
        return self.run(
            lambda cur: [
                Job(*r)
                for r in _fetchall(
                    cur,
                    f"SELECT {JOB_COLUMNS} FROM jobs {where} ORDER BY id DESC LIMIT ?",
                    (*params, limit),
                )
            ]
        )

    def open_job_counts(self) -> list[tuple[str, str, int]]:
        """``(kind, status, count)`` of every job not yet done, for the metrics."""
        return self.run(lambda cur: _fetchall(
            cur, "SELECT kind, status, COUNT(*) FROM jobs WHERE status <> 'done' "
            "GROUP BY kind, status"), transaction=False)

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        rows = self.run(
            lambda cur: _fetchall(cur, "SELECT status, COUNT(*) FROM jobs GROUP BY status")
        )
        return dict(rows)

    # -- retention --------------------------------------------------------------------------

    def prune(self, retention: Retention = DEFAULT_RETENTION) -> int:
        """Delete what has outlived its use: delivery ids with their voice replies and reply
        outbox rows and log, finished jobs, idle agent sessions, expired webhook secrets
        and signed bytes too old to pass verification.
        Call records, reactions and dead jobs are kept."""
        now = self.clock()
        deliveries = now - retention.deliveries
        expired = [
            ("DELETE FROM deliveries WHERE received_at < ?", deliveries),
            ("DELETE FROM voice_replies WHERE created_at < ?", deliveries),
            ("DELETE FROM outbox WHERE created_at < ?", deliveries),
            ("DELETE FROM jobs WHERE status = 'done' AND updated_at < ?",
             now - retention.finished_jobs),
            ("DELETE FROM agent_sessions WHERE updated_at < ?", now - retention.sessions),
            ("DELETE FROM webhook_secrets WHERE expires_at < ?", deliveries),
            ("DELETE FROM delivery_log WHERE received_at < ?", deliveries),
            # Bounded by count too: at thousands of deliveries a second a week is too many.
            ("DELETE FROM delivery_log WHERE received_at < (SELECT received_at FROM "
             f"delivery_log ORDER BY received_at DESC LIMIT 1 OFFSET {retention.log_rows})",
             None),
            ("DELETE FROM signed_requests WHERE expires_at < ?", now),
        ]

        def prune(cur):
            return sum(_rowcount(cur, sql, () if cutoff is None else (cutoff,))
                       for sql, cutoff in expired)

        return self.run(prune, bulk=True)


def _requeue(cur, job_id, now):
    cur.execute(
        "UPDATE jobs SET status = 'pending', attempts = 0, run_at = ?, lease_until = NULL, "
        "updated_at = ? WHERE id = ?",
        (now, now, job_id),
    )
    return cur.rowcount == 1


def _fetchone(cur, sql, params=()):
    cur.execute(sql, params)
    return cur.fetchone()


def _rowcount(cur, sql, params=()):
    cur.execute(sql, params)
    return cur.rowcount


def _fetchall(cur, sql, params=()):
    cur.execute(sql, params)
    return cur.fetchall()
