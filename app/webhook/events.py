"""Parsing a verified delivery body into an Event (pure; every failure is a 400 with details)."""

import hashlib
import json
from dataclasses import dataclass, field

from app.errors import BadRequest, field_error

TEXT_CHANNELS = frozenset({"sms", "mms", "imessage", "whatsapp", "rcs"})
VOICE = "voice"
MESSAGE = "agent.message"
REACTION = "agent.reaction"
CALL_ENDED = "agent.call_ended"
KNOWN_EVENTS = frozenset({MESSAGE, REACTION, CALL_ENDED})


@dataclass(frozen=True)
class Event:
    """One webhook delivery: the envelope of SPEC 1.3 plus the raw decoded body."""

    event: str
    channel: str
    agent_id: str | None
    data: dict
    conversation_state: dict | None = None
    recent_history: list = field(default_factory=list)
    test: bool = False
    body: dict = field(default_factory=dict)

    @property
    def known(self):
        return self.event in KNOWN_EVENTS

    @property
    def is_voice_turn(self):
        return self.event == MESSAGE and self.channel == VOICE

    @property
    def job_kind(self):
        """The background job this event becomes, or None for voice turns and unknown events."""
        if self.event == MESSAGE and self.channel != VOICE:
            return "text_message"
        if self.event == REACTION:
            return "reaction"
        if self.event == CALL_ENDED:
            return "call_ended"
        return None


MAX_ID_LENGTH = 200
HASHED = "sha256:"


def delivery_id(header_value, body):
    """The idempotency key: X-Webhook-ID, else a hash of the signed body.

    An id kept verbatim is short printable ASCII; any other id (too long for the key columns,
    control characters, or one that looks like a hash) is stored as ``sha256:id:<hex>`` of
    the whole id, so distinct ids never share a key. A body hash is ``sha256:<hex>``.
    """
    value = (header_value or "").strip()
    if not value:
        return HASHED + hashlib.sha256(body).hexdigest()
    if (len(value) <= MAX_ID_LENGTH and value.isascii() and value.isprintable()
            and not value.startswith(HASHED)):
        return value
    digest = hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()
    return f"{HASHED}id:{digest}"


def parse(body):
    """Decode a delivery body; raises BadRequest naming the problem."""
    try:
        doc = json.loads(body.decode("utf-8"))
    except UnicodeDecodeError:
        raise BadRequest("Body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise BadRequest("Body is not valid JSON", [field_error("body", str(exc)[:200])]) from None
    if not isinstance(doc, dict):
        raise BadRequest("Body must be a JSON object", [field_error("body", "expected an object")])
    name = doc.get("event")
    if not isinstance(name, str) or not name:
        raise BadRequest("Missing event type", [field_error("event", "required string")])
    channel = doc.get("channel")
    data = doc.get("data")
    state = doc.get("conversationState")
    history = doc.get("recentHistory")
    if name in KNOWN_EVENTS:
        problems = []
        if not isinstance(channel, str) or not channel:
            problems.append(field_error("channel", "required string"))
        if not isinstance(data, dict):
            problems.append(field_error("data", "required object"))
        if problems:
            raise BadRequest(f"Invalid {name} delivery", problems)
    agent_id = doc.get("agentId")
    return Event(
        event=name,
        channel=channel if isinstance(channel, str) else "",
        agent_id=agent_id if isinstance(agent_id, str) else None,
        data=data if isinstance(data, dict) else {},
        conversation_state=state if isinstance(state, dict) else None,
        recent_history=[h for h in history if isinstance(h, dict)]
        if isinstance(history, list) else [],
        test=doc.get("test") is True,
        body=doc,
    )
