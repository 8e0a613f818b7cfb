"""The background job runner: claims due jobs from the store and runs them with retries.

One runner per process (a greenlet under gevent, a thread under the dev server). Jobs are
leased, so a job whose worker died is taken up by another once the lease runs out.
"""

import logging
import os
import random
import socket
import threading
import time

from app.store import StoreUnavailable
from app.tasks import spawn

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 3600.0


def retry_delay(attempt, base=2.0, cap=600.0, rand=random.random):
    """Exponential backoff with jitter: about base * 2^(attempt-1), at most ``cap``."""
    return min(cap, base * 2 ** (attempt - 1)) * (0.75 + rand() / 2)


class JobRunner:
    def __init__(self, app, handlers, concurrency=4, max_attempts=5, lease=60.0):
        self.app = app
        self.handlers = handlers
        self.max_attempts = max_attempts
        self.lease = lease
        self.worker = f"{socket.gethostname()}:{os.getpid()}"
        self._slots = threading.BoundedSemaphore(concurrency)
        self._wake = threading.Event()
        self._stop = threading.Event()
        self._pid = None
        self._lock = threading.Lock()

    @property
    def store(self):
        return self.app.extensions["store"]

    def start(self):
        """Start the loop in this process (once; again after a fork)."""
        with self._lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.worker = f"{socket.gethostname()}:{self._pid}"
        log.info("job runner %s started", self.worker)
        spawn(self._loop)

    def stop(self):
        self._stop.set()
        self._wake.set()

    def wake(self):
        """A job was queued in this process: look for it now rather than at the next poll."""
        self._wake.set()

    def _loop(self):
        next_prune = 0.0
        while not self._stop.is_set():
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + PRUNE_EVERY_SECONDS
                self._prune()
            self._slots.acquire()
            try:
                job = self.store.claim_job(self.worker, self.lease)
            except StoreUnavailable as exc:
                self._slots.release()
                log.warning("job runner: store unavailable (%s), retrying", exc)
                self._stop.wait(IDLE_POLL_SECONDS)
                continue
            if job is None:
                self._slots.release()
                self._wake.wait(IDLE_POLL_SECONDS)
                self._wake.clear()
                continue
            spawn(self._run_and_release, job)

    def _run_and_release(self, job):
        try:
            self.execute(job)
        finally:
            self._slots.release()

    def run_pending(self):
        """Run every due job in this thread, one after another; returns how many ran."""
        count = 0
        while (job := self.store.claim_job(self.worker, self.lease)) is not None:
            self.execute(job)
            count += 1
        return count

    def execute(self, job):
        """Run one claimed job and record the outcome; never raises for the job's own errors."""
        if job.attempts > self.max_attempts:
            log.error("job %s (%s) dead: its worker was lost %d times", job.id, job.kind,
                      job.attempts - 1)
            self.store.fail_job(job.id, "worker lost while running the job")
            return
        handler = self.handlers.get(job.kind)
        if handler is None:
            log.error("job %s: no handler for kind %r, dead-lettered", job.id, job.kind)
            self.store.fail_job(job.id, f"no handler for {job.kind!r}")
            return
        started = time.monotonic()
        try:
            with self.app.app_context():
                handler(job)
        except Exception as exc:
            self._failed(job, exc)
            return
        self.store.finish_job(job.id)
        log.info("job %s (%s) done in %.0f ms, attempt %d", job.id, job.kind,
                 (time.monotonic() - started) * 1000, job.attempts)

    def _failed(self, job, exc):
        error = f"{type(exc).__name__}: {exc}"
        if job.attempts >= self.max_attempts:
            log.error("job %s (%s) dead after %d attempts: %s", job.id, job.kind,
                      job.attempts, error)
            self.store.fail_job(job.id, error)
            return
        delay = retry_delay(job.attempts)
        log.warning("job %s (%s) attempt %d failed, retrying in %.0fs: %s", job.id, job.kind,
                    job.attempts, delay, error)
        self.store.fail_job(job.id, error, retry_at=self.store.clock() + delay)

    def _prune(self):
        try:
            removed = self.store.prune()
        except StoreUnavailable as exc:
            log.warning("prune skipped: %s", exc)
            return
        if removed:
            log.info("pruned %d expired delivery ids and finished jobs", removed)
