"""An agent backed by any OpenAI-compatible Chat Completions endpoint.

Tokens are streamed; each sentence is spoken (as an interim chunk) as soon as it is
complete, and the last one goes into the final ``Reply``. When the model asks for tools,
all calls of a round run at the same time (``run_tools``), their results are fed back and
the model is asked again, for at most ``max_rounds`` rounds. Two built-in tools let the
model transfer the call or hang up.

An answer the server did not finish (no ``finish_reason``, ``length``, an error event, an
empty body, a broken connection, a 5xx) is a failure, never an answer: it is logged as a
WARNING, retried once while nothing has been spoken and time is left, and otherwise ends
the turn with an honest apology (``Reply.failed``). The caller is asked to repeat only when
the model finished without saying anything.

The ``openai`` package (the ``llm`` extra) is imported only when the first request is made.
"""

import json
import logging
import time

from app.agent.base import TRANSFER, Agent, Reply
from app.agent.speech import SentenceStream
from app.agent.tools import Tool, Toolbox, ToolCall, run_tools
from app.config import default

log = logging.getLogger(__name__)

# The settings table's defaults, for an agent built without a config.
DEFAULT_MODEL = default("LLM_MODEL")
DEFAULT_MAX_TOKENS = default("LLM_MAX_TOKENS")
DEFAULT_MAX_ROUNDS = default("LLM_MAX_ROUNDS")
DEFAULT_TIMEOUT = default("LLM_TIMEOUT")
DEFAULT_TOOL_TIMEOUT = default("LLM_TOOL_TIMEOUT")
DEFAULT_STREAM_TOOLS = default("LLM_STREAM_TOOLS")
DEFAULT_SYSTEM_PROMPT = (
    "You are the friendly receptionist of a small business, answering phone calls and text "
    "messages. Keep answers short: one to three plain sentences, no lists, no markdown, no "
    "emoji; they are read aloud on calls. Use the tools to check the calendar, book or cancel "
    "appointments, look up orders and customers; never invent their results. Ask one "
    "question at a time when details are missing. If the caller asks for a person, use "
    "transfer_call; when the caller is done, say goodbye and use end_call."
)
APOLOGY = "Sorry, I'm having trouble right now. Could you say that again in a moment?"
CUT_OFF = "Sorry, my answer got cut off on my side. Could you ask me that again?"
NOTHING_SAID = "Sorry, I didn't quite get that. Could you say it again?"
TOO_MANY_ROUNDS = "Sorry, I couldn't work that out. Could you put it another way?"
HISTORY_LIMIT = 20  # messages of this call kept for the next turn
RETRY_MIN_SECONDS = 3.0  # a retry needs at least this much of the voice deadline left
MALFORMED = (AttributeError, TypeError, KeyError)  # what reading JSON of an unexpected shape raises
TOOL_CHOICES = ("auto", "required", "none")


class ModelError(Exception):
    """The model server gave no complete answer; the message says how. ``retry``: whether
    asking again may help (not for a 4xx or an answer cut at ``max_tokens``)."""

    def __init__(self, reason, retry=True):
        super().__init__(reason)
        self.retry = retry


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
    earlier turns are kept (optional). ``client``: an ``openai.OpenAI`` (or ``AzureOpenAI``)
    instance to use instead of building one from ``base_url``/``api_key``; requests go
    through its ``post``, not ``chat.completions.create``.

    Server compatibility: ``tool_choice`` (``auto``, ``required``: first round only, ``none``;
    None: not sent), ``max_tokens`` (0 or None: not sent), ``extra_body`` (merged into every
    request body) and ``stream_tools`` (False: rounds that offer tools are not streamed; when
    such a round brings neither tool calls nor text, the answer is asked for again, streamed
    and without tools)."""

    acknowledgement = "One moment."

    def __init__(self, model=DEFAULT_MODEL, *, base_url=None, api_key=None, system_prompt=None,
                 tools=(), store=None, max_rounds=DEFAULT_MAX_ROUNDS, timeout=DEFAULT_TIMEOUT,
                 tool_timeout=DEFAULT_TOOL_TIMEOUT, call_control=True, client=None,
                 tool_choice=None, max_tokens=DEFAULT_MAX_TOKENS, extra_body=None,
                 stream_tools=DEFAULT_STREAM_TOOLS):
        if tool_choice not in (None, *TOOL_CHOICES):
            raise ValueError(f"tool_choice must be one of {TOOL_CHOICES} or None")
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
        self.tool_choice = tool_choice
        self.max_tokens = max_tokens
        self.extra_body = dict(extra_body or {})
        self.stream_tools = stream_tools
        self._client = client
        if client is None:
            _import_openai()  # at start-up: fail fast, and spare the first caller the import

    @classmethod
    def from_config(cls, config, tools=(), store=None):
        """Built from the LLM_* settings of a Flask config; the settings table's default for
        any it lacks."""
        def setting(key):
            return config[key] if key in config else default(key)

        return cls(
            setting("LLM_MODEL"),
            base_url=setting("LLM_BASE_URL"),
            api_key=setting("LLM_API_KEY"),
            system_prompt=setting("LLM_SYSTEM_PROMPT"),
            tools=tools,
            store=store,
            max_rounds=setting("LLM_MAX_ROUNDS"),
            timeout=setting("LLM_TIMEOUT"),
            tool_timeout=setting("LLM_TOOL_TIMEOUT"),
            tool_choice=setting("LLM_TOOL_CHOICE"),
            max_tokens=setting("LLM_MAX_TOKENS"),
            extra_body=setting("LLM_EXTRA_BODY"),
            stream_tools=setting("LLM_STREAM_TOOLS"),
        )

    @property
    def client(self):
        if self._client is None:
            self._client = _import_openai().OpenAI(
                base_url=self.base_url, api_key=self.api_key or "not-needed",
                timeout=self.timeout, max_retries=0,
            )
        return self._client

    @property
    def server(self):
        """Which model on which server, for log lines."""
        return f"model {self.model} at {self.base_url or 'the default endpoint'}"

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
        spoken = []  # sentences handed to the caller so far
        try:
            reply = yield from self._converse(turn, messages, spoken)
        except ModelError:
            reply = Reply(CUT_OFF if spoken else APOLOGY, failed=True)
        except Exception:
            log.exception("LLM turn %s failed (%s)", turn.delivery_id, self.server)
            reply = Reply(CUT_OFF if spoken else APOLOGY, failed=True)
        except BaseException:
            # The deadline or a hang-up stopped the turn: keep what the caller did hear.
            self._remember(key, state, turn, spoken)
            raise
        if not (reply.failed and turn.channel != "voice"):  # a failed text is never sent
            self._remember(key, state, turn, [*spoken, reply.text])
        yield reply

    def _remember(self, key, state, turn, said):
        """Save this turn (what the caller said, what they heard) for the call's next turn."""
        if not key:
            return
        heard = " ".join(s for s in said if s).strip()
        history = [*state.get("llm_history", []), {"role": "user", "content": turn.text}]
        if heard:
            history.append({"role": "assistant", "content": heard})
        try:
            state["llm_history"] = history[-HISTORY_LIMIT:]
            self.store.save_session_state(key, state)
        except Exception:
            log.exception("LLM turn %s: could not save the call's history", turn.delivery_id)

    def _converse(self, turn, messages, spoken):
        offer_tools = len(self.toolbox) > 0
        for number in range(1, self.max_rounds + 1):
            text, calls, rest = yield from self._attempt(
                turn, messages, number, offer_tools, self.stream_tools or not offer_tools,
                spoken)
            if offer_tools and not self.stream_tools and not calls and not text.strip():
                # Declined the tools without an answer (llama-cpp-python's "message:" choice):
                # ask for the answer itself, streamed.
                text, calls, rest = yield from self._attempt(turn, messages, number, False,
                                                             True, spoken)
            if not calls:
                if not (rest or spoken):
                    log.warning("LLM turn %s: the model finished without saying anything "
                                "speakable (%d characters, %s)", turn.delivery_id, len(text),
                                self.server)
                return Reply(rest or ("" if spoken else NOTHING_SAID))
            control = next((c.name for c in calls if c.name in CONTROL_DEFAULTS), None)
            if control is not None:
                final = rest or CONTROL_DEFAULTS[control]
                if control == "transfer_call" and turn.channel == "voice":
                    return Reply(final, action=TRANSFER)
                return Reply(final, hangup=turn.channel == "voice")
            if rest:
                spoken.append(rest)
                yield rest
            for call in calls:
                if call.name not in self.toolbox:
                    log.warning("LLM turn %s: the model asked for an unknown tool %r (%s)",
                                turn.delivery_id, call.name, self.server)
            messages.append({
                "role": "assistant",
                "content": text,  # "" rather than null: some servers reject null
                "tool_calls": [
                    {"id": c.id, "type": "function",
                     "function": {"name": c.name, "arguments": c.arguments}}
                    for c in calls
                ],
            })
            results = run_tools(calls, self.toolbox, turn=turn, timeout=self.tool_timeout)
            for result in results:
                messages.append({"role": "tool", "tool_call_id": result.call.id,
                                 "content": result.content()})
        log.warning("LLM turn %s: no answer after %d rounds", turn.delivery_id, self.max_rounds)
        return Reply(TOO_MANY_ROUNDS)

    def _attempt(self, turn, messages, number, offer_tools, stream, spoken):
        """One round, asked again once when it fails before anything was spoken and the
        deadline leaves time for it."""
        for attempt in (1, 2):
            started = time.monotonic()
            try:
                text, calls, rest = yield from self._round(messages, number, offer_tools,
                                                           stream, spoken)
            except ModelError as exc:
                again = (attempt == 1 and exc.retry and not spoken
                         and _time_left(turn) > RETRY_MIN_SECONDS)
                log.warning("LLM turn %s: round %d failed after %.0f ms, %s (%s); %s",
                            turn.delivery_id, number, (time.monotonic() - started) * 1000,
                            exc, self.server, "asking again" if again else "giving up")
                if not again:
                    raise
                continue
            log.info("LLM round %d for %s: %.0f ms, %s, %d tool call(s)", number,
                     turn.delivery_id, (time.monotonic() - started) * 1000,
                     "streamed" if stream else "not streamed", len(calls))
            return text, calls, rest
        raise AssertionError("unreachable")

    def _round(self, messages, number, offer_tools, stream, spoken):
        """One model call. Yields each sentence as soon as it is complete (and adds it to
        ``spoken``); returns the whole text, the tool calls and the unspoken rest."""
        params = {"model": self.model, "messages": messages}
        if self.max_tokens:
            params["max_tokens"] = self.max_tokens
        if offer_tools:
            params["tools"] = self.toolbox.specs()
            choice = self.tool_choice
            if choice == "required" and number > 1:
                choice = "auto"  # the tools' results are in: let the model answer
            if choice:
                params["tool_choice"] = choice
        openai = _import_openai()
        sentences = SentenceStream()
        text, calls = [], []
        try:
            pieces = self._stream(params, calls) if stream else self._complete(params, calls)
            for piece in pieces:
                text.append(piece)
                for sentence in sentences.feed(piece):
                    spoken.append(sentence)
                    yield sentence
        except openai.APIStatusError as exc:
            raise ModelError(f"HTTP {exc.status_code}: {_error_message(exc)}",
                             retry=exc.status_code >= 500 or exc.status_code == 429) from exc
        except openai.APIConnectionError as exc:
            raise ModelError(f"connection failed: {exc.__cause__ or exc}") from exc
        except openai.APIError as exc:
            raise ModelError(f"error event in the stream: {_error_message(exc)}") from exc
        return "".join(text), calls, sentences.flush()

    def _stream(self, params, calls):
        """Content strings of one streamed completion; its tool calls go into ``calls``."""
        response = self._post(params, stream=True)
        parts, chunks, finish = {}, 0, None
        try:
            for chunk in response:
                chunks += 1
                try:
                    content, finish = _read_chunk(chunk, parts, finish)
                except MALFORMED as exc:
                    raise ModelError(f"malformed chunk in the stream: {str(chunk)[:200]}"
                                     ) from exc
                yield from content
        finally:
            response.close()
        if not chunks:
            raise ModelError("empty body: the stream ended before any chunk")
        _check_finish(finish)
        calls += [ToolCall(p["name"], p["arguments"] or "{}", p["id"] or f"call_{i}")
                  for i, p in sorted(parts.items())]

    def _complete(self, params, calls):
        """The content of one completion that is not streamed; its tool calls go into
        ``calls``."""
        response = self._post(params, stream=False)
        choices = response.get("choices") if isinstance(response, dict) else None
        if not choices:
            raise ModelError("empty body: no choices in the answer")
        try:
            choice = choices[0]
            finish = choice.get("finish_reason")
            message = choice.get("message") or {}
            found = [ToolCall(c["function"]["name"], c["function"].get("arguments") or "{}",
                              c.get("id") or f"call_{i}")
                     for i, c in enumerate(message.get("tool_calls") or ())]
            content = message.get("content")
        except MALFORMED as exc:
            raise ModelError(f"malformed answer: {str(response)[:200]}") from exc
        _check_finish(finish)
        calls += found
        if content:
            yield content

    def _post(self, params, stream):
        """POST the chat completion through the client, its body as it is and the answer as
        plain JSON: the typed request and chunk models cost ~3 ms per request (with a few
        tools and messages) and ~0.4 ms per streamed token, time the event loop is not
        serving other calls."""
        openai = _import_openai()
        body = {**params, **self.extra_body, "stream": stream}
        if stream:
            return self.client.post("/chat/completions", body=body, cast_to=object, stream=True,
                                    stream_cls=openai.Stream[object])
        return self.client.post("/chat/completions", body=body, cast_to=object)


def _read_chunk(chunk, parts, finish):
    """The content strings of one streamed chunk and the finish reason so far; its tool-call
    pieces are merged into ``parts``."""
    content = []
    for choice in chunk.get("choices") or ():
        finish = choice.get("finish_reason") or finish
        delta = choice.get("delta")
        if not delta:
            continue
        if delta.get("content"):
            content.append(delta["content"])
        for tool_delta in delta.get("tool_calls") or ():
            _merge_tool_delta(parts, tool_delta)
    return content, finish


def _time_left(turn):
    """Seconds until the voice deadline (unbounded for texts)."""
    return float("inf") if turn.deadline is None else turn.deadline - time.monotonic()


def _check_finish(reason):
    """Raise ModelError unless ``reason`` says the model finished its answer."""
    if reason is None:
        raise ModelError("the answer ended without a finish_reason (cut short by the server)")
    if reason == "length":
        raise ModelError("the answer was cut at max_tokens (finish_reason length)", retry=False)
    if reason == "content_filter":
        raise ModelError("the answer was withheld (finish_reason content_filter)", retry=False)


def _error_message(exc):
    body = getattr(exc, "body", None)
    if isinstance(body, dict):
        error = body.get("error", body)
        message = error.get("message") if isinstance(error, dict) else error
        if message:
            return str(message)[:300]
    return str(exc)[:300]


def _import_openai():
    try:
        import openai  # the optional `llm` extra
    except ImportError as exc:
        raise ImportError("the LLM agent needs the openai package: pip install -e '.[llm]'"
                          ) from exc
    return openai


def _merge_tool_delta(calls, delta):
    """Tool calls arrive in pieces keyed by ``index``: id and name once, arguments in
    fragments. Some servers repeat the id and the whole name in every piece, or send each
    call whole under one index: a repeated name is kept, a longer one that starts with it
    replaces it, anything else is a fragment; a new id under a used index is a new call."""
    index = delta.get("index") or 0
    slot = calls.get(index)
    call_id = delta.get("id")
    if slot is not None and call_id and slot["id"] and call_id != slot["id"]:
        index = max(calls) + 1
        slot = None
    if slot is None:
        slot = calls[index] = {"id": None, "name": "", "arguments": ""}
    if call_id:
        slot["id"] = call_id
    function = delta.get("function")
    if not function:
        return
    name = function.get("name")
    if name and name != slot["name"]:
        slot["name"] = name if name.startswith(slot["name"]) else slot["name"] + name
    if function.get("arguments"):
        slot["arguments"] += function["arguments"]
