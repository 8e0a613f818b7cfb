"""The LLM agent against a fake OpenAI-compatible server streaming real SSE chunks: sentences
spoken as they complete, parallel tool rounds, history, markup filtering and failures."""

import json
import threading
import time

import pytest

from app.agent import Turn, get_agent, tool
from app.agent.llm import APOLOGY, CUT_OFF, NOTHING_SAID, TOO_MANY_ROUNDS, LLMAgent
from app.demo import Receptionist
from app.store import get_store
from app.voice.streamer import LATE_TEXT, stream_turn
from tests.fake_llm import (  # noqa: F401
    drop,
    empty,
    error_event,
    fake_llm_fixture,
    finish,
    no_finish,
    pause,
    raw,
    status,
    text,
    tool_call,
)
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
    assert first >= 0.8
    # Each sentence goes out while the model pauses before the next (0.8 s): a line held back
    # until the stream ended would arrive together with the ones after it.
    assert second - first >= 0.5 and final - second >= 0.5
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
    store = get_store(app)
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


def test_failure_mid_stream_ends_with_an_honest_line_not_a_retry(fake_llm, caplog):
    fake_llm.script(text("Sure thing."), text(" Your order"), drop())
    lines = run_turn(make_agent(fake_llm))
    assert [obj for _, obj in lines] == [{"text": "One moment.", "interim": True},
                                         {"text": "Sure thing.", "interim": True},
                                         {"text": CUT_OFF}]
    assert len(fake_llm.requests) == 1  # something was spoken: asking again would repeat it
    assert "LLM turn d1: round 1 failed" in caplog.text and "giving up" in caplog.text


def test_http_errors_and_an_unreachable_endpoint_end_with_an_apology(fake_llm, caplog):
    fake_llm.script(status(500))
    fake_llm.script(status(503))
    assert texts(run_turn(make_agent(fake_llm))) == ["One moment.", APOLOGY]
    assert len(fake_llm.requests) == 2  # asked again once, nothing had been spoken
    assert "HTTP 500: upstream exploded" in caplog.text and "asking again" in caplog.text
    fake_llm.script(status(400))
    assert texts(run_turn(make_agent(fake_llm))) == ["One moment.", APOLOGY]
    assert len(fake_llm.requests) == 3  # a rejected request is not sent again
    down = LLMAgent("m", base_url=f"http://127.0.0.1:{free_port()}/v1", api_key="k", timeout=2)
    assert texts(run_turn(down)) == ["One moment.", APOLOGY]
    assert "connection failed" in caplog.text


@pytest.mark.parametrize(("broken", "reason"), [
    ([text("The founder of the business"), no_finish()], "without a finish_reason"),
    ([empty()], "empty body"),
    ([text("Let me"), error_event("model overloaded")], "error event in the stream: model "
                                                        "overloaded"),
    ([raw('"just a string"')], "malformed chunk in the stream: just a string"),
    ([raw('{"choices": [{"delta": {"tool_calls": [{"function": 7}]}}]}')],
     "malformed chunk in the stream"),
])
def test_a_truncated_answer_is_asked_again_and_never_spoken(app, fake_llm, caplog, broken,
                                                            reason):
    store = get_store(app)
    fake_llm.script(*broken)
    fake_llm.script(text("Our founder is Ada."))
    lines = run_turn(make_agent(fake_llm, store=store), "Who founded it?")
    assert texts(lines) == ["One moment.", "Our founder is Ada."]
    assert len(fake_llm.requests) == 2
    warning = next(r for r in caplog.records if "round 1 failed" in r.getMessage())
    assert warning.levelname == "WARNING" and reason in warning.getMessage()
    assert "d1" in warning.getMessage() and fake_llm.url in warning.getMessage()
    assert store.session_state("call_llm")["llm_history"] == [
        {"role": "user", "content": "Who founded it?"},
        {"role": "assistant", "content": "Our founder is Ada."}]


def test_a_failure_is_not_blamed_on_the_caller(app, fake_llm):
    store = get_store(app)
    fake_llm.script(text("The founder of the business"), no_finish())
    fake_llm.script(empty())
    lines = run_turn(make_agent(fake_llm, store=store), "Who founded it?")
    assert texts(lines) == ["One moment.", APOLOGY]
    assert NOTHING_SAID not in texts(lines)
    history = store.session_state("call_llm")["llm_history"]
    assert history == [{"role": "user", "content": "Who founded it?"},
                       {"role": "assistant", "content": APOLOGY}]  # never the fragment


def test_an_answer_cut_at_max_tokens_is_a_failure(app, fake_llm, caplog):
    store = get_store(app)
    fake_llm.script(text("Well. We have many options."), text(" First, the"), finish("length"))
    lines = run_turn(make_agent(fake_llm, store=store, max_tokens=12), "Options?")
    assert texts(lines) == ["One moment.", "Well.", "We have many options.", CUT_OFF]
    assert fake_llm.requests[0]["max_tokens"] == 12
    assert "cut at max_tokens" in caplog.text
    assert store.session_state("call_llm")["llm_history"][-1] == {
        "role": "assistant", "content": f"Well. We have many options. {CUT_OFF}"}


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


def test_texts_get_the_whole_answer_and_it_is_remembered(app, fake_llm):
    from app.jobs.handlers import collect_text

    store = get_store(app)
    fake_llm.script(text("Hi Jane. Your order shipped."))
    turn = Turn(text="where is my order", channel="sms", caller=JANE, conversation_id="conv_1")
    assert collect_text(make_agent(fake_llm, store=store), turn) == "Hi Jane. Your order shipped."
    assert store.session_state("conv_1")["llm_history"] == [
        {"role": "user", "content": "where is my order"},
        {"role": "assistant", "content": "Hi Jane. Your order shipped."}]


def test_the_llm_agent_is_chosen_by_config(make_app):
    app = make_app(LLM_BASE_URL="http://127.0.0.1:9/v1", LLM_MODEL="m1", LLM_MAX_ROUNDS=3)
    agent = get_agent(app=app)
    assert isinstance(agent, LLMAgent)
    assert (agent.model, agent.max_rounds, agent.base_url) == ("m1", 3, "http://127.0.0.1:9/v1")
    assert {"book_appointment", "lookup_order", "check_availability", "cancel_appointment",
            "search_customers", "opening_hours", "end_call"} <= set(agent.toolbox.tools)
    assert isinstance(get_agent(app=make_app()), Receptionist)


def test_a_name_repeated_in_every_chunk_is_one_call_and_content_is_never_null(fake_llm):
    @tool
    def lookup_order(order_id: str) -> dict:
        """An order's status."""
        return {"id": order_id, "status": "shipped"}

    fake_llm.script(tool_call(0, "lookup_order", {"order_id": "4521"}, repeat_name=True,
                              pieces=4))
    fake_llm.script(text("It has shipped."))
    lines = run_turn(make_agent(fake_llm, tools=[lookup_order]))
    assert texts(lines) == ["One moment.", "It has shipped."]
    assistant, result = fake_llm.requests[1]["messages"][-2:]
    assert assistant["content"] == ""  # the fake, like llama-cpp-python, rejects null
    assert [c["function"]["name"] for c in assistant["tool_calls"]] == ["lookup_order"]
    assert json.loads(result["content"]) == {"id": "4521", "status": "shipped"}


def test_server_settings_reach_every_request(fake_llm):
    fake_llm.script(text("Hi."))
    run_turn(make_agent(fake_llm))
    first = fake_llm.requests[0]
    assert first["max_tokens"] == 300 and "tool_choice" not in first and "seed" not in first
    @tool
    def opening_hours() -> str:
        """When we are open."""
        return "9 to 5"

    fake_llm.script(tool_call(0, "opening_hours", {}))
    fake_llm.script(text("We open at nine."))
    agent = make_agent(fake_llm, tools=[opening_hours], max_tokens=0,
                       tool_choice="required", extra_body={"seed": 7, "top_k": 20})
    assert texts(run_turn(agent))[-1] == "We open at nine."
    second, third = fake_llm.requests[1:]
    assert "max_tokens" not in second and (second["seed"], second["top_k"]) == (7, 20)
    # "required" asks for a tool first; with the results in, the model may answer.
    assert (second["tool_choice"], third["tool_choice"]) == ("required", "auto")


def test_tool_rounds_without_streaming(fake_llm):
    @tool
    def lookup_order(order_id: str) -> dict:
        """An order's status."""
        return {"id": order_id, "status": "shipped"}

    agent = make_agent(fake_llm, tools=[lookup_order], stream_tools=False, tool_choice="auto")
    fake_llm.script(tool_call(0, "lookup_order", {"order_id": "4521"}))
    fake_llm.script()  # the tool round declines the tools without writing an answer
    fake_llm.script(text("It shipped."), text(" It arrives Thursday."))
    lines = run_turn(agent)
    assert texts(lines) == ["One moment.", "It shipped.", "It arrives Thursday."]
    tool_round, declined, answer = fake_llm.requests
    assert not tool_round.get("stream") and tool_round["tool_choice"] == "auto"
    assert not declined.get("stream") and declined["messages"][-1]["role"] == "tool"
    assert answer["stream"] is True and "tools" not in answer and "tool_choice" not in answer
    fake_llm.script(text("Hello. How can I help?"))  # a tool round that answers in text
    assert texts(run_turn(agent))[1:] == ["Hello.", "How can I help?"]
    assert len(fake_llm.requests) == 4


def test_a_malformed_answer_to_a_round_that_is_not_streamed_is_asked_again(fake_llm, caplog):
    agent = make_agent(fake_llm, stream_tools=False, tool_choice="auto")
    fake_llm.script(raw('{"choices": [{"message": {"tool_calls": [{"function": 7}]}}]}'))
    fake_llm.script(text("Hello."))
    assert texts(run_turn(agent)) == ["One moment.", "Hello."]
    assert len(fake_llm.requests) == 2
    assert "round 1 failed" in caplog.text and "malformed answer" in caplog.text

