"""`flask agentphone jobs|worker`: inspect, replay and run background jobs."""

import logging
import time

import click
from flask import current_app

from app.cli import agentphone
from app.store import get_store

log = logging.getLogger(__name__)


@agentphone.group("jobs", invoke_without_command=True)
@click.option("--dead", is_flag=True, help="Only dead-lettered jobs.")
@click.option("--status", default=None, help="Only jobs with this status.")
@click.option("--limit", default=50, show_default=True)
@click.pass_context
def jobs(ctx, dead, status, limit):
    """List background jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    rows = get_store().jobs(status="dead" if dead else status, limit=limit)
    counts = get_store().job_counts()
    click.echo(f"{'ID':>6}  {'KIND':<13} {'STATUS':<8} {'TRIES':>5}  LAST ERROR")
    for job in rows:
        click.echo(f"{job.id:>6}  {job.kind:<13} {job.status:<8} {job.attempts:>5}  "
                   f"{(job.last_error or '')[:60]}")
    click.echo("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))


@jobs.command("retry")
@click.argument("job_id", type=int)
def retry(job_id):
    """Queue a job again (typically a dead one) with a fresh set of attempts."""
    if not get_store().retry_job(job_id):
        raise click.ClickException(f"no job {job_id}")
    click.echo(f"job {job_id} queued again")


@agentphone.command("worker")
def worker():
    """Run background jobs only (the Procfile's worker process); stops on Ctrl-C / SIGTERM."""
    runner = current_app.extensions["job_runner"]
    runner.start()
    click.echo(f"job worker {runner.worker} running")
    try:
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        runner.stop()
