"""What each background job does. A handler gets the job and raises to ask for a retry."""

import logging

from flask import current_app

from app.agent.base import Reply, Turn
from app.webhook import events

log = logging.getLogger(__name__)


def collect_text(agent, turn):
    """The agent's whole answer as one text message."""
    parts = []
    for chunk in agent.respond(turn):
        text = chunk.text if isinstance(chunk, Reply) else chunk
        if text and text.strip():
            parts.append(text.strip())
        if isinstance(chunk, Reply):
            break
    return " ".join(parts)


def text_message(job):
    event = events.parse(job.payload.encode("utf-8"))
    if event.data.get("direction") != "inbound":
        log.info("job %s: %s message is not inbound, no reply", job.id, event.channel)
        return
    turn = Turn.from_event(event, job.delivery_id)
    reply = collect_text(current_app.extensions["agent"], turn)
    log.info("job %s: reply to %s on %s: %r", job.id, turn.caller, event.channel, reply)


def reaction(job):
    event = events.parse(job.payload.encode("utf-8"))
    log.info("job %s: %s reaction on message %s", job.id, event.data.get("reactionType"),
             event.data.get("messageId"))


def call_ended(job):
    event = events.parse(job.payload.encode("utf-8"))
    data = event.data
    log.info("job %s: call %s ended after %ss (%s)", job.id, data.get("callId"),
             data.get("durationSeconds"), data.get("disconnectionReason"))


HANDLERS = {"text_message": text_message, "reaction": reaction, "call_ended": call_ended}
