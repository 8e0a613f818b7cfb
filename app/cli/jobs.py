"""`agentphone jobs|worker`: inspect, replay and run background jobs."""

import dataclasses
import logging
import signal
import time

import click

from app import logs
from app.cli.api import echo_json
from app.cli.base import uses
from app.cli.output import echo
from app.config import SETTINGS
from app.jobs import get_job_runner
from app.store import JOB_STATES

log = logging.getLogger(__name__)


@click.group("jobs", invoke_without_command=True)
@click.option("--dead", is_flag=True, help="Only dead-lettered jobs (same as --status dead).")
@click.option("--unsure", is_flag=True,
              help="Text replies that may or may not have gone out, by job (see `jobs resend`).")
@click.option("--status", type=click.Choice(JOB_STATES), help="Only jobs with this status.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True)
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")
@click.pass_context
def jobs(ctx, dead, unsure, status, limit, as_json):
    """List background jobs, newest first."""
    if ctx.invoked_subcommand is not None:
        return
    store = uses().store()
    if unsure:
        replies = store.unsure_replies(limit)
        if as_json:
            echo_json({"unsure_replies": replies})
        else:
            _echo_unsure(replies)
        return
    rows = store.jobs(status="dead" if dead else status, limit=limit)
    counts = store.job_counts()
    doubtful = store.unsure_reply_count()
    if as_json:
        echo_json({"jobs": [dataclasses.asdict(job) for job in rows], "totals": counts,
                   "unsure_replies": doubtful})
        return
    echo(f"{'ID':>6}  {'KIND':<13} {'STATUS':<8} {'TRIES':>5}  LAST ERROR")
    for job in rows:
        echo(f"{job.id:>6}  {job.kind:<13} {job.status:<8} {job.attempts:>5}  "
             f"{(job.last_error or '')[:60]}")
    echo("totals: " + (", ".join(f"{k} {v}" for k, v in sorted(counts.items())) or "none")
         + (f"; unsure replies {doubtful} (jobs --unsure)" if doubtful else ""))


def _echo_unsure(rows):
    echo(f"{'JOB':>6}  {'STATUS':<8} {'TO':<16} {'SINCE (UTC)':<19}  REPLY FOR / ERROR")
    for row in rows:
        since = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(row["updated_at"]))
        echo(f"{row['job_id'] or '-':>6}  {row['status']:<8} {row['to_number'] or '-':<16} "
             f"{since:<19}  {row['delivery_id']} {(row['error'] or '')[:60]}".rstrip())
    echo(f"{len(rows)} unsure repl{'y' if len(rows) == 1 else 'ies'}: check whether each "
         "arrived before `jobs resend JOB`")


@jobs.command("retry")
@click.argument("job_id", type=int)
def retry(job_id):
    """Queue a job again (typically a dead one) with a fresh set of attempts."""
    if not uses().store().retry_job(job_id):
        raise click.ClickException(f"no job {job_id}")
    click.echo(f"job {job_id} queued again")


@jobs.command("resend")
@click.argument("job_id", type=int)
def resend(job_id):
    """Send job JOB_ID's unsure reply again, through the outbox. Check first that it did not
    arrive: if it did, the recipient gets it twice."""
    row = uses().store().resend_reply(job_id)
    if row is None:
        raise click.ClickException(f"job {job_id} has no unsure reply, or is running")
    log.warning("operator resend: job %s queued to send its reply for %s to %s again",
                job_id, row["delivery_id"], row["to_number"])
    echo(f"job {job_id} queued to resend its reply to {row['to_number']}")


@click.command("worker")
@click.option("--grace", default=None, type=float,
              help="Seconds running jobs may take to finish after SIGTERM before they are "
                   f"handed back to the queue (default: JOB_GRACE, {SETTINGS['JOB_GRACE'][0]}; "
                   "Heroku kills 30 s after SIGTERM).")
def worker(grace):
    """Run background jobs only (the Procfile's worker process; set JOB_RUNNER=off on the web
    processes). SIGTERM or Ctrl-C: stop claiming, finish or hand back running jobs, exit."""
    runner = get_job_runner(uses().app())
    logs.write_in_background()  # a log reader that stalls never stops the jobs
    if grace is not None:
        runner.grace = grace
    previous = {sig: signal.signal(sig, runner.request_stop)
                for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        runner.run()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
