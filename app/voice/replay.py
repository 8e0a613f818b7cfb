"""Answering a retried voice delivery without running the turn twice."""

import time

from app.agent.base import Agent, Reply

POLL_SECONDS = 0.1


def reply_from_line(obj):
    return Reply(
        text=obj.get("text", ""), hangup=bool(obj.get("hangup")),
        action=obj.get("action"), digits=obj.get("digits"),
    )


class ReplayAgent(Agent):
    """Waits for the first attempt's final line to land in the store and repeats it; the
    streamer's deadline sends the fallback if it never does."""

    def __init__(self, store, delivery_id, wait):
        self.store = store
        self.delivery_id = delivery_id
        self.wait = wait

    def respond(self, turn):
        # Bounded by `wait` too: a thread (dev server) cannot be killed at the deadline.
        until = time.monotonic() + self.wait
        while time.monotonic() < until:
            stored = self.store.voice_reply(self.delivery_id)
            if stored is not None:
                yield reply_from_line(stored)
                return
            time.sleep(POLL_SECONDS)
