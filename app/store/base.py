"""The store interfaces: what the app asks of a database, as ``typing.Protocol`` classes.

``EventStore`` is the core every backend provides: delivery claims, voice claims and their
final lines, and durable jobs (the webhook views, ``app.voice.claims`` and the job runner use
nothing else). The agent's records are repositories of their own (``AgentSessions``,
``ReplyOutbox``, ``CallRecords``, ``Reactions``), like the console's delivery log
(``DeliveryLog``: its write and its bounded read queries are store methods, so that a page
costs one indexed query) and the CLI's signing secrets (``WebhookSecrets``). ``StoreLifecycle``
creates, checks and closes the database; ``SQLTables`` lets a package keep tables of its own
in it. ``Store`` is all of them: what ``app.store.get_store()`` returns. The SQLite and
PostgreSQL backends implement every one over the shared SQL of ``app.store.sql``.

Every operation either happens completely or raises: ``StoreUnavailable`` when the database
cannot be reached, written or locked in time (nothing was done: try again later), and
``UnstorableValue`` when it refuses a value, which it will refuse every time.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

from app.errors import BadRequest, Unretryable

if TYPE_CHECKING:
    from app.store.secrets import StoredSecret

DAY = 86400.0
# Every status a job goes through: queued, claimed by a worker, finished, or dead-lettered.
JOB_STATES = ("pending", "running", "done", "dead")


class StoreUnavailable(Exception):
    """The database cannot be reached, written or locked in time: the operation did not
    happen, and the same call may succeed later (``app.errors`` answers a request with 503).

    ``detail`` (the driver's own words) is what ``str()`` gives, for logs and the operator's
    CLI; a response body names no internals.
    """

    def __init__(self, detail: str | None = None) -> None:
        super().__init__(detail)
        self.detail = detail

    def __str__(self) -> str:
        return self.detail or "Event store unavailable, retry later"


class UnstorableValue(BadRequest, Unretryable):
    """The database refused a value (out of range, not encodable): the same value is refused
    every time, so a request gets 400 and a job is dead-lettered at once."""

    message = "A value in the delivery cannot be stored"


class Replayed(Exception):
    """These signed bytes were accepted before under another delivery id: a replay."""

    def __init__(self, first_delivery_id: str) -> None:
        super().__init__(first_delivery_id)
        self.first_delivery_id = first_delivery_id


@dataclass(frozen=True)
class SignedBytes:
    """What a delivery's signature covers (a digest of timestamp and body), remembered until
    ``expires_at``, after which a copy could no longer pass verification."""

    digest: str
    expires_at: float


@dataclass(frozen=True)
class Job:
    """One durable job as stored: ``attempts`` counts the runs started (a released one is
    given back), ``status`` is one of ``JOB_STATES``, times are the store clock's seconds."""

    id: int
    kind: str
    payload: str
    attempts: int
    status: str = "running"
    delivery_id: str | None = None
    run_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Retention:
    """How long ``prune`` keeps what is only needed for a while, in seconds."""

    deliveries: float = 7 * DAY
    finished_jobs: float = 7 * DAY
    sessions: float = 7 * DAY
    log_rows: int = 200_000  # the console's delivery log keeps at most this many


DEFAULT_RETENTION = Retention()


@runtime_checkable
class EventStore(Protocol):
    """Delivery claims, voice claims and replies, and durable jobs: the core of every backend.

    Safe to call from many threads (and greenlets) at once, and from many processes sharing
    one database: every claim below is won by exactly one caller. Every method may raise
    StoreUnavailable (nothing was done; try again later); one that writes a caller's value
    may raise UnstorableValue.
    """

    #: The time of every stored timestamp, in seconds (``time.time`` unless a test sets it).
    clock: Callable[[], float]

    @property
    def lock_wait(self) -> float:
        """Longest an operation may wait on a lock held elsewhere before StoreUnavailable,
        in seconds: a caller with a deadline stops retrying when less than this is left."""
        ...

    # -- deliveries -------------------------------------------------------------------------

    def claim_with_job(self, delivery_id: str, event: str, kind: str, payload: str,
                       signed: SignedBytes | None = None) -> bool:
        """Claim a delivery and queue its job (``kind``, ``payload``) in one step.

        Returns True when the delivery is new and its job queued; False for a delivery id
        claimed before, which queues nothing (idempotent: a retried delivery runs once).
        With ``signed``, raises Replayed when those signed bytes were accepted before under
        another delivery id, leaving nothing behind; under the same id they are a plain
        duplicate.
        """
        ...

    # -- voice claims and replies -----------------------------------------------------------

    def claim_voice(self, delivery_id: str, event: str, owner: str,
                    signed: SignedBytes | None = None) -> bool:
        """Claim a voice delivery for ``owner`` as attempt 0, its heartbeat now.

        Returns True when the delivery is new, False when it was claimed before (by anyone).
        ``signed`` as for ``claim_with_job``.
        """
        ...

    def voice_claim(self, delivery_id: str) -> tuple[dict[str, Any] | None, float] | None:
        """The state of a voice claim: ``(final line or None, time of its last heartbeat)``.

        The heartbeat of a claim never renewed is the time it was claimed. Returns None when
        ``delivery_id`` was never claimed (or has been pruned).
        """
        ...

    def take_over_voice(self, delivery_id: str, owner: str, stale: float) -> int | None:
        """Give ``owner`` a voice claim whose holder stopped beating, as a compare-and-set.

        The claim moves only if its heartbeat is older than ``stale`` seconds and no final
        line is stored; its heartbeat becomes now. Returns the new attempt number (one more
        than the last), or None when the claim is live, answered, unknown, or another caller
        took it over first: of many concurrent callers exactly one wins.
        """
        ...

    def renew_voice_claims(self, owner: str, delivery_ids: Iterable[str]) -> None:
        """Heartbeat: mark alive now the claims among ``delivery_ids`` that ``owner`` holds.

        Ids held by someone else (taken over) or unknown are left alone.
        """
        ...

    def save_voice_reply(self, delivery_id: str, reply: dict[str, Any], owner: str,
                         attempt: int) -> bool:
        """Store the final line of attempt ``attempt`` by ``owner``.

        Returns True if it was stored; False, storing nothing, when the claim has been taken
        over since (another owner or attempt) or a final line is stored already: the first
        line stored is the one every retry repeats.
        """
        ...

    def voice_reply(self, delivery_id: str) -> dict[str, Any] | None:
        """The stored final line of a voice delivery, or None when there is none (yet)."""
        ...

    # -- jobs -------------------------------------------------------------------------------

    def enqueue(self, kind: str, payload: str, delivery_id: str | None = None) -> int:
        """Queue a job, due now, and return its id (ids grow with each job queued).

        ``delivery_id``, when given, must be unique among the stored jobs.
        """
        ...

    def claim_job(self, worker: str, lease: float) -> Job | None:
        """Lease the next job to ``worker`` for ``lease`` seconds and count an attempt.

        Takes a pending job that is due (earliest ``run_at``, then lowest id) or a running
        one whose lease ran out (its worker died). Returns it as now stored (``running``),
        or None when nothing is due. Concurrent workers never get the same job.
        """
        ...

    def extend_lease(self, job_id: int, worker: str, lease: float) -> bool:
        """Keep a running job leased to ``worker`` for ``lease`` more seconds from now.

        Returns False when ``worker`` no longer holds it (its lease ran out and another
        worker took the job): that worker must not record an outcome.
        """
        ...

    def release_job(self, job_id: int, worker: str) -> bool:
        """Give a running job back to the queue, due now, without counting the attempt.

        For a worker shutting down. Returns False when ``worker`` no longer holds it.
        """
        ...

    def finish_job(self, job_id: int, owner: tuple[str, int] | None = None) -> None:
        """Mark a running job done; a job that is not running is left as it is.

        With ``owner`` (worker, attempts), only while that worker still runs that attempt:
        one whose lease ran out and was taken by another claim is left to it.
        """
        ...

    def fail_job(self, job_id: int, error: str, retry_at: float | None = None,
                 owner: tuple[str, int] | None = None) -> None:
        """Record a running job's failed attempt (``error``, its first 2000 characters).

        The job becomes due again at ``retry_at``, or is dead-lettered when that is None.
        A job that is not running (released meanwhile) is left as it is, and so is one no
        longer run by ``owner`` when it is given (see ``finish_job``).
        """
        ...

    def retry_job(self, job_id: int) -> bool:
        """Queue a job again, due now, with a fresh count of attempts (an operator's retry).

        Its last error is kept. Returns False when there is no job ``job_id``.
        """
        ...

    def job(self, job_id: int) -> Job | None:
        """Job ``job_id``, or None when there is none (never queued, or pruned)."""
        ...

    def jobs(self, status: str | None = None, limit: int = 50) -> list[Job]:
        """At most ``limit`` jobs, newest (highest id) first; only those in ``status``."""
        ...

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status (statuses without a job are left out)."""
        ...

    def open_job_counts(self) -> list[tuple[str, str, int]]:
        """``(kind, status, count)`` of every job not done, for the metrics."""
        ...

    # -- retention --------------------------------------------------------------------------

    def prune(self, retention: Retention = DEFAULT_RETENTION) -> int:
        """Delete what has outlived ``retention``; returns how many items were deleted.

        Delivery ids (with their final lines and anything else kept per delivery) older than
        ``retention.deliveries``, done jobs not updated for ``retention.finished_jobs`` and
        expired signed bytes go; dead and pending jobs stay. A pruned delivery id can be
        claimed again. Idempotent: a second call deletes nothing.
        """
        ...


@runtime_checkable
class StoreLifecycle(Protocol):
    """Creating, checking and closing the database behind a store."""

    #: The backend's name (``sqlite``, ``postgresql``), for logs and ``/healthz``.
    backend: str
    #: True once ``close`` ran: background tasks still holding the store stop using it.
    closed: bool

    def migrate(self) -> int:
        """Create or upgrade the schema (the core's and every added one); returns the core
        schema's version. Safe to run from many processes at once; raises StoreUnavailable
        when the database cannot be reached."""
        ...

    def migrate_on_first_use(self) -> None:
        """Defer ``migrate`` (the database was down at start-up): every operation tries it
        first and raises StoreUnavailable until it has succeeded."""
        ...

    def schema_version(self, version_table: str | None = None) -> int | None:
        """The applied version of the core schema, or of the one tracked in
        ``version_table``."""
        ...

    def ping(self) -> None:
        """Raise StoreUnavailable unless the database answers a query."""
        ...

    def check_writable(self) -> None:
        """Raise StoreUnavailable unless the database takes a write (a read-only file or a
        standby does not); writes nothing."""
        ...

    def close(self) -> None:
        """Let go of every connection; the store must not be used afterwards."""
        ...


@runtime_checkable
class AgentSessions(Protocol):
    """An agent's saved context per call or conversation, kept while it is in use."""

    def session_state(self, session_id: str) -> dict[str, Any]:
        """The context saved for ``session_id``; ``{}`` when there is none (or it was
        pruned after ``Retention.sessions`` idle)."""
        ...

    def save_session_state(self, session_id: str, state: dict[str, Any]) -> None:
        """Replace the context of ``session_id`` with ``state`` (a JSON-able dict: values
        JSON cannot hold are saved as their ``str()``)."""
        ...


@runtime_checkable
class ReplyOutbox(Protocol):
    """Text replies sent through the platform's API: at most once per delivery.

    A row's ``status`` is ``sending`` (reserved: the send may be under way), ``sent``,
    ``failed`` (rejected: nothing went out, safe to send again), ``unknown`` (the send failed
    mid-request: it may have gone out) or ``resend`` (an operator asked to send it again).
    Rows are dicts of the outbox columns (``delivery_id``, ``status``, ``to_number``,
    ``body``, ``message_id``, ``error``, ``job_id``, ``created_at``, ``updated_at``).
    """

    def outbox_begin(self, delivery_id: str, to_number: str | None, body: str,
                     job_id: int | None = None) -> tuple[str, bool]:
        """Reserve the send of ``body`` for ``delivery_id`` (by job ``job_id``).

        Returns ``(status, send_now)``: ``send_now`` is True when the caller must send now (the
        row is ``sending``); otherwise ``status`` says why not (``sent``, ``sending``, ``unknown``).
        Of concurrent callers at most one gets ``send_now``.
        """
        ...

    def outbox_finish(self, delivery_id: str, status: str, message_id: str | None = None,
                      error: str | None = None) -> None:
        """Record the outcome of a send: ``sent``, ``failed`` or ``unknown``."""
        ...

    def outbox_entry(self, delivery_id: str) -> dict[str, Any] | None:
        """The outbox row of ``delivery_id``, or None when nothing was reserved for it."""
        ...

    def outbox_for(self, delivery_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """``delivery_id``, ``status``, ``body``, ``error`` and ``updated_at`` of the rows of
        these deliveries, by delivery id (deliveries without one are left out)."""
        ...

    def unsure_replies(self, limit: int = 50) -> list[dict[str, Any]]:
        """Rows whose text may or may not have gone out (``sending`` left by a process that
        died, ``unknown``), most recently updated first, at most ``limit``."""
        ...

    def unsure_reply_count(self) -> int:
        """How many replies are in doubt (``sending`` or ``unknown``)."""
        ...

    def resend_reply(self, job_id: int) -> dict[str, Any] | None:
        """An operator's decision to send an unsure reply again: mark the row of job
        ``job_id`` ``resend`` and queue the job again. Returns the row as it was, or None
        (changing nothing) when the job has no unsure reply or is running (its send may be
        in flight right now)."""
        ...


@runtime_checkable
class CallRecords(Protocol):
    """Finished calls, kept for good (``prune`` leaves them). A record is a dict with
    ``call_id`` and the call's fields; ``transcript`` is a list, ``successful`` a bool or
    None."""

    def save_call_record(self, record: dict[str, Any], delivery_id: str | None = None) -> bool:
        """Store a finished call once, keyed by ``record["call_id"]``.

        Returns True if it was new; False (changing nothing) for a call stored before.
        """
        ...

    def call_records(self, limit: int = 20, status: str | None = None) -> list[dict[str, Any]]:
        """At most ``limit`` stored calls, newest first (only those with ``status``)."""
        ...

    def call_record(self, call_id: str) -> dict[str, Any] | None:
        """The stored call ``call_id``, or None."""
        ...


@runtime_checkable
class Reactions(Protocol):
    """Reactions to messages, kept for good (``prune`` leaves them)."""

    def save_reaction(self, delivery_id: str, data: dict[str, Any]) -> bool:
        """Store one reaction event (its ``conversation_id``, ``message_id``,
        ``reaction_type``, ``from_number`` and ``direction``) once per delivery id.

        Returns True if it was new; False (changing nothing) for a delivery stored before.
        """
        ...

    def reactions(self, limit: int = 50) -> list[dict[str, Any]]:
        """At most ``limit`` stored reactions, newest first."""
        ...


@runtime_checkable
class DeliveryLog(Protocol):
    """The console's log of recent deliveries and the bounded queries of its pages.

    Rows are dicts of the log columns: ``id`` (one per turn), ``delivery_id``, ``event``,
    ``channel``, ``agent_id``, ``call_id``, ``conversation_id``, ``outcome``, ``status``,
    ``said``, ``answered``, ``received_at``, ``first_line_ms`` and ``final_ms``. The log is
    for people to read: it is pruned by age and by count (``Retention.log_rows``).
    """

    def write_delivery_log(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert rows, each its values in ``LOG_COLUMNS`` order, or update the outcome of
        those written before (a voice turn is written when it starts and again when it ends),
        all in one transaction. An id comes at most once per call."""
        ...

    def delivery_log(self, limit: int = 100, voice: bool | None = None,
                     call_id: str | None = None,
                     failures_first: bool = False) -> list[dict[str, Any]]:
        """At most ``limit`` rows, newest first: only those of ``call_id``;
        ``voice`` True or False: only voice turns or only texts; ``failures_first``: the
        newest failures (HTTP status 400 and above, deadline, agent error) before the rest."""
        ...

    def in_flight_turns(self, since: float) -> list[dict[str, Any]]:
        """Voice turns started after ``since`` and not finished as far as the log knows,
        oldest first."""
        ...

    def recent_voice_latencies(self, since: float, limit: int = 5000) -> list[tuple[float, float]]:
        """``(received_at, first_line_ms)`` of finished voice turns since ``since``, newest
        first, at most ``limit``."""
        ...

    def delivery_counts(self, since: float) -> dict[str, int]:
        """How many rows since ``since`` have each outcome."""
        ...


@runtime_checkable
class WebhookSecrets(Protocol):
    """Signing secrets received from the platform by ``agentphone webhook set|rotate``."""

    def add_webhook_secret(self, scope: str, secret: str, grace: float,
                           webhook_id: str | None = None, url: str | None = None) -> None:
        """Store the new ``secret`` of ``scope`` (``account`` or an agent id); the scope's
        other live secrets stay valid ``grace`` more seconds. Storing a secret again changes
        nothing."""
        ...

    def webhook_secrets(self, live_only: bool = True) -> list[StoredSecret]:
        """Stored secrets, newest first; by default only those not expired."""
        ...


@runtime_checkable
class SQLTables(Protocol):
    """Tables of a package's own (``app.demo``'s) in the store's database, used through the
    store's connections with portable SQL (``?`` placeholders on every backend)."""

    def add_schema(self, version_table: str, migrations: Sequence[str]) -> None:
        """Keep a package's tables: ``migrations`` (strings of statements, as in
        ``app.store.schema``), tracked in ``version_table``, are applied now and by every
        later ``migrate``. A database that is down defers them to first use."""
        ...

    def run(self, fn: Callable[[Any], Any], transaction: bool = True, *,
            bulk: bool = False) -> Any:
        """``fn(cursor)``'s result, run in one transaction unless told otherwise; a driver
        error becomes StoreUnavailable and a refused value UnstorableValue. ``fn`` must do no
        other I/O: it may hold the database's write lock. ``bulk``: it may take a while (many
        rows), so it is never run on the event loop's own connection."""
        ...

    def row(self, columns: Sequence[str], rest: str,
            params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row of ``SELECT columns rest`` as a dict keyed by column name (the part
        after the last dot), or None."""
        ...

    def rows(self, columns: Sequence[str], rest: str,
             params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row of ``SELECT columns rest`` as dicts keyed like ``row``'s."""
        ...


@runtime_checkable
class Store(EventStore, StoreLifecycle, AgentSessions, ReplyOutbox, CallRecords, Reactions,
            DeliveryLog, WebhookSecrets, SQLTables, Protocol):
    """Every store interface: what the app's store (``app.store.get_store()``) provides."""
