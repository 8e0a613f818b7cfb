"""`flask agentphone jobs|worker`: inspect, replay and run background jobs."""

import logging
import signal
import threading
import time

import click
from flask import current_app
from flask.cli import with_appcontext

from app.cli import agentphone
from app.jobs.runner import IDLE_POLL_SECONDS, PRUNE_EVERY_SECONDS
from app.store import StoreUnavailable, get_store

log = logging.getLogger(__name__)

TICK_SECONDS = 0.2  # how quickly the main loop notices a stop request


@agentphone.group("jobs", invoke_without_command=True)
@click.option("--dead", is_flag=True, help="Only dead-lettered jobs.")
@click.option("--status", default=None, help="Only jobs with this status.")
@click.option("--limit", default=50, show_default=True)
@click.pass_context
@with_appcontext  # a group's own callback is not wrapped by AppGroup
def jobs(ctx, dead, status, limit):
    """List background jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    try:
        store = get_store()
        rows = store.jobs(status="dead" if dead else status, limit=limit)
        counts = store.job_counts()
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(f"{'ID':>6}  {'KIND':<13} {'STATUS':<8} {'TRIES':>5}  LAST ERROR")
    for job in rows:
        click.echo(f"{job.id:>6}  {job.kind:<13} {job.status:<8} {job.attempts:>5}  "
                   f"{(job.last_error or '')[:60]}")
    click.echo("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))


@jobs.command("retry")
@click.argument("job_id", type=int)
def retry(job_id):
    """Queue a job again (typically a dead one) with a fresh set of attempts."""
    try:
        queued = get_store().retry_job(job_id)
    except StoreUnavailable as exc:
        raise click.ClickException(str(exc)) from exc
    if not queued:
        raise click.ClickException(f"no job {job_id}")
    click.echo(f"job {job_id} queued again")


class JobWorker:
    """The dedicated worker process: runs up to ``concurrency`` jobs at once (threads), renews
    the lease of each running job so that a slow job is never taken by a second worker, and
    on stop claims nothing more, lets running jobs finish for up to ``grace`` seconds, then
    hands the rest back to the queue (their interrupted attempt not counted).

    A worker that dies without stopping (SIGKILL, lost machine) stops renewing: its jobs are
    taken by another worker once their lease runs out.
    """

    def __init__(self, runner, concurrency, grace=25.0, poll=IDLE_POLL_SECONDS,
                 prune_every=PRUNE_EVERY_SECONDS):
        self.runner = runner
        self.concurrency = concurrency
        self.grace = grace
        self.poll = poll
        self.prune_every = prune_every
        self.running = {}  # job id -> Job
        self.stop_requests = 0  # a plain counter: safe to bump from a signal handler
        self._changed = threading.Condition()
        self._finished = threading.Event()

    @property
    def store(self):
        return self.runner.store

    @property
    def name(self):
        return self.runner.worker

    def request_stop(self, *_):
        """First call: stop claiming and finish. Second call: do not wait for running jobs."""
        self.stop_requests += 1

    @property
    def stopping(self):
        return self.stop_requests > 0

    def _sleep(self, seconds):
        deadline = time.monotonic() + seconds
        while not self.stopping and (left := deadline - time.monotonic()) > 0:
            time.sleep(min(left, TICK_SECONDS))

    def run(self):
        """Run until asked to stop; returns the number of jobs handed back at shutdown."""
        log.info("job worker %s started: %d at a time, lease %gs, grace %gs", self.name,
                 self.concurrency, self.runner.lease, self.grace)
        heartbeat = threading.Thread(target=self._heartbeat, name="lease-heartbeat",
                                     daemon=True)
        heartbeat.start()
        try:
            self._claim_loop()
            return self._shutdown()
        finally:
            self._finished.set()
            heartbeat.join(5)

    def _claim_loop(self):
        next_prune = time.monotonic()
        while not self.stopping:
            if time.monotonic() >= next_prune:
                next_prune = time.monotonic() + self.prune_every
                self._prune()
            with self._changed:
                if len(self.running) >= self.concurrency:
                    self._changed.wait(TICK_SECONDS)
                    continue
            try:
                job = self.store.claim_job(self.name, self.runner.lease)
            except StoreUnavailable as exc:
                log.warning("job worker: store unavailable (%s), retrying", exc)
                self._sleep(self.poll)
                continue
            if job is None:
                self._sleep(self.poll)
                continue
            log.info("job %s (%s) claimed, attempt %d", job.id, job.kind, job.attempts)
            with self._changed:
                self.running[job.id] = job
            threading.Thread(target=self._execute, args=(job,), name=f"job-{job.id}",
                             daemon=True).start()

    def _execute(self, job):
        try:
            self.runner.execute(job)
        except Exception as exc:
            # The outcome could not be recorded (store down): the job stays leased and runs
            # again once the lease runs out.
            log.error("job %s (%s): outcome not recorded, it will run again: %s", job.id,
                      job.kind, exc)
        finally:
            with self._changed:
                self.running.pop(job.id, None)
                self._changed.notify_all()

    def _shutdown(self):
        with self._changed:
            count = len(self.running)
        log.info("job worker %s stopping: claiming no more jobs; %d running, waiting up to "
                 "%gs", self.name, count, self.grace)
        deadline = time.monotonic() + self.grace
        with self._changed:
            while (self.running and self.stop_requests < 2
                   and time.monotonic() < deadline):
                self._changed.wait(TICK_SECONDS)
            left = list(self.running.values())
        for job in left:
            try:
                released = self.store.release_job(job.id, self.name)
            except StoreUnavailable as exc:
                log.warning("job %s (%s): could not hand back (%s); it runs again after its "
                            "lease", job.id, job.kind, exc)
                continue
            log.warning("job %s (%s) still running at shutdown: %s", job.id, job.kind,
                        "handed back to the queue" if released else "no longer ours")
        log.info("job worker %s stopped", self.name)
        return len(left)

    def _heartbeat(self):
        """Renew the lease of every running job a few times per lease period."""
        interval = max(self.runner.lease / 3, 0.1)
        while not self._finished.wait(interval):
            with self._changed:
                running = list(self.running)
            for job_id in running:
                try:
                    held = self.store.extend_lease(job_id, self.name, self.runner.lease)
                except StoreUnavailable as exc:
                    log.warning("lease renewal failed: %s", exc)
                    break
                if not held and job_id in self.running:
                    log.warning("job %s: lease lost to another worker", job_id)

    def _prune(self):
        try:
            removed = self.store.prune()
        except StoreUnavailable as exc:
            log.warning("prune skipped: %s", exc)
            return
        if removed:
            log.info("pruned %d expired delivery ids and finished jobs", removed)


@agentphone.command("worker")
@click.option("--grace", default=25.0, show_default=True, type=float,
              help="Seconds running jobs may take to finish after SIGTERM before they are "
                   "handed back to the queue (Heroku kills 30 s after SIGTERM).")
def worker(grace):
    """Run background jobs only (the Procfile's worker process; set JOB_RUNNER=off on the web
    processes). SIGTERM or Ctrl-C: stop claiming, finish or hand back running jobs, exit."""
    app = current_app._get_current_object()
    job_worker = JobWorker(app.extensions["job_runner"], app.config["JOB_CONCURRENCY"],
                           grace=grace)
    previous = {sig: signal.signal(sig, job_worker.request_stop)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        job_worker.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
