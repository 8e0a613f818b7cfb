"""`agentphone top` in a real terminal (tmux) beside a running gunicorn: the figures change in
place as deliveries arrive, and Ctrl-C leaves cleanly."""

import re
import shlex
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from app.simulator import payload, signed_request
from tests.servers import ROOT

pytestmark = pytest.mark.slow

AGENTPHONE = Path(sys.executable).with_name("agentphone")  # the console script


class Tmux:
    """One tmux server of its own (``-L``), so the test never touches anyone else's."""

    def __init__(self):
        self.socket = f"top-test-{uuid.uuid4().hex[:8]}"

    def __call__(self, *args):
        return subprocess.run(["tmux", "-L", self.socket, *args], capture_output=True,
                              text=True, check=True).stdout

    def screen(self):
        return self("capture-pane", "-p", "-t", "top")

    def wait_for(self, check, what, timeout=20.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            screen = self.screen()
            if check(screen):
                return screen
            time.sleep(0.2)
        raise AssertionError(f"not on screen within {timeout:.0f} s: {what}\n{screen}")


@pytest.fixture
def tmux():
    terminal = Tmux()
    yield terminal
    subprocess.run(["tmux", "-L", terminal.socket, "kill-server"], capture_output=True,
                   check=False)


def figure(screen, label):
    match = re.search(rf"^\s*{label}\s+(.+?)\s*$", screen, re.MULTILINE)
    assert match, f"{label!r} not on screen:\n{screen}"
    return match.group(1)


def test_top_refreshes_in_place_and_leaves_on_ctrl_c(gunicorn, secret, effects_agent, tmux,
                                                     tmp_path):
    server = gunicorn(workers=1, DEMO_TOOL_LATENCY=0.05, VOICE_TIMEOUT=60,
                      TEST_TOOL_SECONDS=120, AGENTS="agt_slow=tests.agents:slow_agent",
                      TEST_EFFECTS_FILE=effects_agent.env["TEST_EFFECTS_FILE"])
    env = {"DATABASE_URL": "sqlite:///" + str(tmp_path / "events.db"), "LOG_LEVEL": "WARNING"}
    command = (f"cd {shlex.quote(str(ROOT))} && {shlex.quote(str(AGENTPHONE))} top "
               "--interval 0.5; echo \"top exited with $?\"; sleep 60")
    tmux("new-session", "-d", "-s", "top", "-x", "100", "-y", "30",
         *[arg for k, v in env.items() for arg in ("-e", f"{k}={v}")], command)
    screen = tmux.wait_for(lambda s: "deliveries per minute" in s, "the first frame")
    assert figure(screen, "deliveries per minute") == "0.0"
    assert figure(screen, "voice turns in flight") == "0"

    for n in range(5):
        raw, headers = signed_request(secret, payload("sms", f"hello {n}"))
        assert requests.post(server.webhook, data=raw, headers=headers,
                             timeout=10).status_code == 200
    screen = tmux.wait_for(lambda s: figure(s, "deliveries per minute") == "1.0",
                           "five deliveries in five minutes")
    assert figure(screen, "store") == "ok"

    body = payload("voice", "hold on", callId="call_top")
    body["agentId"] = "agt_slow"
    raw, headers = signed_request(secret, body)
    with requests.post(server.webhook, data=raw, headers=headers, stream=True,
                       timeout=30) as held:
        lines = held.iter_lines()
        next(lines)
        screen = tmux.wait_for(lambda s: figure(s, "voice turns in flight") == "1",
                               "the held turn")
        assert re.search(r"^\s+\d+\.\d s\s+call_top\s+hold on\s*$", screen, re.MULTILINE)
    screen = tmux.wait_for(lambda s: figure(s, "voice turns in flight") == "0",
                           "the hung-up turn leaves")
    # Refreshed in place: one frame on the screen, never a scrolling history of frames.
    assert screen.count("agentphone top") == 1 and screen.count("deliveries per minute") == 1
    assert figure(screen, "deliveries per minute") == "1.2"

    tmux("send-keys", "-t", "top", "C-c")
    screen = tmux.wait_for(lambda s: "top exited with" in s, "top leaving on Ctrl-C")
    assert "top exited with 0" in screen
    assert "Traceback" not in screen and "KeyboardInterrupt" not in screen
