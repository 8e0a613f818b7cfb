"""The LLM agent against a fake OpenAI-compatible server streaming real SSE chunks: sentences
spoken as they complete, parallel tool rounds, history, markup filtering and failures."""

import json
import threading
import time

import pytest

from app.agent import Turn, tool
from app.agent.llm import APOLOGY, NOTHING_SAID, TOO_MANY_ROUNDS, LLMAgent
from app.demo import Receptionist
from app.voice.streamer import LATE_TEXT, stream_turn
from tests.fake_llm import drop, fake_llm_fixture, pause, status, text, tool_call  # noqa: F401
from tests.servers import free_port

JANE = "+15559876543"


def make_agent(fake, **kwargs):
    kwargs.setdefault("api_key", "sk-test")
    return LLMAgent("fake-model", base_url=fake.url, timeout=5, **kwargs)


def run_turn(agent, words="hello", deadline=10.0, call_id="call_llm", delivery_id="d1",
             **fields):
    """Stream one voice turn; returns [(seconds since start, line object)]."""
    turn = Turn(text=words, channel="voice", caller=JANE, call_id=call_id,
                delivery_id=delivery_id, **fields)
    started = time.monotonic()
    return [(time.monotonic() - started, json.loads(raw))
            for raw in stream_turn(agent, turn, deadline)]


def texts(lines):
    return [obj.get("text") for _, obj in lines]


def test_sentences_are_spoken_as_they_complete(fake_llm):
    fake_llm.script(
        pause(0.8),  # a slow first token
        text("Sure, I can"), text(" help."), text(" Your order"), pause(0.8),
        text(" 4521 shipped yesterday."), text(" It arrives"), pause(0.8), text(" Thursday."),
    )
    lines = run_turn(make_agent(fake_llm))
    assert [obj for _, obj in lines] == [
        {"text": "One moment.", "interim": True},
        {"text": "Sure, I can help.", "interim": True},
        {"text": "Your order 4521 shipped yesterday.", "interim": True},
        {"text": "It arrives Thursday."},
    ]
    (ack, _), (first, _), (second, _), (final, _) = lines
    assert ack < 0.5  # the acknowledgement does not wait for the model
    assert 0.8 <= first < 1.5  # spoken before the model wrote the next sentence
    assert 1.6 <= second < 2.3
    assert final >= 2.4
    request = fake_llm.requests[0]
    assert request["stream"] is True and request["model"] == "fake-model"


def test_parallel_tool_calls_overlap_and_results_go_back(fake_llm):
    spans, lock = {}, threading.Lock()

    def slow(name):
        begun = time.monotonic()
        time.sleep(0.5)
        with lock:
            spans[name] = (begun, time.monotonic())

    @tool
    def calendar(day: str) -> dict:
        """Free times on a day."""
        slow("calendar")
        return {"day": day, "free": ["10:00"]}

    @tool
    def orders(order_id: str, turn=None) -> dict:
        """An order's status."""
        slow("orders")
        return {"id": order_id, "status": "shipped", "caller": turn.caller}

    fake_llm.script(text("Let me check both."),
                    tool_call(0, "calendar", {"day": "monday"}, pieces=4),
                    tool_call(1, "orders", {"order_id": "4521"}, pieces=2))
    fake_llm.script(text("Monday at 10 is free."), text(" Your order has shipped."))
    lines = run_turn(make_agent(fake_llm, tools=[calendar, orders]))
    assert texts(lines) == ["One moment.", "Let me check both.", "Monday at 10 is free.",
                            "Your order has shipped."]
    (a0, a1), (b0, b1) = spans["calendar"], spans["orders"]
    assert a0 < b1 and b0 < a1  # they ran at the same time
    assert max(a1, b1) - min(a0, b0) < 0.9
    spoken_at = fake_llm.started_at[0] + lines[1][0]
    assert lines[1][0] < lines[2][0] and spoken_at < max(a1, b1)
    second = fake_llm.requests[1]["messages"]
    assistant, *results = second[-3:]
    assert assistant["role"] == "assistant" and assistant["content"] == "Let me check both."
    assert [(c["id"], c["function"]["name"], json.loads(c["function"]["arguments"]))
            for c in assistant["tool_calls"]] == [
        ("call_0_calendar", "calendar", {"day": "monday"}),
        ("call_1_orders", "orders", {"order_id": "4521"})]
    assert [(r["role"], r["tool_call_id"], json.loads(r["content"])) for r in results] == [
        ("tool", "call_0_calendar", {"day": "monday", "free": ["10:00"]}),
        ("tool", "call_1_orders", {"id": "4521", "status": "shipped", "caller": JANE})]
    tools_offered = {t["function"]["name"] for t in fake_llm.requests[0]["tools"]}
    assert tools_offered == {"calendar", "orders", "transfer_call", "end_call"}


def test_tool_timeout_and_errors_are_reported_to_the_model(fake_llm):
    @tool
    def stuck() -> str:
        """Never answers in time."""
        time.sleep(3)
        return "late"

    fake_llm.script(tool_call(0, "stuck", {}), tool_call(1, "missing", {"x": 1}))
    fake_llm.script(text("Sorry, the system is slow today."))
    started = time.monotonic()
    lines = run_turn(make_agent(fake_llm, tools=[stuck], tool_timeout=0.3))
    assert time.monotonic() - started < 2
    assert texts(lines)[-1] == "Sorry, the system is slow today."
    results = [json.loads(m["content"]) for m in fake_llm.requests[1]["messages"][-2:]]
    assert results == [{"error": "stuck timed out after 0.3s"},
                       {"error": "unknown tool 'missing'"}]


def test_markup_never_reaches_the_caller(fake_llm):
    fake_llm.script(text("**Sure!** Here you go 🎉🎉."), text("\n<tool_call>{\"name\": \"x. y\"}"),
                    text("</tool_call>\n- Tuesday at *10*"), text(" with [Dr. Lee](http://x)."))
    lines = run_turn(make_agent(fake_llm))
    assert texts(lines) == ["One moment.", "Sure!", "Here you go.",
                            "Tuesday at 10 with Dr. Lee."]


@pytest.mark.parametrize(("tool_name", "expected"), [
    ("transfer_call", {"text": "Putting you through now.", "action": "transfer"}),
    ("end_call", {"text": "Putting you through now.", "hangup": True}),
])
def test_call_control_tools(fake_llm, tool_name, expected):
    fake_llm.script(text("Putting you through now."), tool_call(0, tool_name, {}))
    lines = run_turn(make_agent(fake_llm))
    assert lines[-1][1] == expected
    assert len(fake_llm.requests) == 1


def test_history_system_prompt_and_earlier_turns_are_sent(app, fake_llm):
    store = app.extensions["store"]
    agent = make_agent(fake_llm, store=store, system_prompt="You work at Bright Smile.")
    history = [{"content": "Hello, how can I help?", "direction": "outbound", "channel": "voice",
                "at": "2025-01-15T14:00:00Z"}]
    fake_llm.script(text("Which day would suit you?"))
    fake_llm.script(text("Tuesday it is."))
    run_turn(agent, "I'd like an appointment", recent_history=history,
             conversation_state={"customerName": "Jane"})
    run_turn(agent, "Tuesday", delivery_id="d2", recent_history=[
        *history, {"content": "I'd like an appointment", "direction": "inbound"}])
    system, *rest = fake_llm.requests[1]["messages"]
    assert system["role"] == "system" and system["content"].startswith("You work at Bright")
    assert f"a phone call from {JANE}" in system["content"]
    assert [(m["role"], m["content"]) for m in rest] == [
        ("assistant", "Hello, how can I help?"),
        ("user", "I'd like an appointment"),  # from recentHistory, not repeated
        ("assistant", "Which day would suit you?"),  # this call's earlier turn, from the db
        ("user", "Tuesday"),
    ]
    assert "customerName" in fake_llm.requests[0]["messages"][0]["content"]


def test_an_empty_answer_is_not_silence(fake_llm):
    fake_llm.script(text("<think>nothing to say</think> 🙂"))
    assert texts(run_turn(make_agent(fake_llm)))[-1] == NOTHING_SAID


def test_failure_mid_stream_ends_with_an_apology(fake_llm):
    fake_llm.script(text("Sure thing."), text(" Your order"), drop())
    lines = run_turn(make_agent(fake_llm))
    assert [obj for _, obj in lines] == [{"text": "One moment.", "interim": True},
                                         {"text": "Sure thing.", "interim": True},
                                         {"text": APOLOGY}]


def test_http_errors_and_an_unreachable_endpoint_end_with_an_apology(fake_llm):
    fake_llm.script(status(500))
    assert texts(run_turn(make_agent(fake_llm))) == ["One moment.", APOLOGY]
    assert len(fake_llm.requests) == 1  # no silent retries eating the caller's time
    down = LLMAgent("m", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", timeout=2)
    assert texts(run_turn(down)) == ["One moment.", APOLOGY]


def test_a_model_slower_than_the_deadline_gets_the_streamer_fallback(fake_llm):
    fake_llm.script(pause(2.0), text("Too late."))
    lines = run_turn(make_agent(fake_llm), deadline=0.8)
    assert texts(lines) == ["One moment.", LATE_TEXT]
    assert lines[-1][0] < 1.3


def test_tool_rounds_are_bounded(fake_llm):
    @tool
    def again() -> str:
        """Loops forever."""
        return "try again"

    for _ in range(3):
        fake_llm.script(tool_call(0, "again", {}))
    lines = run_turn(make_agent(fake_llm, tools=[again], max_rounds=2))
    assert texts(lines)[-1] == TOO_MANY_ROUNDS
    assert len(fake_llm.requests) == 2


def test_texts_get_the_whole_answer(fake_llm):
    from app.jobs.handlers import collect_text

    fake_llm.script(text("Hi Jane. Your order shipped."))
    turn = Turn(text="where is my order", channel="sms", caller=JANE, conversation_id="conv_1")
    assert collect_text(make_agent(fake_llm), turn) == "Hi Jane. Your order shipped."


def test_the_llm_agent_is_chosen_by_config(make_app):
    app = make_app(LLM_BASE_URL="http://127.0.0.1:9/v1", LLM_MODEL="m1", LLM_MAX_ROUNDS=3)
    agent = app.extensions["agent"]
    assert isinstance(agent, LLMAgent)
    assert (agent.model, agent.max_rounds, agent.base_url) == ("m1", 3, "http://127.0.0.1:9/v1")
    assert {"book_appointment", "lookup_order", "check_availability", "cancel_appointment",
            "search_customers", "opening_hours", "end_call"} <= set(agent.toolbox.tools)
    assert isinstance(make_app().extensions["agent"], Receptionist)
