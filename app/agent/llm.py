"""An agent backed by any OpenAI-compatible Chat Completions endpoint.

Tokens are streamed; each sentence is spoken (as an interim chunk) as soon as it is
complete, and the last one goes into the final ``Reply``. When the model asks for tools,
all calls of a round run at the same time (``run_tools``), their results are fed back and
the model is asked again, for at most ``max_rounds`` rounds. Two built-in tools let the
model transfer the call or hang up. Any error ends the turn with a spoken apology.

The ``openai`` package (the ``llm`` extra) is imported only when the first request is made.
"""

import json
import logging
import time

from app.agent.base import TRANSFER, Agent, Reply
from app.agent.speech import SentenceStream
from app.agent.tools import Tool, Toolbox, ToolCall, run_tools

log = logging.getLogger(__name__)

DEFAULT_MODEL = "gpt-4o-mini"
DEFAULT_SYSTEM_PROMPT = (
    "You are the friendly receptionist of a small business, answering phone calls and text "
    "messages. Keep answers short: one to three plain sentences, no lists, no markdown, no "
    "emoji; they are read aloud on calls. Use the tools to check the calendar, book or cancel "
    "appointments, look up orders and customers; never invent their results. Ask one "
    "question at a time when details are missing. If the caller asks for a person, use "
    "transfer_call; when the caller is done, say goodbye and use end_call."
)
APOLOGY = "Sorry, I'm having trouble right now. Could you say that again in a moment?"
NOTHING_SAID = "Sorry, I didn't quite get that. Could you say it again?"
TOO_MANY_ROUNDS = "Sorry, I couldn't work that out. Could you put it another way?"
HISTORY_LIMIT = 20  # messages of this call kept for the next turn


def _transfer_call(reason: str | None = None) -> str:
    """Transfer the caller to a human member of staff.

    Args:
        reason: Why the caller wants a person, in a few words.
    """
    return "transferring"


def _end_call() -> str:
    """End the call after saying goodbye."""
    return "ending"


TRANSFER_TOOL = Tool(_transfer_call, name="transfer_call")
END_CALL_TOOL = Tool(_end_call, name="end_call")
CONTROL_DEFAULTS = {"transfer_call": "Let me connect you with our team.",
                    "end_call": "Goodbye!"}


class LLMAgent(Agent):
    """``tools``: Tools (or plain functions) the model may call. ``store``: where this call's
    earlier turns are kept (optional). ``client``: an OpenAI-compatible client to use instead
    of building one from ``base_url``/``api_key``."""

    acknowledgement = "One moment."

    def __init__(self, model=DEFAULT_MODEL, *, base_url=None, api_key=None, system_prompt=None,
                 tools=(), store=None, max_rounds=4, timeout=20.0, tool_timeout=None,
                 call_control=True, client=None, extra_params=None):
        self.model = model
        self.base_url = base_url
        self.api_key = api_key
        self.system_prompt = system_prompt or DEFAULT_SYSTEM_PROMPT
        self.toolbox = tools if isinstance(tools, Toolbox) else Toolbox(tools)
        if call_control:
            for control in (TRANSFER_TOOL, END_CALL_TOOL):
                if control.name not in self.toolbox:
                    self.toolbox.add(control)
        self.store = store
        self.max_rounds = max_rounds
        self.timeout = timeout
        self.tool_timeout = tool_timeout
        self.extra_params = dict(extra_params or {})
        self._client = client
        if client is None:
            _import_openai()  # at start-up: fail fast, and spare the first caller the import


    @classmethod
    def from_config(cls, config, tools=(), store=None):
        """Built from the LLM_* settings of a Flask config."""
        return cls(
            config.get("LLM_MODEL") or DEFAULT_MODEL,
            base_url=config.get("LLM_BASE_URL"),
            api_key=config.get("LLM_API_KEY"),
            system_prompt=config.get("LLM_SYSTEM_PROMPT"),
            tools=tools,
            store=store,
            max_rounds=config.get("LLM_MAX_ROUNDS") or 4,
            timeout=config.get("LLM_TIMEOUT") or 20.0,
            tool_timeout=config.get("LLM_TOOL_TIMEOUT"),
        )

    @property
    def client(self):
        if self._client is None:
            self._client = _import_openai().OpenAI(
                base_url=self.base_url, api_key=self.api_key or "not-needed",
                timeout=self.timeout, max_retries=0,
            )
        return self._client

    # -- the conversation -------------------------------------------------------------------

    def system_message(self, turn):
        lines = [self.system_prompt]
        channel = "a phone call" if turn.channel == "voice" else f"a {turn.channel} text"
        lines.append(f"This is {channel}" + (f" from {turn.caller}." if turn.caller else "."))
        if turn.conversation_state:
            lines.append("What we know about this conversation: "
                         + json.dumps(turn.conversation_state, default=str))
        return {"role": "system", "content": "\n".join(lines)}

    def messages_for(self, turn, earlier=()):
        """System prompt, the platform's recent history, this call's earlier turns (those
        the history does not already hold), then the new utterance."""
        messages = [self.system_message(turn)]
        seen = set()
        for item in turn.recent_history:
            content = item.get("content")
            if not isinstance(content, str) or not content.strip():
                continue
            role = "assistant" if item.get("direction") == "outbound" else "user"
            messages.append({"role": role, "content": content})
            seen.add((role, content.strip()))
        messages += [m for m in earlier if (m["role"], m["content"].strip()) not in seen]
        if messages[-1] != {"role": "user", "content": turn.text}:
            messages.append({"role": "user", "content": turn.text})
        return messages

    def respond(self, turn):
        key = turn.session_id if self.store is not None else None
        state = self.store.session_state(key) if key else {}
        earlier = state.get("llm_history", [])
        messages = self.messages_for(turn, earlier)
        spoken = []
        try:
            reply = yield from self._converse(turn, messages, spoken)
        except Exception:
            log.exception("LLM turn %s failed", turn.delivery_id)
            reply = Reply(APOLOGY)
        if key and reply.text != APOLOGY:
            said = " ".join([*spoken, reply.text]).strip()
            history = [*earlier, {"role": "user", "content": turn.text}]
            if said:
                history.append({"role": "assistant", "content": said})
            try:
                state["llm_history"] = history[-HISTORY_LIMIT:]
                self.store.save_session_state(key, state)
            except Exception:
                log.exception("LLM turn %s: could not save the call's history", turn.delivery_id)
        yield reply

    def _converse(self, turn, messages, spoken):
        for round_number in range(1, self.max_rounds + 1):
            started = time.monotonic()
            sentences = SentenceStream()
            text, calls = [], {}
            for piece in self._stream(messages):
                if isinstance(piece, str):
                    text.append(piece)
                    for sentence in sentences.feed(piece):
                        spoken.append(sentence)
                        yield sentence
                else:
                    _merge_tool_delta(calls, piece)
            rest = sentences.flush()
            log.info("LLM round %d for %s: %.0f ms, %d tool call(s)", round_number,
                     turn.delivery_id, (time.monotonic() - started) * 1000, len(calls))
            if not calls:
                return Reply(rest or ("" if spoken else NOTHING_SAID))
            requested = [ToolCall(c["name"], c["arguments"] or "{}", c["id"] or f"call_{i}")
                         for i, c in sorted(calls.items())]
            control = next((c.name for c in requested if c.name in CONTROL_DEFAULTS), None)
            if control is not None:
                final = rest or CONTROL_DEFAULTS[control]
                if control == "transfer_call" and turn.channel == "voice":
                    return Reply(final, action=TRANSFER)
                return Reply(final, hangup=turn.channel == "voice")
            if rest:
                spoken.append(rest)
                yield rest
            messages.append({
                "role": "assistant",
                "content": "".join(text) or None,
                "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in requested
                ],
            })
            results = run_tools(requested, self.toolbox, turn=turn, timeout=self.tool_timeout)
            for result in results:
                messages.append({"role": "tool", "tool_call_id": result.call.id,
                                 "content": result.content()})
        log.warning("LLM turn %s: no answer after %d rounds", turn.delivery_id, self.max_rounds)
        return Reply(TOO_MANY_ROUNDS)

    def _stream(self, messages):
        """Content strings and tool-call deltas of one streamed completion."""
        params = {"model": self.model, "messages": messages, "stream": True,
                  **self.extra_params}
        if len(self.toolbox):
            params["tools"] = self.toolbox.specs()
        response = self.client.chat.completions.create(**params)
        try:
            for chunk in response:
                for choice in chunk.choices or ():
                    delta = choice.delta
                    if delta is None:
                        continue
                    if delta.content:
                        yield delta.content
                    yield from delta.tool_calls or ()
        finally:
            close = getattr(response, "close", None)
            if close is not None:
                close()


def _import_openai():
    try:
        import openai  # the optional `llm` extra
    except ImportError as exc:
        raise ImportError("the LLM agent needs the openai package: pip install -e '.[llm]'"
                          ) from exc
    return openai


def _merge_tool_delta(calls, delta):
    """Tool calls arrive in pieces keyed by ``index``: id and name once, arguments in
    fragments."""
    slot = calls.setdefault(delta.index or 0, {"id": None, "name": "", "arguments": ""})
    if delta.id:
        slot["id"] = delta.id
    function = delta.function
    if function is not None:
        if function.name:
            slot["name"] += function.name
        if function.arguments:
            slot["arguments"] += function.arguments

