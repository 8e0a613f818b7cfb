"""The README's agent example runs as written: tools overlap, chunks stream, actions work,
the call-ended hook runs in the job."""

import json
import re
import sys
import time
import types
from pathlib import Path

import pytest

from app.agent import Agent, Turn, get_agent
from app.agent.llm import LLMAgent
from app.jobs import get_job_runner
from app.simulator import payload, signed_request
from app.store import get_store
from app.voice.streamer import stream_turn
from tests.conftest import NOW, SECRET

README = Path(__file__).resolve().parent.parent / "README.md"


@pytest.fixture(scope="module")
def myagent():
    section = README.read_text().split("## The agent: your business logic", 1)[1]
    code = re.search(r"```python\n(# myagent\.py\n.*?)```", section, re.S).group(1)
    module = types.ModuleType("myagent")
    sys.modules["myagent"] = module
    try:
        exec(compile(code, "README.md:myagent.py", "exec"), module.__dict__)  # noqa: S102
        yield module
    finally:
        del sys.modules["myagent"]


def lines_of(agent, words):
    turn = Turn(text=words, channel="voice", caller="+15550001", call_id="c", delivery_id="d")
    started = time.monotonic()
    return [(time.monotonic() - started, json.loads(raw))
            for raw in stream_turn(agent, turn, deadline=10)]


def test_readme_example_agent(myagent, make_app):
    agent = myagent.create_agent(None)
    assert isinstance(agent, Agent)
    lines = lines_of(agent, "When can you come?")
    assert [obj for _, obj in lines] == [
        {"text": "Let me check our diary.", "interim": True},
        {"text": "Our next free visit is Thursday morning.", "interim": True},
        {"text": "The call-out fee is 60 pounds. Shall I book it?"},
    ]
    assert lines[-1][0] < 1.8  # two 1 s tools at once
    assert lines_of(agent, "a person please")[-1][1] == {"text": "Putting you through now.",
                                                         "action": "transfer"}
    assert lines_of(agent, "bye")[-1][1]["hangup"] is True
    assert myagent.next_free_visit.parameters["properties"]["postcode"]["description"] == (
        'The caller\'s postcode, e.g. "SW1A 1AA".')

    app = make_app(AGENT_INSTANCE=agent)
    assert get_agent(app=app) is agent
    llm = LLMAgent.from_config({"LLM_BASE_URL": "http://127.0.0.1:9/v1"},
                               tools=[myagent.next_free_visit, myagent.callout_fee],
                               store=get_store(app))
    assert {"next_free_visit", "callout_fee"} <= set(llm.toolbox.tools)


def test_readme_example_hook(myagent, make_app):
    app = make_app(AGENT_INSTANCE=myagent.create_agent(None))
    raw, headers = signed_request(SECRET, payload("call_ended", callSuccessful=False), None, NOW)
    assert app.test_client().post("/webhook", data=raw, headers=headers).status_code == 200
    assert get_job_runner(app).run_pending() == 1
    assert myagent.CALL_BACKS == [("+15559876543", "Caller asked about an order.")]
    assert get_store(app).call_record("call_sim")["successful"] is False
