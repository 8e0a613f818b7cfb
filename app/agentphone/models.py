"""Typed API results: dataclasses built leniently from JSON, the raw dict kept in `raw`.

Each field reads the first key present among its aliases (default: camelCase, then
snake_case of the field name), so extra keys are ignored and known spellings of the same
value are accepted (contract D30: fromNumber/from/from_, toNumber/to). Every field is
optional: one the body does not carry is None (an empty list for lists).
"""

from collections.abc import Callable
from dataclasses import dataclass, field, fields
from typing import Any, Self, TypeVar


def _camel(name: str) -> str:
    first, *rest = name.split("_")
    return first + "".join(word.title() for word in rest)


def alias(*keys: str, convert: Callable[[Any], Any] | None = None, default: Any = None,
          list_of: "type[Model] | None" = None) -> Any:
    """A model field read from the first of `keys` present, optionally converted.

    :param keys: JSON keys to try, in order.
    :param convert: applied to the value found.
    :param default: the value when no key is present.
    :param list_of: a model class: the field is a list of it (empty when absent), built
        from the dict items of the value.
    :return: a dataclass field.
    """
    if list_of is not None:
        model = list_of
        return field(default_factory=list,
                     metadata={"keys": keys, "convert": lambda v: _list_of(model, v)})
    return field(default=default, metadata={"keys": keys, "convert": convert})


M = TypeVar("M", bound="Model")


def _list_of(model: type[M], value: Any) -> list[M]:
    return [model.from_dict(item) for item in value or [] if isinstance(item, dict)]


@dataclass
class Model:
    """Base of every result type: `from_dict` never fails on missing or extra keys.

    `raw` is the JSON object the model was built from (keyword-only, not in the repr).
    """

    raw: dict[str, Any] = field(default_factory=dict, repr=False, kw_only=True)

    @classmethod
    def from_dict(cls, data: Any) -> Self:
        """The model read from a decoded JSON object; anything but a dict reads as ``{}``."""
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


FROM_KEYS = ("fromNumber", "from", "from_", "from_number")
TO_KEYS = ("toNumber", "to", "to_", "to_number")


@dataclass
class TranscriptEntry(Model):
    """One exchange of a call's stored transcript: what the caller said and the reply."""

    id: str | None = None
    transcript: str | None = None
    response: str | None = None
    confidence: float | None = None
    created_at: str | None = None


@dataclass
class Call(Model):
    """A phone call; `transcripts` is filled by `get_call` (partial while the call is live)."""

    id: str | None = None
    agent_id: str | None = None
    phone_number_id: str | None = None
    phone_number: str | None = None
    from_number: str | None = alias(*FROM_KEYS)
    to_number: str | None = alias(*TO_KEYS)
    direction: str | None = None
    status: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_seconds: int | None = None
    last_transcript_snippet: str | None = None
    recording_url: str | None = None
    recording_available: bool | None = None
    transcripts: list[TranscriptEntry] = alias("transcripts", list_of=TranscriptEntry)

    @property
    def is_terminal(self) -> bool:
        """Whether the call is over: completed, failed, or any status once `endedAt` is set
        (contract D36)."""
        return self.status in ("completed", "failed") or self.ended_at is not None


@dataclass
class Message(Model):
    """A message in a list, or the result of sending one (snake_case keys there)."""

    id: str | None = None
    body: str | None = None
    from_number: str | None = alias(*FROM_KEYS)
    to_number: str | None = alias(*TO_KEYS)
    direction: str | None = None
    channel: str | None = None
    status: str | None = None
    received_at: str | None = None
    conversation_id: str | None = None
    media_urls: list[str] | None = None
    reply_to_message_id: str | None = None


@dataclass
class Conversation(Model):
    """An SMS/iMessage thread between a number and one participant (or a group)."""

    id: str | None = None
    agent_id: str | None = None
    phone_number_id: str | None = None
    phone_number: str | None = None
    participant: str | None = None
    last_message_at: str | None = None
    last_message_preview: str | None = None
    message_count: int | None = None
    metadata: dict[str, Any] | None = None
    created_at: str | None = None
    messages: list[Message] = alias("messages", list_of=Message)


@dataclass
class Reaction(Model):
    """An iMessage tapback sent on a message."""

    id: str | None = None
    reaction_type: str | None = None
    message_id: str | None = None
    channel: str | None = None


@dataclass
class Webhook(Model):
    """A webhook endpoint and its signing `secret` (a new one each time it is set)."""

    id: str | None = None
    url: str | None = None
    secret: str | None = None
    status: str | None = None
    context_limit: int | None = None
    timeout: int | None = None
    created_at: str | None = None


@dataclass
class WebhookDelivery(Model):
    """One entry of the delivery log: an event sent to a webhook and how it went."""

    id: str | None = None
    message_id: str | None = None
    event_type: str | None = None
    channel: str | None = None
    status: str | None = None
    http_status: int | None = None
    error_message: str | None = None
    response_body: str | None = None
    attempt_count: int | None = None
    last_attempt_at: str | None = None
    next_retry_at: str | None = None
    created_at: str | None = None


@dataclass
class DeliveryStats(Model):
    """Delivery log totals over a time window, by event type and by hour."""

    total: int | None = None
    success: int | None = None
    failed: int | None = None
    pending: int | None = None
    success_rate: float | None = None
    by_event_type: dict[str, Any] | None = None
    by_hour: list[Any] | None = None


@dataclass
class WebhookTestResult(Model):
    """contract D23: the docs say httpStatus/errorMessage, the official MCP statusCode/error."""

    success: bool | None = None
    http_status: int | None = alias("httpStatus", "statusCode", "http_status", "status_code")
    error_message: str | None = alias("errorMessage", "error", "error_message")
    response_ms: float | None = None


@dataclass
class Agent(Model):
    """An AI agent configured on AgentPhone."""

    id: str | None = None
    name: str | None = None
    description: str | None = None
    voice_mode: str | None = None
    created_at: str | None = None


@dataclass
class PhoneNumber(Model):
    """A phone number of the project, possibly attached to an agent."""

    id: str | None = None
    phone_number: str | None = None
    country: str | None = None
    status: str | None = None
    agent_id: str | None = None
    created_at: str | None = None


@dataclass
class StreamConnected(Model):
    """SSE `connected`: the call as the stream saw it when it opened."""

    call_id: str | None = None
    status: str | None = None
    agent_id: str | None = None
    agent_name: str | None = None
    direction: str | None = None
    from_number: str | None = alias(*FROM_KEYS)
    to_number: str | None = alias(*TO_KEYS)
    started_at: str | None = None


@dataclass
class TranscriptTurn(Model):
    """SSE `turn`: one utterance, `role` "user" or "agent"."""

    role: str | None = None
    content: str | None = None
    created_at: str | None = None

    @property
    def key(self) -> tuple[str | None, str | None, str | None]:
        """Identity across reconnects (contract D27): the server replays every turn on connect."""
        return (self.created_at, self.role, self.content)


@dataclass
class StreamEnded(Model):
    """SSE `ended`: the call is over and the server closes the stream."""

    call_id: str | None = None
    status: str | None = None
    ended_at: str | None = None
    duration_seconds: int | None = None


@dataclass
class Contact(Model):
    """A contact in the project's address book."""

    id: str | None = None
    phone_number: str | None = None
    name: str | None = None
    email: str | None = None
    created_at: str | None = None
