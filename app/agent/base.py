"""The agent interface: a parsed turn in, reply chunks out.

An agent's ``respond(turn)`` is a generator. Each ``str`` it yields is spoken at once as an
interim line; the ``Reply`` it yields last ends the turn (text plus optional hangup, transfer
or DTMF digits). The voice streamer owns the timing: interim-first, deadline, one final line.
"""

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Turn:
    """What the agent needs to answer one caller utterance or one inbound text."""

    text: str
    channel: str
    caller: str | None = None
    callee: str | None = None
    call_id: str | None = None
    conversation_id: str | None = None
    agent_id: str | None = None
    delivery_id: str | None = None
    conversation_state: dict | None = None
    recent_history: list = field(default_factory=list)
    test: bool = False

    @classmethod
    def from_event(cls, event, delivery_id=None):
        data = event.data
        text = data.get("transcript") if event.is_voice_turn else data.get("message")
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
        )

    @property
    def session_id(self):
        """What ties turns of one conversation together: the call, else the conversation,
        else the caller; scoped to the AgentPhone agent, so that agents behind one server
        never share memory."""
        base = self.call_id or self.conversation_id or self.caller
        return f"{self.agent_id}/{base}" if base and self.agent_id else base


TRANSFER = "transfer"


@dataclass(frozen=True)
class Reply:
    """The final chunk of a turn (SPEC 2.3): at most one of hangup / transfer (Q15)."""

    text: str = ""
    hangup: bool = False
    action: str | None = None
    digits: str | None = None

    def __post_init__(self):
        if self.hangup and self.action:
            raise ValueError("a reply may hang up or transfer, not both")
        if self.action not in (None, TRANSFER):
            raise ValueError(f"unknown action {self.action!r}")

    def to_line(self):
        """The final NDJSON object: ``text`` always present unless it is a pure action (Q17)."""
        line = {"text": self.text} if self.text or not (self.hangup or self.action) else {}
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
    filler_after = None

    def acknowledge(self, turn):
        """The interim line spoken while the agent works. Must return at once (no I/O)."""
        return self.acknowledgement

    def filler(self, turn, count):
        """The interim line spoken when the turn has said nothing for ``filler_after`` seconds.

        ``count`` is 1 for the turn's first filler, then 2, 3, ...; None says nothing this
        time. Must return at once (no I/O): it runs while the agent's own work is waiting.
        """
        return self.fillers[(count - 1) % len(self.fillers)] if self.fillers else None

    def respond(self, turn):
        """Yield ``str`` chunks to speak now, then one ``Reply`` that ends the turn."""
        raise NotImplementedError

    def observe_tools(self, callback):
        """Report every tool call this agent makes to ``callback(name, arguments, value,
        error, seconds)``: how the metrics, scenario runs and the ``phone`` test fixture
        see tool calls.

        Covers the agent's ``@tool`` methods and, when it has one, its ``toolbox``. An agent
        that calls tools some other way overrides this.
        """
        from app.agent.tools import Toolbox, observed, tools_of

        for t in tools_of(self):
            setattr(self, t._attr, observed(t, callback))
        box = getattr(self, "toolbox", None)
        if isinstance(box, Toolbox):
            box.tools = {name: observed(t, callback) for name, t in box.tools.items()}


def _str(value):
    return value if isinstance(value, str) else None
