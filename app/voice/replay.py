"""Answering a retried voice delivery without running the turn twice, unless the first
attempt's worker died."""

import logging
import time
from typing import TYPE_CHECKING, Any

from app.agent.base import Agent, Reply

if TYPE_CHECKING:
    from app.voice.claims import VoiceClaims

log = logging.getLogger(__name__)

POLL_SECONDS = 0.1


def reply_from_line(obj):
    return Reply(
        text=obj.get("text", ""), hangup=bool(obj.get("hangup")),
        action=obj.get("action"), digits=obj.get("digits"),
    )


class ReplayAgent(Agent):
    """Waits for the attempt holding the claim to store its final line and repeats it. If
    that attempt's heartbeat stops (its worker died), takes the claim over and runs ``agent``
    itself. The streamer's deadline sends the fallback if neither happens in time."""

    def __init__(self, claims: "VoiceClaims", agent: Agent, delivery_id: str,
                 wait: float) -> None:
        self.claims = claims
        self.agent = agent
        self.delivery_id = delivery_id
        self.wait = wait
        self.claim = None

    def acknowledge(self, turn):
        return self.agent.acknowledge(turn)

    def respond(self, turn):
        # Bounded by `wait` too: a thread (dev server) cannot be killed at the deadline.
        until = time.monotonic() + self.wait
        while time.monotonic() < until:
            stored, stale = self.claims.state(self.delivery_id)
            if stored is not None:
                yield reply_from_line(stored)
                return
            if stale and (claim := self.claims.take_over(self.delivery_id)) is not None:
                self.claim = claim
                log.warning("voice turn %s: the attempt holding it stopped (its worker died), "
                            "running it again", self.delivery_id)
                yield from self.agent.respond(turn)
                return
            time.sleep(POLL_SECONDS)

    def finish(self, final_line: dict[str, Any]) -> None:
        """The streamer's ``on_final``: stored only when this attempt took the claim over."""
        if self.claim is not None:
            self.claim(final_line)
