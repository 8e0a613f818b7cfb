"""A minimal built-in agent with one slow tool: the default until a real agent is configured."""

import logging
import time

from app.agent.base import TRANSFER, Agent, Reply

log = logging.getLogger(__name__)


class DemoAgent(Agent):
    acknowledgement = "Let me check on that for you."

    def __init__(self, tool_latency=0.5):
        self.tool_latency = tool_latency

    def lookup_order(self, caller):
        """The slow tool: stands in for an upstream order system."""
        time.sleep(self.tool_latency)
        log.info("demo tool lookup_order finished for %s", caller)
        return {"order": "4521", "status": "shipped yesterday"}

    def respond(self, turn):
        text = turn.text.lower()
        if "bye" in text:
            yield Reply("Thanks for calling. Goodbye!", hangup=True)
            return
        if "human" in text or "person" in text:
            yield Reply("Let me connect you with our team.", action=TRANSFER)
            return
        order = self.lookup_order(turn.caller)
        yield f"I found order {order['order']}."
        yield Reply(f"It {order['status']}. Anything else I can help with?")
