"""The background job runner: claims due jobs from the store and runs them with retries.

The same runner serves the web workers (``start()``: a greenlet under gevent, a thread under
the dev server) and the dedicated ``agentphone worker`` process (``run()`` in the
foreground). Jobs are leased, and the lease of every running job is renewed, so a slow job is
never taken by a second worker while a job whose worker died is taken up by another once its
lease runs out. Each attempt runs as a task of its own, cancelled at ``timeout`` seconds: a
hung tool or upstream fails its attempt (retried or dead-lettered as usual) and frees its
slot for the other jobs.
"""

import logging
import os
import random
import socket
import threading
import time

from flask import current_app

from app import logs
from app.errors import Unretryable
from app.metrics import JOB_OUTCOMES, JOB_SECONDS
from app.runtime import spawn
from app.store import StoreUnavailable, get_store

log = logging.getLogger(__name__)

IDLE_POLL_SECONDS = 1.0
PRUNE_EVERY_SECONDS = 3600.0
RECORD_RETRY_SECONDS = 0.25  # the first pause before recording an outcome again, doubling
RECORD_RETRY_CAP_SECONDS = 4.0
EXTENSION = "job_runner"  # the key of an app's JobRunner in app.extensions


class JobTimeout(Exception):
    """A job attempt ran past the runner's time limit and was cancelled."""


def retry_delay(attempt, base=2.0, cap=600.0, rand=random.random):
    """Exponential backoff with jitter: about base * 2^(attempt-1), at most ``cap``."""
    return min(cap, base * 2 ** (attempt - 1)) * (0.75 + rand() / 2)


class JobRunner:
    """Runs up to ``concurrency`` jobs at once, each by ``handlers[job.kind](job)`` (the app's
    come from the one event table, ``app.registry.job_handlers``). On stop it claims nothing
    more, lets running jobs finish for up to ``grace`` seconds, then hands the rest back to
    the queue (their interrupted attempt not counted)."""

    def __init__(self, app, handlers, *, concurrency, max_attempts, lease, grace, timeout,
                 poll=IDLE_POLL_SECONDS, prune_every=PRUNE_EVERY_SECONDS):
        self.app = app
        self.handlers = handlers
        self.concurrency = concurrency
        self.max_attempts = max_attempts
        self.lease = lease
        self.grace = grace
        self.timeout = timeout
        self.poll = poll
        self.prune_every = prune_every
        self.worker = _worker_name()
        self.running = {}  # job id -> Job
        self._recording = set()  # ids of jobs whose outcome waits for the store to come back
        self.stop_requests = 0  # a plain counter: safe to bump from a signal handler
        self._changed = threading.Condition()
        self._wake = threading.Event()
        self._pid = None
        self._start_lock = threading.Lock()
        self._stopped = threading.Event()

    @property
    def store(self):
        return get_store(self.app)

    # -- control ----------------------------------------------------------------------------

    def start(self):
        """Run in the background of this process (once; again after a fork)."""
        with self._start_lock:
            if self._pid == os.getpid():
                return
            self._pid = os.getpid()
            self.worker = _worker_name()
        threading.Thread(target=self.run, name="job-runner", daemon=True).start()

    def request_stop(self, *_):
        """First call: stop claiming and finish. Second call: do not wait for running jobs."""
        self.stop_requests += 1
        self._wake.set()

    @property
    def stopping(self):
        return self.stop_requests > 0

    def wake(self) -> None:
        """A job was queued in this process: look for it now rather than at the next poll."""
        self._wake.set()

    def stop(self):
        """Stop the loop that ``start()`` began in this process and wait for its shutdown
        (running jobs finish within ``grace`` or are handed back); False if it overran."""
        if self._pid != os.getpid():
            return True
        self.request_stop()
        return self._stopped.wait(self.grace + 5)

    def run(self):
        """Run until asked to stop; returns the number of jobs handed back at shutdown."""
        self._stopped.clear()
        log.info("job runner %s started: %d at a time, lease %gs, limit %gs", self.worker,
                 self.concurrency, self.lease, self.timeout)
        finished = threading.Event()
        heartbeat = threading.Thread(target=self._heartbeat, args=(finished,),
                                     name="lease-heartbeat", daemon=True)
        heartbeat.start()
        try:
            self._claim_loop()
            return self._shutdown()
        finally:
            finished.set()
            heartbeat.join(5)
            self._stopped.set()

    def run_pending(self):
        """Run every due job in this thread, one after another; returns how many ran."""
        count = 0
        while (job := self.store.claim_job(self.worker, self.lease)) is not None:
            self.execute(job)
            count += 1
        return count

    # -- the loop ---------------------------------------------------------------------------

    def _idle(self, seconds):
        self._wake.wait(seconds)
        self._wake.clear()

    def _claim_loop(self):
        next_prune = time.monotonic()
        while not self.stopping:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_every
                self._prune()
            with self._changed:
                if len(self.running) >= self.concurrency:
                    self._changed.wait(self.poll)
                    continue
            try:
                job = self.store.claim_job(self.worker, self.lease)
            except StoreUnavailable as exc:
                log.warning("job runner: store unavailable (%s), retrying", exc)
                self._idle(self.poll)
                continue
            if job is None:
                self._idle(self.poll)
                continue
            with self._changed:
                self.running[job.id] = job
            threading.Thread(target=self._execute_tracked, args=(job,), name=f"job-{job.id}",
                             daemon=True).start()

    def _execute_tracked(self, job):
        try:
            self.execute(job)
        except Exception as exc:
            # The outcome could not be recorded (the store down for half a lease): the job
            # runs again once the lease runs out.
            log.error("job %s (%s): outcome not recorded, it will run again: %s", job.id,
                      job.kind, exc)
        finally:
            with self._changed:
                if self.running.get(job.id) is job:  # not a later claim of the same job
                    del self.running[job.id]
                self._changed.notify_all()

    def _shutdown(self):
        with self._changed:
            count = len(self.running)
        log.info("job runner %s stopping: claiming no more jobs; %d running, waiting up to "
                 "%gs", self.worker, count, self.grace)
        deadline = time.monotonic() + self.grace
        with self._changed:
            while self.running and self.stop_requests < 2 and time.monotonic() < deadline:
                self._changed.wait(0.2)
            left = list(self.running.values())
        for job in left:
            if job.id in self._recording:
                log.warning("job %s (%s) still recording its outcome at shutdown: not handed "
                            "back (if the outcome is lost, it runs again after its lease)",
                            job.id, job.kind)
                continue
            try:
                released = self.store.release_job(job.id, self.worker)
            except StoreUnavailable as exc:
                log.warning("job %s (%s): could not hand back (%s); it runs again after its "
                            "lease", job.id, job.kind, exc)
                continue
            log.warning("job %s (%s) still running at shutdown: %s", job.id, job.kind,
                        "handed back to the queue" if released else "no longer ours")
        log.info("job runner %s stopped", self.worker)
        return len(left)

    def _heartbeat(self, finished):
        """Renew the lease of every running job a few times per lease period."""
        while not finished.wait(max(self.lease / 3, 0.1)):
            with self._changed:
                running = list(self.running)
            for job_id in running:
                try:
                    held = self.store.extend_lease(job_id, self.worker, self.lease)
                except StoreUnavailable as exc:
                    log.warning("lease renewal failed: %s", exc)
                    break
                if not held and job_id in self.running:
                    log.warning("job %s: lease lost to another worker", job_id)

    # -- one job ----------------------------------------------------------------------------

    def execute(self, job):
        """Run one claimed job and record the outcome; never raises for the job's own errors."""
        if job.attempts > self.max_attempts:
            log.error("job %s (%s) dead: its worker was lost %d times", job.id, job.kind,
                      job.attempts - 1)
            self._record(job, "dead", "worker lost while running the job")
            return
        handler = self.handlers.get(job.kind)
        if handler is None:
            log.error("job %s: no handler for kind %r, dead-lettered", job.id, job.kind)
            self._record(job, "dead", f"no handler for {job.kind!r}")
            return
        logs.bind(job_id=job.id, attempt=job.attempts, delivery_id=job.delivery_id)
        started = time.monotonic()
        task = spawn(self._handle, handler, job)
        if not task.join(self.timeout):
            task.cancel()
            JOB_SECONDS.labels(job.kind).observe(time.monotonic() - started)
            self._failed(job, JobTimeout(f"timed out after {self.timeout:g} s"))
            return
        if task.error is not None:
            JOB_SECONDS.labels(job.kind).observe(time.monotonic() - started)
            self._failed(job, task.error)
            return
        JOB_SECONDS.labels(job.kind).observe(time.monotonic() - started)
        self._record(job, "done")
        JOB_OUTCOMES.labels(job.kind, "done").inc()
        # One line per job, with what the handler did: a line each would cost every text.
        log.info("job %s (%s) done in %.0f ms, attempt %d%s", job.id, job.kind,
                 (time.monotonic() - started) * 1000, job.attempts,
                 f": {task.value}" if task.value else "")

    def _handle(self, handler, job):
        # A task of its own: its log lines get the job's ids here, not from the caller.
        logs.bind(job_id=job.id, attempt=job.attempts, delivery_id=job.delivery_id)
        with self.app.app_context():
            return handler(job)

    def _failed(self, job, exc):
        error = f"{type(exc).__name__}: {exc}"
        if isinstance(exc, Unretryable):
            log.error("job %s (%s) dead at attempt %d, retrying cannot help: %s", job.id,
                      job.kind, job.attempts, error)
            self._record(job, "dead", error)
            return
        if job.attempts >= self.max_attempts:
            log.error("job %s (%s) dead after %d attempts: %s", job.id, job.kind,
                      job.attempts, error)
            self._record(job, "dead", error)
            JOB_OUTCOMES.labels(job.kind, "dead").inc()
            return
        JOB_OUTCOMES.labels(job.kind, "retry").inc()
        delay = retry_delay(job.attempts)
        log.warning("job %s (%s) attempt %d failed, retrying in %.0fs: %s", job.id, job.kind,
                    job.attempts, delay, error)
        self._record(job, "retry", error, delay)

    def _record(self, job, outcome, error=None, delay=None):
        """Record a job's outcome ("done", "dead", or "retry" in ``delay`` seconds), waiting
        out a store outage for up to half a lease: the attempt has run, and running it again
        would repeat what it did."""
        give_up = time.monotonic() + self.lease / 2
        pause = RECORD_RETRY_SECONDS
        # Recorded only while this worker still runs this attempt: had the lease run out and
        # the job been claimed again, the outcome would be another attempt's.
        owner = (self.worker, job.attempts)
        try:
            while True:
                try:
                    if outcome == "done":
                        self.store.finish_job(job.id, owner=owner)
                    else:
                        retry_at = None if delay is None else self.store.clock() + delay
                        self.store.fail_job(job.id, error, retry_at=retry_at, owner=owner)
                    return
                except StoreUnavailable as exc:
                    if time.monotonic() + pause > give_up or self.stop_requests > 1:
                        raise
                    self._recording.add(job.id)
                    log.warning("job %s (%s): outcome %r not recorded yet, store unavailable "
                                "(%s); trying again in %.1fs", job.id, job.kind, outcome, exc,
                                pause)
                    time.sleep(pause)
                    pause = min(pause * 2, RECORD_RETRY_CAP_SECONDS)
        finally:
            self._recording.discard(job.id)

    def _prune(self):
        try:
            removed = self.store.prune()
        except StoreUnavailable as exc:
            log.warning("prune skipped: %s", exc)
            return
        if removed:
            log.info("pruned %d expired rows", removed)


def _worker_name():
    return f"{socket.gethostname()}:{os.getpid()}"


def get_job_runner(app=None) -> JobRunner:
    """The job runner of ``app``, by default the current one."""
    return (current_app if app is None else app).extensions[EXTENSION]
