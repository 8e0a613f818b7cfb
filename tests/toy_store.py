"""An EventStore in plain Python, in memory: what a new backend needs, and nothing else.

The store contract tests (tests/test_store.py) run it next to SQLite and PostgreSQL. One lock
makes every operation atomic, the way one transaction does on a database: a claim is won by
exactly one thread, a job is leased to one worker at a time.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import dataclass, replace
from typing import Any

from app.store.base import DEFAULT_RETENTION, Job, Replayed, Retention, SignedBytes


@dataclass
class _Delivery:
    received_at: float
    owner: str | None = None
    attempt: int = 0
    heartbeat_at: float | None = None

    def heartbeat(self) -> float:
        return self.received_at if self.heartbeat_at is None else self.heartbeat_at


@dataclass
class _Leased:
    job: Job
    lease_until: float | None = None
    worker: str | None = None

    def due(self, now: float) -> bool:
        """Pending and due, or running on a lease that ran out (its worker died)."""
        if self.job.status == "pending":
            return self.job.run_at <= now
        return (self.job.status == "running" and self.lease_until is not None
                and self.lease_until < now)


class ToyStore:
    """Deliveries, voice claims and jobs in dicts; lost when the process ends."""

    lock_wait = 0.0  # the lock is held for microseconds, by this process only

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self.clock = clock
        self._lock = threading.Lock()
        self._deliveries: dict[str, _Delivery] = {}
        self._signed: dict[str, tuple[SignedBytes, str]] = {}  # digest -> bytes, delivery id
        self._replies: dict[str, tuple[str, float]] = {}  # delivery id -> (JSON, stored at)
        self._jobs: dict[int, _Leased] = {}
        self._ids = itertools.count(1)

    # -- deliveries -------------------------------------------------------------------------

    def claim_with_job(self, delivery_id: str, event: str, kind: str, payload: str,
                       signed: SignedBytes | None = None) -> bool:
        """Claim a delivery and queue its job; True if it was new."""
        with self._lock:
            self._refuse_replay(delivery_id, signed)
            if delivery_id in self._deliveries:
                return False
            self._deliveries[delivery_id] = _Delivery(self.clock())
            self._queue(kind, payload, delivery_id)
            return True

    def _refuse_replay(self, delivery_id: str, signed: SignedBytes | None) -> None:
        if signed is None:
            return
        first = self._signed.setdefault(signed.digest, (signed, delivery_id))[1]
        if first != delivery_id:
            raise Replayed(first)

    # -- voice claims and replies -----------------------------------------------------------

    def claim_voice(self, delivery_id: str, event: str, owner: str,
                    signed: SignedBytes | None = None) -> bool:
        """Claim a voice delivery for ``owner``; True if it was new."""
        with self._lock:
            self._refuse_replay(delivery_id, signed)
            if delivery_id in self._deliveries:
                return False
            now = self.clock()
            self._deliveries[delivery_id] = _Delivery(now, owner, 0, now)
            return True

    def voice_claim(self, delivery_id: str) -> tuple[dict[str, Any] | None, float] | None:
        """(final line or None, last heartbeat), or None when never claimed."""
        with self._lock:
            claim = self._deliveries.get(delivery_id)
            if claim is None:
                return None
            return self._reply(delivery_id), claim.heartbeat()

    def take_over_voice(self, delivery_id: str, owner: str, stale: float) -> int | None:
        """The new attempt number when the claim was stale and unanswered, else None."""
        with self._lock:
            claim = self._deliveries.get(delivery_id)
            now = self.clock()
            if (claim is None or claim.heartbeat() >= now - stale
                    or delivery_id in self._replies):
                return None
            claim.owner, claim.attempt, claim.heartbeat_at = owner, claim.attempt + 1, now
            return claim.attempt

    def renew_voice_claims(self, owner: str, delivery_ids: Iterable[str]) -> None:
        """Mark the claims ``owner`` holds among ``delivery_ids`` alive now."""
        with self._lock:
            now = self.clock()
            for delivery_id in delivery_ids:
                claim = self._deliveries.get(delivery_id)
                if claim is not None and claim.owner == owner:
                    claim.heartbeat_at = now

    def save_voice_reply(self, delivery_id: str, reply: dict[str, Any], owner: str,
                         attempt: int) -> bool:
        """Store the final line unless the claim moved on or one is stored; True if stored."""
        with self._lock:
            claim = self._deliveries.get(delivery_id)
            if (claim is None or (claim.owner, claim.attempt) != (owner, attempt)
                    or delivery_id in self._replies):
                return False
            self._replies[delivery_id] = (json.dumps(reply), self.clock())
            return True

    def voice_reply(self, delivery_id: str) -> dict[str, Any] | None:
        """The stored final line, or None."""
        with self._lock:
            return self._reply(delivery_id)

    def _reply(self, delivery_id: str) -> dict[str, Any] | None:
        stored = self._replies.get(delivery_id)
        return json.loads(stored[0]) if stored else None  # a copy the caller may change

    # -- jobs -------------------------------------------------------------------------------

    def enqueue(self, kind: str, payload: str, delivery_id: str | None = None) -> int:
        """Queue a job, due now; its id."""
        with self._lock:
            return self._queue(kind, payload, delivery_id)

    def _queue(self, kind: str, payload: str, delivery_id: str | None) -> int:
        now = self.clock()
        job_id = next(self._ids)
        self._jobs[job_id] = _Leased(Job(job_id, kind, payload, 0, "pending", delivery_id, now,
                                         None, now, now))
        return job_id

    def claim_job(self, worker: str, lease: float) -> Job | None:
        """Lease the next due (or abandoned) job to ``worker``."""
        with self._lock:
            now = self.clock()
            due = [held for held in self._jobs.values() if held.due(now)]
            if not due:
                return None
            held = min(due, key=lambda h: (h.job.run_at, h.job.id))
            held.job = replace(held.job, status="running", attempts=held.job.attempts + 1,
                               updated_at=now)
            held.lease_until, held.worker = now + lease, worker
            return held.job

    def extend_lease(self, job_id: int, worker: str, lease: float) -> bool:
        """Lease the job ``lease`` more seconds; False when ``worker`` lost it."""
        with self._lock:
            held = self._held(job_id, worker)
            if held is None:
                return False
            now = self.clock()
            held.lease_until, held.job = now + lease, replace(held.job, updated_at=now)
            return True

    def release_job(self, job_id: int, worker: str) -> bool:
        """Queue the job again without counting the attempt; False when ``worker`` lost it."""
        with self._lock:
            held = self._held(job_id, worker)
            if held is None or held.job.attempts == 0:
                return False
            now = self.clock()
            held.job = replace(held.job, status="pending", attempts=held.job.attempts - 1,
                               run_at=now, updated_at=now)
            held.lease_until = held.worker = None
            return True

    def _held(self, job_id: int, worker: str) -> _Leased | None:
        held = self._jobs.get(job_id)
        if held is None or held.worker != worker or held.job.status != "running":
            return None
        return held

    def finish_job(self, job_id: int, owner: tuple[str, int] | None = None) -> None:
        """Mark a running job done (only if ``owner``'s attempt, when given)."""
        self._outcome(job_id, "done", None, None, owner)

    def fail_job(self, job_id: int, error: str, retry_at: float | None = None,
                 owner: tuple[str, int] | None = None) -> None:
        """Retry a running job at ``retry_at``, or dead-letter it when that is None."""
        status = "pending" if retry_at is not None else "dead"
        self._outcome(job_id, status, str(error)[:2000], retry_at, owner)

    def _outcome(self, job_id: int, status: str, error: str | None,
                 run_at: float | None, owner: tuple[str, int] | None) -> None:
        with self._lock:
            held = self._jobs.get(job_id)
            if held is None or held.job.status != "running":
                return
            if owner is not None and owner != (held.worker, held.job.attempts):
                return
            job = held.job
            held.job = replace(job, status=status,
                               last_error=job.last_error if error is None else error,
                               run_at=job.run_at if run_at is None else run_at,
                               updated_at=self.clock())
            held.lease_until = None

    def retry_job(self, job_id: int) -> bool:
        """Queue a job again with a fresh count of attempts; False when there is none."""
        with self._lock:
            held = self._jobs.get(job_id)
            if held is None:
                return False
            now = self.clock()
            held.job = replace(held.job, status="pending", attempts=0, run_at=now,
                               updated_at=now)
            held.lease_until = None
            return True

    def job(self, job_id: int) -> Job | None:
        """Job ``job_id``, or None."""
        with self._lock:
            held = self._jobs.get(job_id)
            return held.job if held else None

    def jobs(self, status: str | None = None, limit: int = 50) -> list[Job]:
        """At most ``limit`` jobs, newest first (only those in ``status``)."""
        with self._lock:
            found = [h.job for h in self._jobs.values() if status in (None, h.job.status)]
        return sorted(found, key=lambda job: -job.id)[:limit]

    def job_counts(self) -> dict[str, int]:
        """How many jobs are in each status."""
        with self._lock:
            return dict(Counter(h.job.status for h in self._jobs.values()))

    def open_job_counts(self) -> list[tuple[str, str, int]]:
        """``(kind, status, count)`` of the jobs not done."""
        with self._lock:
            counts = Counter((h.job.kind, h.job.status) for h in self._jobs.values()
                             if h.job.status != "done")
        return [(kind, status, n) for (kind, status), n in sorted(counts.items())]

    # -- retention --------------------------------------------------------------------------

    def prune(self, retention: Retention = DEFAULT_RETENTION) -> int:
        """Forget old delivery ids and final lines, finished jobs and expired signed bytes;
        how many were forgotten."""
        with self._lock:
            now = self.clock()
            old = now - retention.deliveries
            finished = now - retention.finished_jobs
            return (_drop(self._deliveries, lambda d: d.received_at < old)
                    + _drop(self._replies, lambda r: r[1] < old)
                    + _drop(self._jobs, lambda h: h.job.status == "done"
                            and h.job.updated_at < finished)
                    + _drop(self._signed, lambda s: s[0].expires_at < now))


def _drop(items: dict, gone: Callable[[Any], bool]) -> int:
    """Remove the values of ``items`` for which ``gone`` holds; how many."""
    keys = [key for key, value in items.items() if gone(value)]
    for key in keys:
        del items[key]
    return len(keys)
