"""`flask agentphone jobs|worker`: inspect, replay and run background jobs."""

import signal

import click
from flask import current_app
from flask.cli import with_appcontext

from app.cli import agentphone
from app.cli.output import echo
from app.store import StoreUnavailable, get_store


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
    echo(f"{'ID':>6}  {'KIND':<13} {'STATUS':<8} {'TRIES':>5}  LAST ERROR")
    for job in rows:
        echo(f"{job.id:>6}  {job.kind:<13} {job.status:<8} {job.attempts:>5}  "
                   f"{(job.last_error or '')[:60]}")
    echo("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))


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
    echo(f"job {job_id} queued again")


@agentphone.command("worker")
@click.option("--grace", default=None, type=float,
              help="Seconds running jobs may take to finish after SIGTERM before they are "
                   "handed back to the queue (default: JOB_GRACE, 20; Heroku kills 30 s "
                   "after SIGTERM).")
def worker(grace):
    """Run background jobs only (the Procfile's worker process; set JOB_RUNNER=off on the web
    processes). SIGTERM or Ctrl-C: stop claiming, finish or hand back running jobs, exit."""
    runner = current_app.extensions["job_runner"]
    if grace is not None:
        runner.grace = grace
    previous = {sig: signal.signal(sig, runner.request_stop)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
