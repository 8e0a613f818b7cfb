"""Agents for real-server tests, loaded by gunicorn through AGENT=tests.agents:slow_agent.

The slow tool's latency comes from TEST_TOOL_SECONDS; each completed tool run appends the
delivery id to TEST_EFFECTS_FILE, so tests can count side effects across processes.
"""

import logging
import os
import time

from app.agent.base import Agent, Reply

log = logging.getLogger("tests.agents")


class SlowToolAgent(Agent):
    acknowledgement = "Checking."

    def __init__(self, seconds, effects_file):
        self.seconds = seconds
        self.effects_file = effects_file

    def tool(self, turn):
        log.info("test tool started for %s", turn.delivery_id)
        try:
            time.sleep(self.seconds)
        except BaseException:
            # GreenletExit when the streamer cancels the turn.
            log.info("test tool cancelled for %s", turn.delivery_id)
            raise
        with open(self.effects_file, "a") as f:
            f.write(f"{turn.delivery_id}\n")
        log.info("test tool finished for %s", turn.delivery_id)
        return "done"

    def respond(self, turn):
        yield "Still here."
        result = self.tool(turn)
        yield Reply(f"Tool said {result} for {turn.text}.")


def slow_agent(app):
    return SlowToolAgent(float(os.environ.get("TEST_TOOL_SECONDS", "1")),
                         os.environ["TEST_EFFECTS_FILE"])


class BusyAgent(Agent):
    """Computes without yielding for TEST_BUSY_SECONDS: the event loop is blocked meanwhile."""

    def __init__(self, seconds):
        self.seconds = seconds

    def respond(self, turn):
        yield Reply(f"Counted to {spin_without_yielding(self.seconds)}.")


def spin_without_yielding(seconds):
    until, count = time.monotonic() + seconds, 0
    while time.monotonic() < until:
        count += 1
    return count


def busy_agent(app):
    return BusyAgent(float(os.environ.get("TEST_BUSY_SECONDS", "0.5")))
