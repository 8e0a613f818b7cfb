"""`agentphone jobs|worker`: inspect, replay and run background jobs."""

import dataclasses
import signal

import click

from app.cli.api import echo_json
from app.cli.base import agentphone, uses
from app.store import JOB_STATES


@agentphone.group("jobs", invoke_without_command=True)
@click.option("--dead", is_flag=True, help="Only dead-lettered jobs (same as --status dead).")
@click.option("--status", type=click.Choice(JOB_STATES), help="Only jobs with this status.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def jobs(ctx, dead, status, limit, as_json):
    """List background jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    store = uses().store()
    rows = store.jobs(status="dead" if dead else status, limit=limit)
    counts = store.job_counts()
    if as_json:
        echo_json({"jobs": [dataclasses.asdict(job) for job in rows], "totals": counts})
        return
    click.echo(f"{'ID':>6}  {'KIND':<13} {'STATUS':<8} {'TRIES':>5}  LAST ERROR")
    for job in rows:
        click.echo(f"{job.id:>6}  {job.kind:<13} {job.status:<8} {job.attempts:>5}  "
                   f"{(job.last_error or '')[:60]}")
    click.echo("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none"))


@jobs.command("retry")
@click.argument("job_id", type=int)
def retry(job_id):
    """Queue a job again (typically a dead one) with a fresh set of attempts."""
    if not uses().store().retry_job(job_id):
        raise click.ClickException(f"no job {job_id}")
    click.echo(f"job {job_id} queued again")


@agentphone.command("worker")
@click.option("--grace", default=None, type=float,
              help="Seconds running jobs may take to finish after SIGTERM before they are "
                   "handed back to the queue (default: JOB_GRACE, 20; Heroku kills 30 s "
                   "after SIGTERM).")
def worker(grace):
    """Run background jobs only (the Procfile's worker process; set JOB_RUNNER=off on the web
    processes). SIGTERM or Ctrl-C: stop claiming, finish or hand back running jobs, exit."""
    runner = uses().app().extensions["job_runner"]
    if grace is not None:
        runner.grace = grace
    previous = {sig: signal.signal(sig, runner.request_stop)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
