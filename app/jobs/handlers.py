"""What each background job does. A handler gets the parsed delivery, the job and its
JobContext, and raises to ask for a retry; app/registry.py says which handler runs for what.

Replies to texts are sent at most once per message. An outbox row keyed by the message id
(else the delivery id) is written as ``sending`` before ``POST /v1/messages`` and set to
``sent`` after it. A retried job (a crash, a lost lease, a later failure) finds the row and
does not send again:

* ``sent``: done before;
* ``sending``: the previous attempt died between the two writes, so the text may or may
  not have gone out; ``unknown``: the request failed after it may have reached the API
  (a read timeout, a dropped connection, a 5xx other than 503). Both are skipped and
  logged: a rare lost reply is better than a duplicate text, and the API has no
  idempotency key that would let us ask;
* ``failed``: the API answered with a rejection (4xx, 503) or the connection was never
  made, so nothing went out; the job raises and the next attempt sends.

Replies left ``sending`` or ``unknown`` are listed by ``jobs --unsure`` and counted by
``unsure_reply_count``; after checking with the recipient or the API's message list, an
operator can send one again with ``jobs resend JOB_ID`` (the row becomes ``resend``, the job
sends the stored text once more, through the outbox as ever).
"""

import logging
from collections.abc import Callable
from dataclasses import dataclass

from app.agent.base import Agent, CallRecord, Reaction, Reply, Turn
from app.agentphone import AgentPhoneClient, AgentPhoneError, APIConnectionError
from app.store import Store
from app.store.records import RESENDABLE

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class JobContext:
    """What a handler works with, given with each job: handlers look nothing up themselves.

    ``api`` opens an AgentPhone API client; ``send_replies`` is False when no API key is
    configured (a reply is then logged, not sent). ``max_attempts`` is the runner's limit and
    ``failure_reply`` says whether a text the agent could not answer gets the apology.
    """

    store: Store
    agent: Agent
    api: Callable[[], AgentPhoneClient]
    send_replies: bool
    max_attempts: int
    failure_reply: bool


TEXT_FAILURE_MESSAGE = "Sorry, we couldn't answer just now, we'll get back to you."


class AgentFailed(Exception):
    """The agent could not answer a text (its final ``Reply`` is marked ``failed``)."""


def collect_text(agent, turn):
    """The agent's whole answer as one text message; raises AgentFailed when the agent
    gave a stand-in instead (a voice apology is never sent as a text)."""
    parts = []
    for chunk in agent.respond(turn):
        if isinstance(chunk, Reply) and chunk.failed:
            raise AgentFailed(f"the agent could not answer delivery {turn.delivery_id}")
        text = chunk.text if isinstance(chunk, Reply) else chunk
        if text and text.strip():
            parts.append(text.strip())
        if isinstance(chunk, Reply):
            break
    return " ".join(parts)


def answer_text(turn, job, context):
    """The reply to send: the agent's answer; when the agent fails, raise so that the job is
    retried, and on the last attempt the short written apology (or None, by
    TEXT_FAILURE_REPLY)."""
    try:
        return collect_text(context.agent, turn)
    except Exception as exc:
        if job.attempts < context.max_attempts:
            raise
        if not context.failure_reply:
            log.error("job %s: the agent failed on the last attempt, nothing sent to %s: %s",
                      job.id, turn.caller, exc)
            return None
        log.error("job %s: the agent failed on the last attempt, sending the written apology "
                  "to %s: %s", job.id, turn.caller, exc)
        return TEXT_FAILURE_MESSAGE


def text_message(event, job, context):
    """``agent.message`` on a text channel: the agent's answer to an inbound text, sent at
    most once (see the module docstring). Returns what it did, for the job's log line."""
    if event.data.get("direction") != "inbound":
        return f"{event.channel} message is not inbound, no reply"
    store = context.store
    key = reply_key(event, job)
    earlier = store.outbox_entry(key)
    if earlier is not None and earlier["status"] not in RESENDABLE:
        log.warning("job %s: reply for delivery %s already %s, not sending again", job.id, key,
                    earlier["status"])
        return
    turn = Turn.from_event(event, job.delivery_id)
    if earlier is not None and earlier["status"] == "resend":
        log.warning("job %s: resending the reply for delivery %s to %s, as an operator asked",
                    job.id, key, turn.caller)
        return send_once(context, key, event, turn, earlier["body"], job)
    reply = answer_text(turn, job, context)
    if not reply:
        return f"the agent had nothing to say to {turn.caller}"
    # Message bodies only at DEBUG: INFO lines may reach a shared log pipeline.
    log.debug("job %s: reply %r", job.id, reply)
    if turn.test:
        return f"test delivery, reply not sent to {turn.caller}"
    if not turn.caller:
        log.warning("job %s: no sender number, reply not sent", job.id)
        return
    if not context.send_replies:
        return f"AGENTPHONE_API_KEY not set, reply to {turn.caller} on {event.channel} not sent"
    return send_once(context, key, event, turn, reply, job)


def reply_key(event, job):
    """What one reply is sent for: the platform's message id when it gives one (the same
    message delivered under two delivery ids is answered once, D37), else the delivery."""
    message_id = event.data.get("messageId")
    if isinstance(message_id, str) and message_id:
        return f"message:{message_id}"
    return job.delivery_id or f"job:{job.id}"


def send_once(context, key, event, turn, reply, job):
    """POST /v1/messages for this delivery unless the outbox says it may have gone already."""
    store = context.store
    status, send_now = store.outbox_begin(key, turn.caller, reply, job_id=job.id)
    if not send_now:
        log.warning("job %s: reply for delivery %s is %s, not sending again", job.id, key,
                    status)
        return
    try:
        with context.api() as client:
            message = client.send_message(
                agent_id=turn.agent_id, to_number=turn.caller, body=reply,
                number_id=event.data.get("numberId") or None,
            )
    except APIConnectionError as exc:
        if not exc.request_sent:
            store.outbox_finish(key, "failed", error=str(exc)[:500])
            raise
        store.outbox_finish(key, "unknown", error=str(exc)[:500])
        log.error("job %s: sending the reply to %s may or may not have worked, not retrying: "
                  "%s", job.id, turn.caller, exc)
        return
    except AgentPhoneError as exc:
        if exc.status is not None and 200 <= exc.status < 300:
            store.outbox_finish(key, "sent", error=str(exc)[:500])
            log.warning("job %s: reply sent to %s, unreadable answer: %s", job.id, turn.caller,
                        exc)
            return
        if exc.status is not None and (exc.status < 500 or exc.status == 503):
            store.outbox_finish(key, "failed", error=str(exc)[:500])
            raise
        store.outbox_finish(key, "unknown", error=str(exc)[:500])
        log.error("job %s: the API failed while sending to %s, not retrying: %s", job.id,
                  turn.caller, exc)
        return
    store.outbox_finish(key, "sent", message_id=message.id)
    return f"reply {message.id} sent to {turn.caller} on {message.channel or event.channel}"


def reaction(event, job, context):
    """``agent.reaction``: the agent's ``on_reaction`` hook (by default, the reaction is stored)."""
    reaction = Reaction.from_event(event, job.delivery_id or f"job:{job.id}", context.store)
    context.agent.on_reaction(reaction)
    return f"{reaction.reaction_type} reaction on message {reaction.message_id}"


def call_ended(event, job, context):
    """``agent.call_ended``: the agent's ``on_call_ended`` hook (by default, the record is
    stored)."""
    data = event.data
    if not isinstance(data.get("callId"), str) or not data["callId"]:
        log.warning("job %s: call_ended without a callId, not stored", job.id)
        return
    record = CallRecord.from_event(event, job.delivery_id, context.store)
    context.agent.on_call_ended(record)
    return (f"call {record.call_id} ended after {record.duration_seconds}s "
            f"({record.disconnection_reason})")
