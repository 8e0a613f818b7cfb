"""The LLM agent inside the real gunicorn gevent worker, checked on the wire: sentences
arrive as the model completes them, the demo tools of one round run concurrently as
greenlets, and a provider failure still ends the turn with one spoken final line."""

import json
import time

import pytest

from app.agent.llm import APOLOGY
from app.simulator import payload, signed_request
from app.voice.streamer import LATE_TEXT
from tests.conftest import SECRET
from tests.fake_llm import drop, fake_llm_fixture, pause, text, tool_call  # noqa: F401
from tests.servers import post_stream

pytestmark = pytest.mark.slow

LATENCY = 0.6


def test_llm_turn_on_the_wire(gunicorn, fake_llm):
    # DEBUG: the demo tools' lines show each run.
    server = gunicorn(workers=1, DEMO_TOOL_LATENCY=LATENCY, LOG_LEVEL="DEBUG",
                      LLM_BASE_URL=fake_llm.url, LLM_API_KEY="sk-test", LLM_MODEL="fake-model")
    fake_llm.script(
        pause(0.8), text("Let me check"), text(" both for you."),
        tool_call(0, "check_availability", {"day": "monday"}),
        tool_call(1, "lookup_order", {"order_id": "4521"}),
    )
    fake_llm.script(
        text("Monday has 10 AM free."), text(" Your order"), pause(0.8),
        text(" shipped yesterday by FedEx."),
    )
    fake_llm.script(text("Half a sen"), drop())
    fake_llm.script(text("Half a sen"), drop())  # asked again once: nothing had been spoken

    raw, headers = signed_request(SECRET, payload("voice", "Is Monday free, and my order?"))
    sent_at = time.monotonic()  # the fake runs in this process: one clock for both sides
    response, lines = post_stream(server.webhook, raw, headers)
    assert response.status_code == 200
    assert [obj for _, obj in lines] == [
        {"text": "One moment.", "interim": True},
        {"text": "Let me check both for you.", "interim": True},
        {"text": "Monday has 10 AM free.", "interim": True},
        {"text": "Your order shipped yesterday by FedEx."},
    ]
    times = [t for t, _ in lines]
    assert times[0] < 0.6  # before the model's first token
    # Both tools (LATENCY each) ran at once: the second model call came ~LATENCY after the
    # first stream ended, not 2 * LATENCY.
    gap = fake_llm.started_at[1] - fake_llm.finished_at[0]
    assert LATENCY <= gap < 2 * LATENCY - 0.1, gap
    # "Let me check both for you." reached the caller before the tools had finished.
    assert sent_at + times[1] < fake_llm.started_at[1]
    assert times[3] - times[2] >= 0.7  # the first sentence did not wait for the second
    results = [m for m in fake_llm.requests[1]["messages"] if m["role"] == "tool"]
    assert json.loads(results[0]["content"])["open_times"][0] == "10:00"
    assert "FedEx" in json.loads(results[1]["content"])["orders"][0]["detail"]
    log = server.log()
    assert log.count("demo tool check_availability ran") == 1
    assert log.count("demo tool lookup_order ran") == 1

    raw, headers = signed_request(SECRET, payload("voice", "And tomorrow?"))
    _, lines = post_stream(server.webhook, raw, headers)
    assert [obj for _, obj in lines] == [{"text": "One moment.", "interim": True},
                                         {"text": APOLOGY}]
    assert f"LLM turn {headers['X-Webhook-ID']}: round 1 failed" in server.log()


def test_history_keeps_what_the_caller_heard_when_the_deadline_cuts_in(gunicorn, fake_llm):
    server = gunicorn(workers=1, VOICE_TIMEOUT=5, LLM_BASE_URL=fake_llm.url,
                      LLM_API_KEY="sk-test", LLM_MODEL="fake-model")
    fake_llm.script(text("Let me look."), text(" Your order"), pause(8))
    fake_llm.script(text("It shipped."))
    body = payload("voice", "Where is my order?", callId="call_deadline")
    _, lines = post_stream(server.webhook, *signed_request(SECRET, body))
    assert [obj.get("text") for _, obj in lines] == ["One moment.", "Let me look.", LATE_TEXT]
    assert lines[-1][0] < 5
    body = payload("voice", "Hello?", callId="call_deadline")
    _, lines = post_stream(server.webhook, *signed_request(SECRET, body))
    assert lines[-1][1] == {"text": "It shipped."}
    assert [(m["role"], m["content"]) for m in fake_llm.requests[1]["messages"][1:]] == [
        ("user", "Where is my order?"), ("assistant", "Let me look."), ("user", "Hello?")]
