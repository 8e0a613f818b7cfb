"""The LLM agent inside the real gunicorn gevent worker against a real model server nobody
here wrote: llama-cpp-python serving SmolLM2-135M-Instruct on loopback. Sentences stream,
a tool round works with the settings that server needs, and a server killed mid-stream or
cutting one of two concurrent calls short is a failure the caller hears as such, never a
fragment passed off as an answer."""

import json
import threading
import time

import pytest
import requests

from app.agent.base import Agent, Turn
from app.agent.llm import APOLOGY, CUT_OFF, NOTHING_SAID
from app.simulator import iter_ndjson, new_call_id, payload, signed_request
from app.store import get_store
from app.voice.streamer import LATE_TEXT
from tests.conftest import SECRET
from tests.llama_server import llama_server_fixture  # noqa: F401
from tests.servers import post_stream

pytestmark = pytest.mark.slow

FALLBACKS = {APOLOGY, CUT_OFF, NOTHING_SAID, LATE_TEXT}
STORY = "Tell me a long story about a dragon who lives in a castle."


def agent_env(model, **extra):
    """gunicorn settings for the LLM agent on ``model``; greedy decoding, so that each run
    gets the same answers."""
    return {"LLM_BASE_URL": model.url, "LLM_API_KEY": "none", "LLM_MODEL": "smollm2",
            "LLM_EXTRA_BODY": json.dumps({"temperature": 0, "seed": 7}),
            "VOICE_TIMEOUT": 60, "DEMO_TOOL_LATENCY": 0, "LOG_LEVEL": "DEBUG", **extra}


class Call:
    """A voice turn posted in the background; ``lines`` fill in as they arrive."""

    def __init__(self, webhook, words):
        self.call_id = new_call_id()
        raw, self.headers = signed_request(SECRET, payload("voice", words, callId=self.call_id))
        self.delivery_id = self.headers["X-Webhook-ID"]
        self.lines = []
        self.started = time.monotonic()
        self._thread = threading.Thread(target=self._run, args=(webhook, raw), daemon=True)
        self._thread.start()

    def _run(self, webhook, raw):
        with requests.post(webhook, data=raw, headers=self.headers, stream=True,
                           timeout=90) as response:
            for line in iter_ndjson(response):
                self.lines.append((time.monotonic() - self.started, json.loads(line)))

    def wait_for_a_sentence(self, timeout=90):
        """Until the model's first sentence (not the acknowledgement or a filler) arrived."""
        deadline = time.monotonic() + timeout
        while not model_lines(self.lines) and self._thread.is_alive():
            assert time.monotonic() < deadline, self.lines
            time.sleep(0.01)
        assert model_lines(self.lines), self.lines
        self.sentence_at = time.monotonic() - self.started

    def finish(self, timeout=90):
        self._thread.join(timeout)
        assert not self._thread.is_alive()
        return self.lines


def model_lines(lines):
    """The texts the model's answer put on the line (no acknowledgement, no fillers)."""
    return [obj["text"] for _, obj in lines
            if obj["text"] not in ("One moment.", *Agent.fillers)]


def assert_one_turn(lines):
    """Interim lines, then exactly one final line; nothing a caller should not hear."""
    assert lines and all(obj.get("interim") for _, obj in lines[:-1]), lines
    assert "interim" not in lines[-1][1], lines
    for _, obj in lines:
        assert not any(mark in obj["text"] for mark in '{}[]*#`<>'), obj
        assert '":' not in obj["text"], obj


def test_sentences_stream_from_a_real_model(gunicorn, llama_server):
    model = llama_server()
    server = gunicorn(workers=1, **agent_env(model))
    raw, headers = signed_request(SECRET, payload("voice", "Hello, who am I speaking to?",
                                                  callId=new_call_id()))
    response, lines = post_stream(server.webhook, raw, headers, timeout=90)
    assert response.status_code == 200
    assert_one_turn(lines)
    assert lines[0][1] == {"text": "One moment.", "interim": True}
    spoken = model_lines(lines)
    assert len(spoken) >= 2 and not FALLBACKS & set(spoken), spoken
    first_at = next(t for t, obj in lines if obj["text"] == spoken[0])
    assert first_at < lines[-1][0]  # the first sentence did not wait for the last
    round_one = next(line for line in server.log().splitlines()
                     if f"LLM round 1 for {headers['X-Webhook-ID']}" in line)
    assert "streamed, 0 tool call(s)" in round_one


def test_a_tool_round_on_llama_cpp_python(gunicorn, llama_server):
    model = llama_server("--chat_format", "chatml-function-calling")
    server = gunicorn(workers=1, **agent_env(model, LLM_TOOL_CHOICE="auto",
                                             LLM_STREAM_TOOLS="off", LLM_MAX_ROUNDS=2,
                                             LLM_TIMEOUT=60))  # the tools make a long prompt
    raw, headers = signed_request(SECRET, payload("voice", "Where is my order 4521?",
                                                  callId=new_call_id()))
    _, lines = post_stream(server.webhook, raw, headers, timeout=90)
    assert_one_turn(lines)
    log = server.log()
    delivery = headers["X-Webhook-ID"]
    assert f"LLM round 1 for {delivery}" in log
    round_one = next(line for line in log.splitlines() if f"LLM round 1 for {delivery}" in line)
    assert "not streamed, 1 tool call(s)" in round_one, log[-3000:]
    assert f"demo tool search_customers ran for {delivery}" in log  # its choice, greedily
    assert "unknown tool" not in log
    # The follow-up carried the tool call with "content": "" and was answered, not refused.
    assert f"LLM round 2 for {delivery}" in log and f"LLM turn {delivery}: round" not in log
    assert lines[-1][1]["text"] not in (APOLOGY, CUT_OFF), lines


def test_a_server_killed_mid_stream(gunicorn, llama_server):
    model = llama_server()
    server = gunicorn(workers=1, **agent_env(model))
    call = Call(server.webhook, STORY)
    call.wait_for_a_sentence()
    model.kill()
    lines = call.finish()
    assert_one_turn(lines)
    assert lines[-1][1] == {"text": CUT_OFF}
    assert lines[-1][0] - call.sentence_at < 10
    log = server.log()
    assert f"LLM turn {call.delivery_id}: round 1 failed" in log and "giving up" in log


def test_a_second_call_cuts_the_first_short(gunicorn, llama_server, make_app):
    model = llama_server()  # interrupt_requests on: its default
    server = gunicorn(workers=1, **agent_env(model))
    first = Call(server.webhook, STORY)
    first.wait_for_a_sentence()
    second = Call(server.webhook, "Hello, who am I speaking to?")
    first_lines, second_lines = first.finish(), second.finish()
    assert_one_turn(first_lines)
    assert_one_turn(second_lines)
    assert first_lines[-1][1] == {"text": CUT_OFF}
    assert second_lines[-1][1]["text"] not in FALLBACKS
    log = server.log()
    warning = next(line for line in log.splitlines()
                   if f"LLM turn {first.delivery_id}: round 1 failed" in line)
    assert "WARNING" in warning and "without a finish_reason" in warning
    heard = " ".join(model_lines(first_lines))
    store = get_store(make_app())
    session = Turn(text="", channel="voice", call_id=first.call_id, agent_id="agt_demo")
    assert store.session_state(session.session_id)["llm_history"] == [
        {"role": "user", "content": STORY}, {"role": "assistant", "content": heard}]
