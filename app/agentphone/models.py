"""Typed API results: dataclasses built leniently from JSON, the raw dict kept in `raw`.

Each field reads the first key present among its aliases (default: camelCase, then
snake_case of the field name), so extra keys are ignored and known spellings of the same
value are accepted (contract D30: fromNumber/from/from_, toNumber/to).
"""

from dataclasses import MISSING, dataclass, field, fields


def _camel(name):
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


def alias(*keys, convert=None, default=None, list_of=None):
    """A model field read from `keys` (in order), optionally converted."""
    if list_of is not None:
        return field(default_factory=list,
                     metadata={"keys": keys, "convert": lambda v: _list_of(list_of, v)})
    return field(default=default, metadata={"keys": keys, "convert": convert})


def _list_of(model, value):
    return [model.from_dict(item) for item in value or [] if isinstance(item, dict)]


class Model:
    """Base of every result type: `from_dict` never fails on missing or extra keys."""

    @classmethod
    def from_dict(cls, data):
        data = data if isinstance(data, dict) else {}
        values = {}
        for f in fields(cls):
            if f.name == "raw":
                continue
            keys = f.metadata.get("keys") or (_camel(f.name), f.name)
            key = next((k for k in keys if k in data), None)
            if key is None:
                continue  # the dataclass default applies
            convert = f.metadata.get("convert")
            values[f.name] = convert(data[key]) if convert else data[key]
        return cls(raw=data, **values)


def _model(cls):
    """dataclass() with every field optional and a trailing `raw` dict."""
    for name in cls.__annotations__:
        if getattr(cls, name, MISSING) is MISSING:
            setattr(cls, name, None)
    cls.__annotations__["raw"] = dict
    cls.raw = field(default_factory=dict, repr=False)
    return dataclass(cls)


FROM_KEYS = ("fromNumber", "from", "from_", "from_number")
TO_KEYS = ("toNumber", "to", "to_", "to_number")


@_model
class TranscriptEntry(Model):
    id: str
    transcript: str
    response: str
    confidence: float
    created_at: str


@_model
class Call(Model):
    id: str
    agent_id: str
    phone_number_id: str
    phone_number: str
    from_number: str = alias(*FROM_KEYS)
    to_number: str = alias(*TO_KEYS)
    direction: str
    status: str
    started_at: str
    ended_at: str
    duration_seconds: int
    last_transcript_snippet: str
    recording_url: str
    recording_available: bool
    transcripts: list = alias("transcripts", list_of=TranscriptEntry)

    @property
    def is_terminal(self):
        """contract D36: completed, failed, or any status once `endedAt` is set."""
        return self.status in ("completed", "failed") or self.ended_at is not None


@_model
class Message(Model):
    """A message in a list, or the result of sending one (snake_case keys there)."""

    id: str
    body: str
    from_number: str = alias(*FROM_KEYS)
    to_number: str = alias(*TO_KEYS)
    direction: str
    channel: str
    status: str
    received_at: str
    conversation_id: str
    media_urls: list
    reply_to_message_id: str


@_model
class Conversation(Model):
    id: str
    agent_id: str
    phone_number_id: str
    phone_number: str
    participant: str
    last_message_at: str
    last_message_preview: str
    message_count: int
    metadata: dict
    created_at: str
    messages: list = alias("messages", list_of=Message)


@_model
class Reaction(Model):
    id: str
    reaction_type: str
    message_id: str
    channel: str


@_model
class Webhook(Model):
    id: str
    url: str
    secret: str
    status: str
    context_limit: int
    timeout: int
    created_at: str


@_model
class WebhookDelivery(Model):
    id: str
    message_id: str
    event_type: str
    channel: str
    status: str
    http_status: int
    error_message: str
    response_body: str
    attempt_count: int
    last_attempt_at: str
    next_retry_at: str
    created_at: str


@_model
class DeliveryStats(Model):
    total: int
    success: int
    failed: int
    pending: int
    success_rate: float
    by_event_type: dict
    by_hour: list


@_model
class WebhookTestResult(Model):
    """contract D23: the docs say httpStatus/errorMessage, the official MCP statusCode/error."""

    success: bool
    http_status: int = alias("httpStatus", "statusCode", "http_status", "status_code")
    error_message: str = alias("errorMessage", "error", "error_message")
    response_ms: float


@_model
class Agent(Model):
    id: str
    name: str
    description: str
    voice_mode: str
    created_at: str


@_model
class PhoneNumber(Model):
    id: str
    phone_number: str
    country: str
    status: str
    agent_id: str
    created_at: str


@_model
class StreamConnected(Model):
    """SSE `connected`: the call as the stream saw it when it opened."""

    call_id: str
    status: str
    agent_id: str
    agent_name: str
    direction: str
    from_number: str = alias(*FROM_KEYS)
    to_number: str = alias(*TO_KEYS)
    started_at: str


@_model
class TranscriptTurn(Model):
    """SSE `turn`: one utterance, `role` "user" or "agent"."""

    role: str
    content: str
    created_at: str

    @property
    def key(self):
        """Identity across reconnects (contract D27): the server replays every turn on connect."""
        return (self.created_at, self.role, self.content)


@_model
class StreamEnded(Model):
    """SSE `ended`: the call is over and the server closes the stream."""

    call_id: str
    status: str
    ended_at: str
    duration_seconds: int


@_model
class Contact(Model):
    id: str
    phone_number: str
    name: str
    email: str
    created_at: str
