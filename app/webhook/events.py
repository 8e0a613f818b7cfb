"""Parsing a verified delivery body into an Event.

Pure and framework-free (the standard library only): every failure raises ``InvalidEvent``,
which the webhook answers as a 400 with its details.
"""

import hashlib
import json
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any, NoReturn

TEXT_CHANNELS = frozenset({"sms", "mms", "imessage", "whatsapp", "rcs"})
VOICE = "voice"
MESSAGE = "agent.message"
REACTION = "agent.reaction"
CALL_ENDED = "agent.call_ended"
KNOWN_EVENTS = frozenset({MESSAGE, REACTION, CALL_ENDED})
CHANNELS = TEXT_CHANNELS | {VOICE}


@dataclass(frozen=True)
class Event:
    """One webhook delivery: the envelope of contract 1.3 plus the raw decoded body."""

    event: str
    channel: str
    agent_id: str | None
    data: dict[str, Any]
    conversation_state: dict[str, Any] | None = None
    recent_history: list[dict[str, Any]] = field(default_factory=list)
    test: bool = False
    body: dict[str, Any] = field(default_factory=dict)


class InvalidEvent(ValueError):
    """A delivery body that cannot be processed: ``message`` says why, ``details`` lists
    each field's problem as ``{"field": ..., "message": ...}``."""

    def __init__(self, message: str, details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.details = list(details or [])


def _problem(name: str, message: str) -> dict[str, Any]:
    """One entry of ``InvalidEvent.details``."""
    return {"field": name, "message": message}


MAX_ID_LENGTH = 200
HASHED = "sha256:"


def delivery_id(header_value: str | None, body: bytes) -> str:
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


def parse(body: bytes) -> Event:
    """Decode and check a delivery body; raises InvalidEvent naming every problem.

    Everything a handler reads is checked here, before the delivery is acknowledged, so
    that an accepted delivery can always be processed: lone surrogates and NUL characters
    (which no store can hold) become U+FFFD, and a field of the wrong type or out of range is
    an InvalidEvent with ``details``.
    """
    try:
        doc = json.loads(body.decode("utf-8"), parse_constant=_not_json)
    except UnicodeDecodeError:
        raise InvalidEvent("Body is not valid UTF-8") from None
    except (ValueError, RecursionError) as exc:
        raise InvalidEvent("Body is not valid JSON", [_problem("body", str(exc)[:200])]) from None
    if not isinstance(doc, dict):
        raise InvalidEvent("Body must be a JSON object", [_problem("body", "expected an object")])
    if UNSTORABLE_ESCAPE.search(body):
        _replace_unstorable(doc)
    name = doc.get("event")
    if not isinstance(name, str) or not name:
        raise InvalidEvent("Missing event type", [_problem("event", "required string")])
    channel = doc.get("channel")
    data = doc.get("data")
    state = doc.get("conversationState")
    history = doc.get("recentHistory")
    if name in KNOWN_EVENTS:
        problems = []
        # Only a message's channel chooses what happens (contract D39).
        if name == MESSAGE and (not isinstance(channel, str) or not channel):
            problems.append(_problem("channel", "required string"))
        if not isinstance(data, dict):
            problems.append(_problem("data", "required object"))
        else:
            problems += _field_problems(DATA_FIELDS[name], data, "data.")
        problems += _field_problems(ENVELOPE_FIELDS, doc, "")
        if problems:
            raise InvalidEvent(f"Invalid {name} delivery", problems)
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


def _not_json(constant: str) -> NoReturn:
    raise ValueError(f"{constant} is not a JSON number")


# A lone surrogate or NUL can only arrive as a \u escape: raw UTF-8 cannot encode a
# surrogate, and JSON forbids raw control characters in strings.
UNSTORABLE_ESCAPE = re.compile(rb"\\u(?:[dD][89a-fA-F]|0000)")
UNSTORABLE = re.compile("[\ud800-\udfff\x00]")
REPLACEMENT = "\ufffd"


def _replace_unstorable(doc: dict[str, Any]) -> None:
    """Replace lone surrogates and NUL in every string and key of ``doc``, in place."""
    # A loop, not recursion: the document may be nested as deep as json allows.
    stack: list[Any] = [doc]
    while stack:
        node = stack.pop()
        items = list(node.items()) if isinstance(node, dict) else list(enumerate(node))
        for key, value in items:
            if isinstance(value, str):
                value = UNSTORABLE.sub(REPLACEMENT, value)
            elif isinstance(value, dict | list):
                stack.append(value)
            if isinstance(key, str) and UNSTORABLE.search(key):
                del node[key]
                key = UNSTORABLE.sub(REPLACEMENT, key)
            node[key] = value


MAX_DURATION = 2**53 - 1  # the largest whole number a float column holds exactly


def _duration(value: object) -> str | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return "must be a number"
    if not 0 <= value <= MAX_DURATION:  # also false for NaN; 1e400 is inf
        return f"must be from 0 to {MAX_DURATION}"
    return None


Check = Callable[[Any], str | None]  # a value's problem in words, or None


def _of_type(kind: type, name: str) -> Check:
    def check(value: object) -> str | None:
        return None if isinstance(value, kind) else f"must be {name}"
    return check


TEXT = _of_type(str, "a string")
OBJECT = _of_type(dict, "an object")
ARRAY = _of_type(list, "an array")
BOOLEAN = _of_type(bool, "true or false")

# The fields a handler (or the agent) reads; each may also be null or absent.
ENVELOPE_FIELDS = {"agentId": TEXT, "conversationState": OBJECT, "recentHistory": ARRAY}
_MESSAGE_TEXT = ("message", "transcript", "from", "to", "callId", "conversationId",
                 "messageId", "numberId", "direction")
DATA_FIELDS: dict[str, dict[str, Check]] = {
    MESSAGE: dict.fromkeys(_MESSAGE_TEXT, TEXT),
    REACTION: dict.fromkeys(("conversationId", "messageId", "reactionType", "fromNumber",
                             "from", "direction"), TEXT),
    CALL_ENDED: {
        **dict.fromkeys(("callId", "from", "to", "direction", "status", "startedAt",
                         "endedAt", "disconnectionReason", "summary", "userSentiment"), TEXT),
        "durationSeconds": _duration, "transcript": ARRAY, "callSuccessful": BOOLEAN,
    },
}


def _field_problems(checks: Mapping[str, Check], obj: Mapping[str, Any],
                    prefix: str) -> list[dict[str, Any]]:
    problems = []
    for name, check in checks.items():
        value = obj.get(name)
        if value is not None and (message := check(value)):
            problems.append(_problem(prefix + name, message))
    return problems
