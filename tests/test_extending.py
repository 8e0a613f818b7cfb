"""Each "Where to add" of ARCHITECTURE.md, done the documented way: a new event type, an agent
with a tool of its own, and a CLI command. (A store backend: tests/toy_store.py and the
contract tests of tests/test_store.py.)"""

import json

import click
import pytest
from click.testing import CliRunner

from app import registry
from app.agent import Agent, Reply, get_agent, run_tools, tool, tools_of
from app.cli import agentphone
from app.jobs import get_job_runner
from app.simulator import payload, signed_request
from app.store import get_store
from tests.conftest import NOW, SECRET
from tests.fake_agentphone import API_KEY, SENT, fake_api_fixture  # noqa: F401
from tests.servers import post_stream

SURVEY = "acme.survey"  # an event type the platform does not send: the table gains a row


@pytest.fixture
def survey_route(monkeypatch):
    """A route for SURVEY in the registry's table for one test; the handlers it ran, with
    their arguments."""
    ran = []
    route = registry.Route("acme_survey", lambda event, job, context: ran.append(
        (event, job, context)))
    monkeypatch.setitem(registry.ROUTES, (SURVEY, registry.ANY_CHANNEL), route)
    return ran


SURVEY_BODY = {"event": SURVEY, "agentId": "agt_demo", "data": {"callId": "call_9", "score": 9}}


def test_without_a_route_a_new_event_type_is_ignored(app, post_signed):
    response = post_signed(SURVEY_BODY)
    assert (response.status_code, response.get_json()) == (200, {"ok": True})
    assert get_store(app).jobs() == []


def test_a_route_makes_a_new_event_type_a_job_its_handler_runs(survey_route, app,
                                                              post_signed):
    for _attempt in range(2):  # the platform's retry of the same delivery: still one job
        response = post_signed(SURVEY_BODY, delivery_id="whd_survey_1")
        assert (response.status_code, response.get_json()) == (200, {"ok": True})
    assert [(job.kind, job.delivery_id) for job in get_store(app).jobs()] == [
        ("acme_survey", "whd_survey_1")]
    assert survey_route == []  # acknowledged first, run by the runner
    assert get_job_runner(app).run_pending() == 1
    [(event, job, context)] = survey_route
    assert (event.event, event.agent_id, event.data) == (SURVEY, "agt_demo",
                                                         SURVEY_BODY["data"])
    assert job.delivery_id == "whd_survey_1"
    assert context.agent is get_agent("agt_demo", app) and context.store is get_store(app)
    assert get_store(app).jobs()[0].status == "done"


class Florist(Agent):
    """A flower shop: prices come from a tool of its own."""

    acknowledgement = "Let me see."

    @tool(timeout=2)
    def bouquet_price(self, flower: str, turn=None) -> int:
        """The price in pounds of a dozen flowers.

        Args:
            flower: The kind of flower, e.g. "roses".
        """
        return 30 if turn.channel == "voice" else 25  # the injected turn is at hand

    def respond(self, turn):
        [price] = run_tools([("bouquet_price", {"flower": "roses"})], tools_of(self), turn=turn)
        yield "Roses are in season."
        yield Reply(f"A dozen roses are {price.value} pounds.")


def create_florist(app):
    """The agent factory: AGENT=tests.test_extending:create_florist in a deployment."""
    return Florist()


def test_a_tool_call_shows_up_in_the_turn(phone):
    reply = phone.call(agent=Florist()).say("How much are roses?")
    assert [line.text for line in reply.lines] == [
        "Let me see.", "Roses are in season.", "A dozen roses are 30 pounds."]
    assert [(t.name, t.arguments, t.value, t.error) for t in reply.tool_calls] == [
        ("bouquet_price", {"flower": "roses"}, 30, None)]
    assert Florist.bouquet_price.spec()["function"]["parameters"]["properties"] == {
        "flower": {"type": "string", "description": 'The kind of flower, e.g. "roses".'}}


def test_an_agent_of_ones_own_answers_a_voice_turn_and_a_text(make_app, fake_api):
    fake_api.on("POST", "/v1/messages", SENT)
    app = make_app(AGENT_FACTORY="tests.test_extending:create_florist", AGENTPHONE_API_KEY=API_KEY,
                   AGENTPHONE_API_URL=fake_api.url)
    assert isinstance(get_agent(app=app), Florist)
    client = app.test_client()
    raw, headers = signed_request(SECRET, payload("voice", "How much are roses?"), None, NOW)
    response = client.post("/webhook", data=raw, headers=headers)
    assert response.status_code == 200 and response.mimetype == "application/x-ndjson"
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert lines == [
        {"text": "Let me see.", "interim": True},
        {"text": "Roses are in season.", "interim": True},
        {"text": "A dozen roses are 30 pounds."},
    ]

    raw, headers = signed_request(SECRET, payload("sms", "How much are roses?"), None, NOW)
    response = client.post("/webhook", data=raw, headers=headers)
    assert (response.status_code, response.get_json()) == (200, {"ok": True})
    assert get_job_runner(app).run_pending() == 1
    assert fake_api.count("POST", "/v1/messages") == 1
    sent = fake_api.last("POST", "/v1/messages").body
    assert (sent["to_number"], sent["body"]) == (
        "+15559876543", "Roses are in season. A dozen roses are 25 pounds.")


@pytest.mark.slow
def test_an_agent_of_ones_own_streams_its_turn_from_gunicorn(gunicorn):
    server = gunicorn(AGENT="tests.test_extending:create_florist")
    raw, headers = signed_request(SECRET, payload("voice", "How much are roses?"))
    response, lines = post_stream(server.webhook, raw, headers)
    assert response.headers["Content-Type"] == "application/x-ndjson"
    assert [obj for _, obj in lines] == [
        {"text": "Let me see.", "interim": True},
        {"text": "Roses are in season.", "interim": True},
        {"text": "A dozen roses are 30 pounds."},
    ]


@click.command()
@click.option("--name", default="world")
def hello(name):
    """Greet someone (a command of one's own)."""
    click.echo(f"hello {name}")


@pytest.fixture
def hello_command(monkeypatch):
    """``hello`` added to the group as app/cli/__init__.py adds each of COMMANDS, for one
    test."""
    monkeypatch.setattr(agentphone, "commands", dict(agentphone.commands))
    agentphone.add_command(hello)


def test_a_new_command_is_listed_and_runs(hello_command):
    runner = CliRunner()
    listed = runner.invoke(agentphone, ["--help"])
    assert listed.exit_code == 0
    assert "  hello " in listed.output and "Greet someone" in listed.output
    said = runner.invoke(agentphone, ["hello", "--name", "Ada"])
    assert (said.exit_code, said.output) == (0, "hello Ada\n")
