"""The one event table: each delivery's route, the job kinds that the webhook queues and the
runner runs, a job's delivery parsed once, and handlers working from their arguments alone."""

import functools
import json

import flask
import pytest

from app import registry
from app.agent import Agent, Reply
from app.agentphone import AgentPhoneClient
from app.jobs import get_job_runner, handlers
from app.simulator import payload
from app.store import Job, get_store
from app.webhook import events
from tests.fake_agentphone import API_KEY, SENT, fake_api_fixture  # noqa: F401

JANE = "+15559876543"
REACTION = {"event": "agent.reaction", "channel": "imessage", "agentId": "agt_demo",
            "data": {"messageId": "msg_1", "reactionType": "love", "from": JANE}}


def event_of(body):
    return events.parse(json.dumps(body).encode())


@pytest.mark.parametrize(("event", "channel", "kind"), [
    ("agent.message", "voice", None),
    *[("agent.message", channel, "text_message") for channel in sorted(events.TEXT_CHANNELS)],
    ("agent.message", "fax", "text_message"),  # a channel of its own would need a route
    ("agent.reaction", "imessage", "reaction"),
    ("agent.reaction", "", "reaction"),
    ("agent.call_ended", "voice", "call_ended"),
    ("agent.call_ended", "", "call_ended"),
])
def test_each_known_delivery_has_its_route(event, channel, kind):
    route = registry.route_for(events.Event(event, channel, None, {}))
    assert (route.job_kind, route.streamed) == (kind, kind is None)
    if kind is not None:
        assert registry.job_routes()[kind] is route and callable(route.handler)


@pytest.mark.parametrize("event", ["call.started", "message.received", "agent.typing"])
def test_other_events_have_no_route(event):
    assert registry.route_for(events.Event(event, "sms", None, {})) is None


def test_the_webhook_queues_and_the_runner_runs_the_table_s_job_kinds(app, post_signed):
    for body in (payload("sms"), payload("call_ended"), REACTION, payload("voice")):
        response = post_signed(body)
        response.get_data()  # a voice turn runs in its stream
        assert response.status_code == 200
    store = get_store(app)
    assert sorted(job.kind for job in store.jobs()) == sorted(registry.job_routes())
    assert set(get_job_runner(app).handlers) == set(registry.job_routes())
    assert get_job_runner(app).run_pending() == 3
    assert {job.status for job in store.jobs()} == {"done"}


def test_a_job_parses_its_delivery_once(app, post_signed, monkeypatch):
    assert post_signed(payload("sms", "Where is my order?")).status_code == 200
    parsed = []
    parse = events.parse
    monkeypatch.setattr(events, "parse", lambda body: parsed.append(body) or parse(body))
    assert get_job_runner(app).run_pending() == 1
    assert len(parsed) == 1


def test_a_stored_delivery_that_fails_the_checks_is_unretryable(app):
    store = get_store(app)
    job_id = store.enqueue("reaction", json.dumps({"event": "agent.reaction", "data": []}))
    get_job_runner(app).run_pending()
    job = store.job(job_id)
    assert (job.status, job.attempts) == ("dead", 1)
    assert job.last_error.startswith("Unretryable: stored delivery is invalid")


class Listening(Agent):
    def __init__(self):
        self.records, self.turns = [], []

    def respond(self, turn):
        self.turns.append(turn)
        yield Reply("Open nine to five.")

    def on_call_ended(self, record):
        self.records.append(record)
        super().on_call_ended(record)


def context_for(app, agent, api=None):
    return handlers.JobContext(store=get_store(app), agent=agent, api=api,
                               send_replies=api is not None, max_attempts=5,
                               failure_reply=True)


def test_handlers_work_from_their_arguments_outside_any_app_context(app, fake_api):
    fake_api.on("POST", "/v1/messages", SENT)
    agent = Listening()
    api = functools.partial(AgentPhoneClient, API_KEY, base_url=fake_api.url)
    assert not flask.has_app_context()
    ended = event_of(payload("call_ended"))
    handlers.call_ended(ended, Job(1, "call_ended", "", 1, delivery_id="whd_1"),
                        context_for(app, agent))
    assert [r.call_id for r in agent.records] == [ended.data["callId"]]
    assert get_store(app).call_record(ended.data["callId"]) is not None
    text = event_of(payload("sms", "When are you open?"))
    handlers.text_message(text, Job(2, "text_message", "", 1, delivery_id="whd_2"),
                          context_for(app, agent, api))
    assert [t.text for t in agent.turns] == ["When are you open?"]
    assert fake_api.last("POST", "/v1/messages").body["body"] == "Open nine to five."
