"""Durable background jobs for every event that is not a live voice turn."""

from app.jobs.runner import EXTENSION, JobRunner, get_job_runner

__all__ = ["get_job_runner", "init_app"]


def init_app(app):
    from app.registry import job_handlers  # here: the registry imports this package

    runner = JobRunner(
        app, job_handlers(app),
        concurrency=app.config["JOB_CONCURRENCY"],
        max_attempts=app.config["JOB_MAX_ATTEMPTS"],
        lease=app.config["JOB_LEASE"],
        grace=app.config["JOB_GRACE"],
        timeout=app.config["JOB_TIMEOUT"],
    )
    app.extensions[EXTENSION] = runner
    if app.config["JOB_RUNNER"]:
        # Under gunicorn post_worker_init starts it at boot; this covers any other server.
        app.before_request(runner.start)
