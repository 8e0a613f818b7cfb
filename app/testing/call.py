"""A conversation with a running webhook, driven the way the platform drives it.

Each caller turn is a signed delivery: voice turns are ``agent.message`` deliveries on the
``voice`` channel with one call id and the growing ``recentHistory``; texts are the same on
``sms``; ``end()`` sends ``agent.call_ended`` with the whole transcript. Voice replies are read
line by line as they arrive, each with its time since the request was sent.
"""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import requests

from app import simulator

VOICE = "voice"
TEXT_CHANNELS = ("sms", "mms", "imessage")


@dataclass(frozen=True)
class Line:
    """One NDJSON line of a voice reply and when it arrived."""

    data: dict
    ms: float

    @property
    def text(self) -> str:
        return self.data.get("text") or ""

    @property
    def interim(self) -> bool:
        return bool(self.data.get("interim"))


@dataclass(frozen=True)
class ToolUse:
    """A tool call the agent made while answering a turn."""

    name: str
    arguments: dict
    value: Any = None
    error: str | None = None


@dataclass
class Answer:
    """What the caller got back for one turn.

    ``lines`` are the voice reply's NDJSON lines in order (a text reply is one line);
    ``final`` is the line that ended the turn (``None`` when none came); ``first_line_ms``
    and ``final_ms`` time them from the moment the delivery was sent; ``tool_calls`` are
    the tools the agent called, when the server runs in this process.
    """

    said: str
    channel: str
    delivery_id: str
    status: int
    lines: list[Line] = field(default_factory=list)
    tool_calls: list[ToolUse] = field(default_factory=list)
    error: str | None = None

    @property
    def final(self) -> dict | None:
        last = self.lines[-1] if self.lines else None
        return last.data if last is not None and not last.interim else None

    @property
    def text(self) -> str:
        """The final line's text."""
        return (self.final or {}).get("text") or ""

    @property
    def spoken(self) -> str:
        """Everything the caller heard in this turn, interim lines included."""
        return " ".join(line.text for line in self.lines if line.text)

    @property
    def first_line_ms(self) -> float | None:
        return self.lines[0].ms if self.lines else None

    @property
    def final_ms(self) -> float | None:
        return self.lines[-1].ms if self.final is not None else None

    @property
    def action(self) -> str | None:
        """``transfer``, ``hangup``, ``digits`` or ``None``: what the final line asks for."""
        final = self.final or {}
        if final.get("action") == "transfer":
            return "transfer"
        if final.get("hangup") or final.get("action") == "hangup":
            return "hangup"
        if final.get("digits") or final.get("press_digit") or final.get("dtmf"):
            return "digits"
        return None

    @property
    def digits(self) -> str | None:
        final = self.final or {}
        return final.get("digits") or final.get("press_digit") or final.get("dtmf")


class Call:
    """One caller's conversation with the webhook at ``url``.

    ``tool_log`` (a list the local server appends ``ToolUse`` to) and ``outbox`` (a
    callable returning the text replies sent for a conversation, newest last) are how turns
    see tool calls and text replies; with a remote server they are ``None``.
    """

    def __init__(self, url: str, secret: str, *, channel: str = VOICE,
                 caller: str = "+15559876543", callee: str = "+15551234567",
                 agent_id: str = "agt_demo", call_id: str | None = None,
                 clock: Callable[[], float] | None = None, tool_log: list | None = None,
                 outbox: Callable[[str], list[str]] | None = None, reply_timeout: float = 150.0,
                 on_line: Callable[[Line], None] | None = None):
        self.url = url
        self.secret = secret
        self.channel = channel
        self.caller = caller
        self.callee = callee
        self.agent_id = agent_id
        self.call_id = call_id or f"call_{uuid.uuid4().hex[:12]}"
        self.conversation_id = f"conv_{uuid.uuid4().hex[:12]}"
        self.clock = clock or time.time
        self.history: list[dict] = []
        self.transcript: list[dict] = []
        self.answers: list[Answer] = []
        self.tool_log = tool_log
        self.outbox = outbox
        self.reply_timeout = reply_timeout
        self.on_line = on_line  # told of each line as it arrives (the interactive call)
        self.session = requests.Session()
        self.server: Any = None  # the LocalServer, when the call is to one (its store, app)
        self._last: tuple[str, dict] | None = None

    def say(self, text: str, channel: str | None = None) -> Answer:
        """Send what the caller says (or texts, on a text channel) and return the answer."""
        channel = channel or self.channel
        body = self._body(channel, text)
        return self._send(text, channel, body, f"whd_{uuid.uuid4().hex}")

    def retry(self) -> Answer:
        """Deliver the previous turn again under the same ``X-Webhook-ID``, like the
        platform's retry of a delivery it thinks failed."""
        if self._last is None:
            raise RuntimeError("no turn to retry yet")
        delivery_id, body = self._last
        channel = body["channel"]
        said = body["data"].get("transcript") or body["data"].get("message") or ""
        return self._send(said, channel, body, delivery_id, record=False)

    def end(self) -> int:
        """Send ``agent.call_ended`` with the transcript so far; returns the HTTP status."""
        body = simulator.payload("call_ended", callId=self.call_id, **{
            "from": self.caller, "to": self.callee, "transcript": list(self.transcript),
        })
        body["agentId"] = self.agent_id
        body["timestamp"] = _iso(self.clock())
        raw, headers = simulator.signed_request(self.secret, body, timestamp=self._header_time())
        response = self.session.post(self.url, data=raw, headers=headers, timeout=30)
        return response.status_code

    def close(self) -> None:
        self.session.close()

    def __enter__(self) -> Call:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- the wire ------------------------------------------------------------------------------

    def _body(self, channel: str, text: str) -> dict:
        voice = channel == VOICE
        if voice:
            body = simulator.payload("voice", text, callId=self.call_id)
        else:
            body = simulator.payload("sms", text, conversationId=self.conversation_id,
                                     messageId=f"msg_{uuid.uuid4().hex[:12]}")
            body["channel"] = channel
        body["data"].update({"from": self.caller, "to": self.callee})
        body["agentId"] = self.agent_id
        body["timestamp"] = _iso(self.clock())
        body["recentHistory"] = [dict(item) for item in self.history[-10:]]
        return body

    def _header_time(self) -> int | None:
        # The signature's timestamp must be the server's "now": only a local server shares
        # the scenario's clock.
        return int(self.clock()) if self.tool_log is not None else None

    def _send(self, said: str, channel: str, body: dict, delivery_id: str,
              record: bool = True) -> Answer:
        self._last = (delivery_id, body)
        tools_before = len(self.tool_log) if self.tool_log is not None else 0
        replies_before = len(self.outbox(self.conversation_id)) if self.outbox else 0
        raw, headers = simulator.signed_request(self.secret, body, delivery_id,
                                                self._header_time())
        answer = Answer(said=said, channel=channel, delivery_id=delivery_id, status=0)
        started = time.monotonic()
        try:
            with self.session.post(self.url, data=raw, headers=headers, stream=True,
                                   timeout=(5, self.reply_timeout)) as response:
                answer.status = response.status_code
                if channel == VOICE:
                    for raw_line in simulator.iter_ndjson(response):
                        ms = (time.monotonic() - started) * 1000
                        self._arrived(answer, Line(_json(raw_line), ms))
                else:
                    response.content  # noqa: B018 - the acknowledgement, read to the end
        except requests.RequestException as exc:
            answer.error = f"could not reach {self.url}: {exc}"
        if channel != VOICE and answer.status == 200 and self.outbox is not None:
            self._await_text_reply(answer, started, replies_before)
        if self.tool_log is not None:
            answer.tool_calls = list(self.tool_log[tools_before:])
        if record:
            self._remember(said, channel, answer)
        self.answers.append(answer)
        return answer

    def _await_text_reply(self, answer: Answer, started: float, before: int) -> None:
        assert self.outbox is not None  # only called with an outbox
        deadline = started + self.reply_timeout
        while time.monotonic() < deadline:
            sent = self.outbox(self.conversation_id)
            if len(sent) > before:
                ms = (time.monotonic() - started) * 1000
                self._arrived(answer, Line({"text": sent[-1]}, ms))
                return
            time.sleep(0.02)
        answer.error = f"no text reply within {self.reply_timeout:g} s"

    def _arrived(self, answer: Answer, line: Line) -> None:
        answer.lines.append(line)
        if self.on_line is not None:
            self.on_line(line)

    def _remember(self, said: str, channel: str, answer: Answer) -> None:
        now = _iso(self.clock())
        self.history.append({"content": said, "direction": "inbound", "channel": channel,
                             "at": now})
        self.transcript.append({"role": "user", "content": said})
        if answer.spoken:
            self.history.append({"content": answer.spoken, "direction": "outbound",
                                 "channel": channel, "at": now})
            self.transcript.append({"role": "agent", "content": answer.spoken})


def _json(raw_line: bytes) -> dict:
    try:
        value = json.loads(raw_line)
    except ValueError:
        return {"text": raw_line.decode("utf-8", "replace"), "invalid": True}
    return value if isinstance(value, dict) else {"text": str(value), "invalid": True}


def _iso(seconds: float) -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(seconds))
