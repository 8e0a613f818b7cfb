"""The agent interface: a parsed turn in, reply chunks out; hooks for the other events.

An agent's ``respond(turn)`` is a generator. Each ``str`` it yields is spoken at once as an
interim line; the ``Reply`` it yields last ends the turn (text plus optional hangup, transfer
or DTMF digits). The voice streamer owns the timing: interim-first, deadline, one final line.
``on_call_ended(record)`` and ``on_reaction(reaction)`` run in background jobs.
"""

import dataclasses
import logging
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Self

from app.webhook.events import VOICE, Event

if TYPE_CHECKING:
    from app.store.base import CallRecords, Reactions

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Turn:
    """What the agent needs to answer one caller utterance or one inbound text.

    ``text`` is the transcript or the message (empty when an MMS carries only media);
    ``channel`` is ``voice``, ``sms``, ``mms`` or ``imessage``; ``delivery_id`` is the same
    on a retried delivery, so key side effects by it. Texts also carry the platform's
    ``message_id`` and the attachments' ``media_urls`` (MMS, iMessage).
    """

    text: str
    channel: str
    caller: str | None = None
    callee: str | None = None
    call_id: str | None = None
    conversation_id: str | None = None
    agent_id: str | None = None
    delivery_id: str | None = None
    conversation_state: dict[str, Any] | None = None
    recent_history: list[Any] = field(default_factory=list)
    test: bool = False
    message_id: str | None = None
    media_urls: tuple[str, ...] = ()
    deadline: float | None = None  # time.monotonic() by which a voice turn's final line goes out

    @classmethod
    def from_event(cls, event: Event, delivery_id: str | None = None) -> Self:
        """The turn of a parsed ``agent.message`` delivery, keyed by ``delivery_id``."""
        data = event.data
        # A voice message carries the caller's words as a transcript, a text as a message.
        text = data.get("transcript") if event.channel == VOICE else data.get("message")
        return cls(
            text=text if isinstance(text, str) else "",
            channel=event.channel,
            caller=_str(data.get("from")),
            callee=_str(data.get("to")),
            call_id=_str(data.get("callId")),
            conversation_id=_str(data.get("conversationId")),
            agent_id=event.agent_id,
            delivery_id=delivery_id,
            conversation_state=event.conversation_state,
            recent_history=event.recent_history,
            test=event.test,
            message_id=_str(data.get("messageId")),
            media_urls=_media_urls(data.get("mediaUrls"), data.get("mediaUrl")),
        )

    @property
    def session_id(self) -> str | None:
        """What ties turns of one conversation together: the call, else the conversation,
        else the caller; scoped to the AgentPhone agent, so that agents behind one server
        never share memory."""
        base = self.call_id or self.conversation_id or self.caller
        return f"{self.agent_id}/{base}" if base and self.agent_id else base


TRANSFER = "transfer"


@dataclass(frozen=True)
class Reply:
    """The final chunk of a turn (contract 2.3): at most one of hangup / transfer (contract D15)."""

    text: str = ""
    hangup: bool = False
    action: str | None = None
    digits: str | None = None
    failed: bool = False  # a stand-in for an answer the agent could not give; never texted

    def __post_init__(self) -> None:
        if self.hangup and self.action:
            raise ValueError("a reply may hang up or transfer, not both")
        if self.action not in (None, TRANSFER):
            raise ValueError(f"unknown action {self.action!r}")

    def to_line(self) -> dict[str, Any]:
        """The final NDJSON object: ``text`` always present unless it is a pure action
        (contract D17)."""
        line: dict[str, Any] = (
            {"text": self.text} if self.text or not (self.hangup or self.action) else {})
        if self.hangup:
            line["hangup"] = True
        if self.action:
            line["action"] = self.action
        if self.digits:
            line["digits"] = self.digits
        return line


class Agent:
    """Base class for agents; subclasses implement `respond`."""

    acknowledgement = "One moment, please."
    #: Spoken in turn, one each time a voice turn stays silent for ``filler_after`` seconds.
    fillers = ("Still with you, just a moment.", "Thanks for waiting, I'm still on it.")
    #: Seconds of silence before a filler line; None: the VOICE_FILLER_AFTER setting; 0: never.
    filler_after: float | None = None

    def acknowledge(self, turn: Turn) -> str:
        """The interim line spoken while the agent works. Must return at once (no I/O)."""
        return self.acknowledgement

    def filler(self, turn: Turn, count: int) -> str | None:
        """The interim line spoken when the turn has said nothing for ``filler_after`` seconds.

        ``count`` is 1 for the turn's first filler, then 2, 3, ...; None says nothing this
        time. Must return at once (no I/O): it runs while the agent's own work is waiting.
        """
        return self.fillers[(count - 1) % len(self.fillers)] if self.fillers else None

    def respond(self, turn: Turn) -> Iterator[str | Reply]:
        """Yield ``str`` chunks to speak now, then one ``Reply`` that ends the turn.

        Subclasses must implement it; the base raises NotImplementedError.
        """
        raise NotImplementedError

    def observe_tools(self, callback: Callable[..., Any]) -> None:
        """Report every tool call this agent makes to ``callback(name, arguments, value,
        error, seconds)``: how the metrics, scenario runs and the ``phone`` test fixture
        see tool calls. (A call whose arguments do not fit the tool's signature raises
        TypeError before the tool runs, and is not reported.)

        Covers the agent's ``@tool`` methods and, when it has one, its ``toolbox``. An agent
        that calls tools some other way overrides this.
        """
        from app.agent.tools import Toolbox, observed, tools_of

        for t in tools_of(self):
            setattr(self, t._attr, observed(t, callback))
        box = getattr(self, "toolbox", None)
        if isinstance(box, Toolbox):
            box.tools = {name: observed(t, callback) for name, t in box.tools.items()}

    def on_call_ended(self, record: "CallRecord") -> None:
        """A call ended (``agent.call_ended``); runs in a background job.

        The default stores the ``CallRecord`` once per call id (``agentphone calls --local``
        lists them); call ``super().on_call_ended(record)`` from an override to keep that.
        Raise to have the job retried. A job may run more than once: key side effects by
        ``record.call_id``.
        """
        new = record.save()
        log.info("call %s: record %s", record.call_id, "stored" if new else "already stored")

    def on_reaction(self, reaction: "Reaction") -> None:
        """Someone reacted to a message (``agent.reaction``); runs in a background job.

        The default stores the ``Reaction`` once per delivery; nothing is sent back. Raise to
        have the job retried; key side effects by ``reaction.delivery_id``.
        """
        new = reaction.save()
        log.info("%s reaction on message %s %s", reaction.reaction_type, reaction.message_id,
                 "recorded" if new else "already recorded")


@dataclass(frozen=True)
class CallRecord:
    """A finished call as ``agent.call_ended`` reports it, given to ``Agent.on_call_ended``.

    ``transcript`` is the list of ``{"role", "content"}`` turns; ``store`` is the app's store.
    """

    call_id: str
    agent_id: str | None = None
    from_number: str | None = None
    to_number: str | None = None
    direction: str | None = None
    status: str | None = None
    started_at: str | None = None
    ended_at: str | None = None
    duration_seconds: float | None = None
    disconnection_reason: str | None = None
    transcript: list[dict[str, Any]] = field(default_factory=list)
    summary: str | None = None
    sentiment: str | None = None
    successful: bool | None = None
    delivery_id: str | None = None
    test: bool = False
    store: "CallRecords | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def from_event(cls, event: Event, delivery_id: str | None = None,
                   store: "CallRecords | None" = None) -> Self:
        """The record of a parsed ``agent.call_ended`` delivery that has a ``callId``.

        :raises KeyError: the event's data has no ``callId``.
        """
        data = event.data
        transcript = data.get("transcript")
        duration = data.get("durationSeconds")
        successful = data.get("callSuccessful")
        return cls(
            call_id=data["callId"],
            agent_id=event.agent_id,
            from_number=_str(data.get("from")),
            to_number=_str(data.get("to")),
            direction=_str(data.get("direction")),
            status=_str(data.get("status")),
            started_at=_str(data.get("startedAt")),
            ended_at=_str(data.get("endedAt")),
            duration_seconds=duration if isinstance(duration, int | float)
            and not isinstance(duration, bool) else None,
            disconnection_reason=_str(data.get("disconnectionReason")),
            transcript=[t for t in transcript if isinstance(t, dict)]
            if isinstance(transcript, list) else [],
            summary=_str(data.get("summary")),
            sentiment=_str(data.get("userSentiment")),
            successful=successful if isinstance(successful, bool) else None,
            delivery_id=delivery_id,
            test=event.test,
            store=store,
        )

    def save(self) -> bool:
        """Store the record unless this call's is stored already; True if it was new."""
        assert self.store is not None  # from_event is given the app's store
        return self.store.save_call_record(_fields(self), delivery_id=self.delivery_id)


@dataclass(frozen=True)
class Reaction:
    """A reaction to a message (``agent.reaction``), given to ``Agent.on_reaction``.

    ``message_id`` and ``message_body`` are those of the message reacted to; ``delivery_id``
    identifies the reaction itself; ``store`` is the app's store.
    """

    delivery_id: str
    reaction_type: str | None = None
    message_id: str | None = None
    message_body: str | None = None
    conversation_id: str | None = None
    from_number: str | None = None
    direction: str | None = None
    agent_id: str | None = None
    channel: str | None = None
    test: bool = False
    store: "Reactions | None" = field(default=None, repr=False, compare=False)

    @classmethod
    def from_event(cls, event: Event, delivery_id: str, store: "Reactions | None" = None) -> Self:
        """The reaction of a parsed ``agent.reaction`` delivery."""
        data = event.data
        return cls(
            delivery_id=delivery_id,
            reaction_type=_str(data.get("reactionType")),
            message_id=_str(data.get("messageId")),
            message_body=_str(data.get("messageBody")),
            conversation_id=_str(data.get("conversationId")),
            from_number=_str(data.get("fromNumber") or data.get("from")),
            direction=_str(data.get("direction")),
            agent_id=event.agent_id,
            channel=event.channel or None,
            test=event.test,
            store=store,
        )

    def save(self) -> bool:
        """Store the reaction unless this delivery's is stored already; True if it was new."""
        assert self.store is not None  # from_event is given the app's store
        return self.store.save_reaction(self.delivery_id, _fields(self))


def _fields(record: "CallRecord | Reaction") -> dict[str, Any]:
    return {f.name: getattr(record, f.name) for f in dataclasses.fields(record)
            if f.name != "store"}


def _str(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _media_urls(urls: object, url: object) -> tuple[str, ...]:
    """Every attachment URL once, in order: ``mediaUrls``, else the single ``mediaUrl``."""
    found = [u for u in urls if isinstance(u, str) and u] if isinstance(urls, list) else []
    if isinstance(url, str) and url and url not in found:
        found.insert(0, url)
    return tuple(dict.fromkeys(found))
