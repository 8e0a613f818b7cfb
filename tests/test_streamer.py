"""The voice streamer's guarantees, whatever the agent does: interim first, one final line."""

import json
import socket
import threading
import time

import pytest

from app.agent.base import TRANSFER, Agent, Reply, Turn
from app.voice.hangup import peer_closed
from app.voice.streamer import ERROR_TEXT, LATE_TEXT, deadline_for, stream_turn

TURN = Turn(text="hello", channel="voice", delivery_id="whd_1")


class ScriptedAgent(Agent):
    def __init__(self, *steps):
        self.steps = steps

    def respond(self, turn):
        for step in self.steps:
            if isinstance(step, (int, float)):
                time.sleep(step)
            elif isinstance(step, Exception):
                raise step
            else:
                yield step


def run(agent, deadline=2.0, **kwargs):
    recorded = []
    lines = list(stream_turn(agent, TURN, deadline, recorded.append, **kwargs))
    assert all(line.endswith("\n") and line.count("\n") == 1 for line in lines)
    objects = [json.loads(line) for line in lines]
    assert objects[0]["interim"] is True
    assert all(o.get("interim") is True for o in objects[:-1])
    assert "interim" not in objects[-1]
    assert recorded == [objects[-1]]
    return objects


def test_sentences_then_final():
    objects = run(ScriptedAgent("First.", "  ", "Second.", Reply("Done.")))
    assert [o["text"] for o in objects] == ["One moment, please.", "First.", "Second.", "Done."]


@pytest.mark.parametrize(
    ("reply", "line"),
    [(Reply("Bye!", hangup=True), {"text": "Bye!", "hangup": True}),
     (Reply("Connecting.", action=TRANSFER), {"text": "Connecting.", "action": "transfer"}),
     (Reply(hangup=True), {"hangup": True}),
     (Reply("Pressing one.", digits="1"), {"text": "Pressing one.", "digits": "1"}),
     (Reply(), {"text": ""})],
)
def test_final_line_fields(reply, line):
    assert run(ScriptedAgent(reply))[-1] == line


def test_reply_refuses_hangup_and_transfer_together():
    with pytest.raises(ValueError):
        Reply("x", hangup=True, action=TRANSFER)


def test_late_agent_gets_fallback_at_deadline():
    started = time.monotonic()
    objects = run(ScriptedAgent("Working.", 5, Reply("too late")), deadline=0.5)
    assert objects[-1] == {"text": LATE_TEXT}
    assert [o["text"] for o in objects[1:-1]] == ["Working."]
    assert time.monotonic() - started < 2


@pytest.mark.parametrize(
    "steps", [(RuntimeError("boom"),), ("Partial.", KeyError("x")), ("Only.",)]
)
def test_failing_or_unfinished_agent_apologises(steps):
    assert run(ScriptedAgent(*steps))[-1] == {"text": ERROR_TEXT}


def test_nothing_after_the_final_line():
    objects = run(ScriptedAgent(Reply("first"), "ignored", Reply("second")))
    assert [o["text"] for o in objects[1:]] == ["first"]


def test_interim_line_comes_before_any_agent_work():
    started = threading.Event()

    class Slow(Agent):
        def respond(self, turn):
            started.set()
            time.sleep(0.3)
            yield Reply("ok")

    lines = stream_turn(Slow(), TURN, 2.0)
    first = next(lines)
    assert json.loads(first)["interim"] is True
    assert not started.is_set()
    assert json.loads(list(lines)[-1]) == {"text": "ok"}


def test_hang_up_ends_the_stream_without_a_final_line():
    recorded = []
    ours, callers = socket.socketpair()
    callers.close()
    started = time.monotonic()
    with ours:
        lines = list(stream_turn(ScriptedAgent(5, Reply("x")), TURN, 10.0, recorded.append,
                                 sock=ours))
    assert len(lines) == 1
    assert time.monotonic() - started < 1
    assert recorded == [{"text": LATE_TEXT}]


@pytest.mark.parametrize("after_lines", [1, 2])
def test_closing_the_stream_records_a_reply_for_retries(after_lines):
    recorded = []
    lines = stream_turn(ScriptedAgent("Working.", 5, Reply("x")), TURN, 10.0, recorded.append)
    for _ in range(after_lines):
        next(lines)
    lines.close()
    assert recorded == [{"text": LATE_TEXT}]


def test_open_connection_is_not_mistaken_for_a_hang_up():
    ours, callers = socket.socketpair()
    with ours, callers:
        callers.sendall(b"pipelined bytes are not a hang-up")
        assert run(ScriptedAgent(0.6, Reply("ok")), sock=ours)[-1] == {"text": "ok"}
        assert not peer_closed(ours)
        callers.shutdown(socket.SHUT_WR)
        time.sleep(0.05)
        ours.recv(100)
        assert peer_closed(ours)


@pytest.mark.parametrize(("timeout", "deadline"), [(5, 4.0), (30, 25.0), (120, 115.0)])
def test_deadline_leaves_a_margin(timeout, deadline):
    assert deadline_for(timeout) == deadline


def test_hang_up_behind_unread_bytes_is_seen_and_the_bytes_stay_unread():
    ours, callers = socket.socketpair()
    with ours:
        callers.sendall(b"GET /next HTTP/1.1\r\n\r\n")
        assert not peer_closed(ours)
        callers.close()
        assert peer_closed(ours)
        assert ours.recv(100) == b"GET /next HTTP/1.1\r\n\r\n"


def test_caller_who_sent_bytes_then_hung_up_mid_step_ends_the_stream():
    ours, callers = socket.socketpair()
    callers.sendall(b"GET /next HTTP/1.1\r\n\r\n")
    threading.Timer(0.3, callers.close).start()
    started = time.monotonic()
    with ours:
        lines = list(stream_turn(ScriptedAgent(5, Reply("x")), TURN, 10.0, sock=ours))
    assert len(lines) == 1  # the interim line only
    assert time.monotonic() - started < 2


def test_long_silence_gets_filler_lines_then_one_final():
    objects = run(ScriptedAgent("Working.", 1.0, Reply("Done.")), filler_after=0.4)
    texts = [o["text"] for o in objects]
    assert texts == ["One moment, please.", "Working.", *Agent.fillers, "Done."]


def test_filler_after_zero_says_nothing_extra():
    objects = run(ScriptedAgent("Working.", 0.5, Reply("Done.")), filler_after=0)
    assert [o["text"] for o in objects] == ["One moment, please.", "Working.", "Done."]


def test_agent_chooses_its_filler_interval_and_lines():
    class Patient(Agent):
        filler_after = 0.4

        def filler(self, turn, count):
            return None if count == 2 else f"Filler {count} for {turn.text}."

        def respond(self, turn):
            time.sleep(1.4)
            yield Reply("Done.")

    texts = [o["text"] for o in run(Patient(), filler_after=0)]
    assert texts == ["One moment, please.", "Filler 1 for hello.", "Filler 3 for hello.",
                     "Done."]


def test_failing_filler_is_skipped():
    class Broken(ScriptedAgent):
        def filler(self, turn, count):
            raise RuntimeError("no words")

    objects = run(Broken(0.5, Reply("Done.")), filler_after=0.2)
    assert [o["text"] for o in objects] == ["One moment, please.", "Done."]
