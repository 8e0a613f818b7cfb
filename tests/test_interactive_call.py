"""`agentphone call` in a real terminal: tmux types what the caller says and reads the screen."""

import os
import shutil
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest

pytestmark = pytest.mark.slow
AGENTPHONE = Path(sys.executable).with_name("agentphone")


class Terminal:
    """A tmux session on a tmux server of its own (``-L``): a shared default server that is
    exiting as the previous test's last session closes refuses a new session."""

    def __init__(self, name, command, env, cwd):
        self.name = name
        options = [arg for k, v in env.items() for arg in ("-e", f"{k}={v}")]
        self.tmux("new-session", "-d", "-s", name, "-x", "160", "-y", "50", "-c", str(cwd),
                  *options, command)

    def tmux(self, *args):
        done = subprocess.run(["tmux", "-L", self.name, *args], capture_output=True, text=True,
                              check=False)
        assert done.returncode == 0, f"tmux {args[0]} failed: {done.stderr}"
        return done.stdout

    def type(self, text):
        self.tmux("send-keys", "-t", self.name, text, "Enter")

    def screen(self):
        return self.tmux("capture-pane", "-p", "-t", self.name, "-S", "-200")

    def wait_for(self, text, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if text in screen:
                return screen
            time.sleep(0.1)
        raise AssertionError(f"{text!r} never appeared; the screen:\n{self.screen()}")

    def close(self):
        subprocess.run(["tmux", "-L", self.name, "kill-server"], capture_output=True,
                       check=False)


@pytest.fixture
def terminal(tmp_path):
    if shutil.which("tmux") is None:
        pytest.fail("tmux is not installed (.ci/run installs it)")
    opened = []

    def open_(command):
        env = {"PATH": os.environ["PATH"], "HOME": str(tmp_path), "DEMO_TOOL_LATENCY": "0",
               "LANG": "C.UTF-8", "TERM": "xterm"}
        term = Terminal(f"call-test-{uuid.uuid4().hex[:8]}", command, env, tmp_path)
        opened.append(term)
        return term

    yield open_
    for term in opened:
        term.close()


def test_interactive_call_talks_texts_and_hangs_up(terminal):
    term = terminal(f"{AGENTPHONE} call --caller +15550009999")
    term.wait_for("you>")
    term.type("I'd like to book Tuesday at 10 under Kim Lo")
    screen = term.wait_for("[tool book_appointment(day='tuesday', time='10:00', name='Kim Lo')]")
    assert "booked for Tuesday at 10 AM, Kim Lo" in screen
    assert "ms ~ Let me check the calendar." in screen  # the interim line, with its time
    term.type("Can I talk to a person?")
    term.wait_for("[transfer to a person]")
    term.type("/sms")
    term.wait_for("sms>")
    term.type("when are you open?")
    term.wait_for("Saturday from 10 AM to 1 PM")
    term.type("/voice")
    term.type("bye")
    screen = term.wait_for("[the agent hung up]")
    assert "Thanks for calling. Goodbye! [hang up]" in screen


def test_end_sends_call_ended(terminal):
    term = terminal(f"{AGENTPHONE} call")
    term.wait_for("you>")
    term.type("/end")
    term.wait_for("[call ended: HTTP 200]")
