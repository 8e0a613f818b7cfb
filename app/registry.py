"""The one table of what each delivery becomes, read by the webhook and the job runner.

A voice message is answered in its own response, as a stream. Every other known event is
stored as a job of its route's kind, and the runner hands that job to the route's handler with
the delivery parsed and what the handler works with (``JobContext``). An event no route takes
(a type this version does not know) is acknowledged and ignored.
"""

import functools
from collections.abc import Callable
from dataclasses import dataclass

from flask import Flask

from app.agent import get_agent
from app.agentphone import client_from_app
from app.errors import Unretryable
from app.jobs import handlers
from app.jobs.handlers import JobContext
from app.store import Job, get_store
from app.webhook import events
from app.webhook.events import CALL_ENDED, MESSAGE, REACTION, VOICE, Event

# A handler returns a few words on what it did (or None), for the job's "done" log line.
Handler = Callable[[Event, Job, JobContext], str | None]


@dataclass(frozen=True)
class Route:
    """Where one kind of delivery goes: a job of ``job_kind`` run by ``handler``, or, with
    neither, a voice turn streamed in the response."""

    job_kind: str | None = None
    handler: Handler | None = None

    @property
    def streamed(self) -> bool:
        """True for a voice turn, answered in the delivery's own response."""
        return self.job_kind is None


ANY_CHANNEL = None
VOICE_STREAM = Route()

# (event, channel) -> route; ANY_CHANNEL takes the channels with no entry of their own.
ROUTES = {
    (MESSAGE, VOICE): VOICE_STREAM,
    (MESSAGE, ANY_CHANNEL): Route("text_message", handlers.text_message),
    (REACTION, ANY_CHANNEL): Route("reaction", handlers.reaction),
    (CALL_ENDED, ANY_CHANNEL): Route("call_ended", handlers.call_ended),
}


def job_routes() -> dict[str | None, Route]:
    """The table's job routes by job kind, read from ``ROUTES`` at each call: a row added
    there (by a test, or a plugin before the app is built) is queued and run alike."""
    return {route.job_kind: route for route in ROUTES.values() if not route.streamed}


def route_for(event: Event) -> Route | None:
    """The route of a parsed delivery; None when no route takes it."""
    return ROUTES.get((event.event, event.channel)) or ROUTES.get((event.event, ANY_CHANNEL))


def job_handlers(app: Flask) -> dict[str, Callable[[Job], str | None]]:
    """What the job runner of ``app`` calls for each job kind of the table."""
    return {kind: functools.partial(run_job, app, route.handler)
            for kind, route in job_routes().items()
            if kind is not None and route.handler is not None}  # every job route has both


def run_job(app: Flask, handler: Handler, job: Job) -> str | None:
    """Run ``handler`` on ``job`` in an app context of ``app``: the stored delivery parsed
    once, the settings read at each run. Returns what the handler says it did."""
    event = parse_job(job)
    config = app.config
    return handler(event, job, JobContext(
        store=get_store(), agent=get_agent(event.agent_id),
        api=functools.partial(client_from_app, app),
        send_replies=bool(config.get("AGENTPHONE_API_KEY")),
        max_attempts=config["JOB_MAX_ATTEMPTS"], failure_reply=config["TEXT_FAILURE_REPLY"],
    ))


def parse_job(job: Job) -> Event:
    """The job's stored delivery, parsed; raises Unretryable for one that fails the checks,
    since it never will pass them."""
    try:
        return events.parse(job.payload.encode("utf-8"))
    except events.InvalidEvent as exc:
        raise Unretryable(f"stored delivery is invalid: {exc.message} {exc.details}") from None
