"""AgentPhoneClient: the REST API (contract 4) over the retrying transport."""

import enum
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING, Any, Literal, Self, TypeVar
from urllib.parse import quote

import requests
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import MaxRetryError
from urllib3.exceptions import TimeoutError as Urllib3TimeoutError

from app import __version__
from app.agentphone import transport
from app.agentphone.errors import (
    AgentPhoneError,
    APIConnectionError,
    APITimeoutError,
    MissingAPIKeyError,
    error_from_response,
)
from app.agentphone.models import (
    Agent,
    Call,
    Contact,
    Conversation,
    DeliveryStats,
    Message,
    PhoneNumber,
    Reaction,
    StreamConnected,
    StreamEnded,
    TranscriptEntry,
    TranscriptTurn,
    Webhook,
    WebhookDelivery,
    WebhookTestResult,
)
from app.agentphone.models import Model as _Model
from app.agentphone.pagination import (
    Page,
    format_timestamp,
    page_items,
    parse_offset_page,
    walk_cursor,
    walk_offset,
)
from app.agentphone.sse import TranscriptEvent, parse_sse, transcript_event
from app.config import default
from app.metrics import API_REQUESTS, endpoint

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)

DEFAULT_BASE_URL = default("AGENTPHONE_API_URL")
USER_AGENT = f"agentphone-backend/{__version__}"

M = TypeVar("M", bound=_Model)
T = TypeVar("T")


class _Unset(enum.Enum):
    UNSET = "unset"


UNSET = _Unset.UNSET  # "leave unchanged", where None means "clear"


def _path_segment(value: object) -> str:
    """A path segment, escaped so an id can never change the path."""
    return quote(str(value), safe="")


def _drop_none(mapping: Mapping[str, Any]) -> dict[str, Any]:
    return {k: v for k, v in mapping.items() if v is not None}


class AgentPhoneClient:
    """Client for https://api.agentphone.ai with one connection pool (a requests Session;
    requests does not promise Session thread-safety, so give each thread its own client).

    timeout: (connect, read) seconds for every request. budget: seconds one call may take in
    all (connect, retries and the whole response body); past it APITimeoutError is raised.
    max_retries, backoff_factor and max_wait tune the transport's retries (see transport.py).
    stream_quiet_timeout: seconds without a byte (heartbeats come every 15 s) before a
    transcript stream counts as dead; stream_reconnects: reconnects in a row without new
    turns before giving up.

    Every method raises an AgentPhoneError subclass when the call fails: APIConnectionError
    (APITimeoutError) without a response, else the one for the HTTP status (NotFoundError,
    RateLimitError, ...). Ids are escaped into the path, so any string is safe to pass.

    :raises MissingAPIKeyError: `api_key` is empty.
    """

    def __init__(self, api_key: str | None, base_url: str | None = DEFAULT_BASE_URL,
                 timeout: tuple[float, float] = (5.0, 30.0), max_retries: int = 2,
                 backoff_factor: float = 1.0, max_wait: float = 60.0,
                 budget: float | None = 30.0, stream_quiet_timeout: float = 45.0,
                 stream_reconnects: int = 3) -> None:
        if not api_key:
            raise MissingAPIKeyError(
                "No AgentPhone API key: set AGENTPHONE_API_KEY to your sk_... key.",
                request_sent=False,
            )
        self.base_url = (base_url or DEFAULT_BASE_URL).rstrip("/")
        self.timeout = timeout
        self.budget = budget
        self.backoff_factor = backoff_factor
        self.max_wait = max_wait
        self.stream_quiet_timeout = stream_quiet_timeout
        self.stream_reconnects = stream_reconnects
        retry = transport.build_retry(max_retries, backoff_factor, max_wait)
        self._session = transport.build_session(api_key, retry, USER_AGENT)

    def close(self) -> None:
        """Close the connection pool; the client is not used after."""
        self._session.close()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- HTTP -------------------------------------------------------------------------------

    def _open(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
              json: Any = None, stream: bool = False, **kwargs: Any) -> requests.Response:
        """Send one call (retries included) and return the response, or raise AgentPhoneError.

        Everything happens within `budget` seconds, the whole body included, unless
        ``stream``: then the caller reads the body as it comes, and the read timeout (the
        longest quiet spell) is left as given."""
        url = self.base_url + path
        timeout = kwargs.pop("timeout", self.timeout)
        where = endpoint(path)
        try:
            with transport.call_deadline(self.budget, cut_reads=not stream) as deadline:
                response = self._session.request(
                    method, url, params=_drop_none(params or {}), json=json, stream=True,
                    timeout=timeout, **kwargs
                )
                if not stream or response.status_code >= 300:
                    transport.read_body(response, deadline, _read_timeout(timeout))
        except requests.RequestException as exc:
            API_REQUESTS.labels(method, where, "error").inc()
            error = APITimeoutError if _timed_out(exc) else APIConnectionError
            raise error(f"{method} {path} failed: {exc}",
                        request_sent=transport.request_sent(exc)) from exc
        API_REQUESTS.labels(method, where, str(response.status_code)).inc()
        if response.status_code >= 300:
            raise error_from_response(response.status_code, response.text, response.headers,
                                      response.reason or "")
        return response

    def request(self, method: str, path: str, *, params: Mapping[str, Any] | None = None,
                json: Any = None) -> Any:
        """Make one call and return its decoded JSON (None for an empty body).

        :param method: the HTTP method.
        :param path: the path under the base URL, e.g. ``/v1/calls``.
        :param params: the query; None values are left out.
        :param json: the body, sent as JSON.
        :raises AgentPhoneError: also when a non-empty body is not JSON.
        """
        response = self._open(method, path, params=params, json=json)
        if not response.content:
            return None
        try:
            return response.json()
        except ValueError as exc:
            raise AgentPhoneError(
                f"{method} {path}: response is not JSON: {response.text[:200]!r}",
                status=response.status_code, body=response.text,
            ) from exc

    def _page(self, path: str, convert: type[M], limit: int | None, offset: int | None,
              **params: Any) -> Page[M]:
        body = self.request("GET", path, params={"limit": limit, "offset": offset or None,
                                                  **params})
        return parse_offset_page(body, offset or 0, limit, convert.from_dict)

    @staticmethod
    def paginate(list_method: Callable[..., Page[T]], *args: Any, limit: int | None = None,
                 max_items: int | None = None, **kwargs: Any) -> Iterator[T]:
        """Every item of an offset-paged list: paginate(client.list_calls, status="failed").

        :param list_method: a ``list_...`` method taking ``limit`` and ``offset``; ``args``
            and ``kwargs`` are passed on to it.
        :param limit: the page size asked for.
        :param max_items: stop after this many items.
        :return: an iterator that fetches pages as it goes.
        """
        return walk_offset(
            lambda lim, off: list_method(*args, limit=lim, offset=off, **kwargs),
            limit=limit, max_items=max_items,
        )

    # -- calls ------------------------------------------------------------------------------

    def list_calls(self, status: str | None = None, direction: str | None = None,
                   type: str | None = None, search: str | None = None, limit: int | None = None,
                   offset: int = 0) -> Page[Call]:
        """One page of calls (newest first), optionally filtered.

        `limit` is the page size (the server's default is 20, its maximum 100), `offset` the
        number of calls to skip.
        """
        return self._page("/v1/calls", Call, limit, offset, status=status, direction=direction,
                          type=type, search=search)

    def list_agent_calls(self, agent_id: str, limit: int | None = None,
                         offset: int = 0) -> Page[Call]:
        """One page of an agent's calls (newest first)."""
        return self._page(f"/v1/agents/{_path_segment(agent_id)}/calls", Call, limit, offset)

    def list_number_calls(self, number_id: str, limit: int | None = None,
                          offset: int = 0) -> Page[Call]:
        """One page of the calls to or from one of the project's numbers (newest first)."""
        return self._page(f"/v1/numbers/{_path_segment(number_id)}/calls", Call, limit, offset)

    def get_call(self, call_id: str) -> Call:
        """A call with its transcript so far."""
        return Call.from_dict(self.request("GET", f"/v1/calls/{_path_segment(call_id)}"))

    def get_transcript(self, call_id: str) -> list[TranscriptEntry]:
        """The whole transcript; accepts `{data: [...]}`, `{transcripts: [...]}` or a list
        (contract D25)."""
        body = self.request("GET", f"/v1/calls/{_path_segment(call_id)}/transcript")
        if isinstance(body, dict) and isinstance(body.get("transcripts"), list):
            body = body["transcripts"]
        return [TranscriptEntry.from_dict(item) for item in page_items(body)]

    def create_call(self, agent_id: str, to_number: str, *, from_number_id: str | None = None,
                    initial_greeting: str | None = None, voice: str | None = None,
                    system_prompt: str | None = None, variables: Mapping[str, Any] | None = None,
                    call_screening_identity: str | None = None,
                    call_screening_purpose: str | None = None) -> Call:
        """Start an outbound call; returns the call at once (status in-progress).

        With `system_prompt` the platform's own model runs the call; without it each turn
        comes to the webhook. Options left None are not sent.
        """
        body = _drop_none({
            "agentId": agent_id, "toNumber": to_number, "fromNumberId": from_number_id,
            "initialGreeting": initial_greeting, "voice": voice, "systemPrompt": system_prompt,
            "variables": variables, "callScreeningIdentity": call_screening_identity,
            "callScreeningPurpose": call_screening_purpose,
        })
        return Call.from_dict(self.request("POST", "/v1/calls", json=body))

    def end_call(self, call_id: str) -> Call:
        """End a live call; returns the call."""
        return Call.from_dict(self.request("POST", f"/v1/calls/{_path_segment(call_id)}/end"))

    # -- transcript stream ------------------------------------------------------------------

    def stream_transcript(self, call_id: str, quiet_timeout: float | None = None,
                          max_reconnects: int | None = None) -> Iterator[TranscriptEvent]:
        """Yield StreamConnected, TranscriptTurn and StreamEnded events of a call, live.

        Stops after StreamEnded. A dropped connection, a server close before `ended`, or
        `quiet_timeout` seconds without a byte lead to a reconnect with backoff; the server
        replays every turn then, and turns already yielded are skipped (contract D27), as is a
        second `connected`. After `max_reconnects` reconnects in a row without a new turn,
        APIConnectionError is raised. HTTP errors (401, 404, ...) are raised at once.
        `quiet_timeout` and `max_reconnects` default to the client's settings.
        """
        quiet = self.stream_quiet_timeout if quiet_timeout is None else quiet_timeout
        limit = self.stream_reconnects if max_reconnects is None else max_reconnects
        path = f"/v1/calls/{_path_segment(call_id)}/transcript/stream"
        seen: set[tuple[str | None, str | None, str | None]] = set()
        connected, failures = False, 0
        while True:
            try:
                for event in self._stream_events(path, quiet):
                    if isinstance(event, TranscriptTurn):
                        if event.key in seen:
                            continue
                        seen.add(event.key)
                        failures = 0
                    elif isinstance(event, StreamConnected):
                        if connected:
                            continue
                        connected = True
                    yield event
                    if isinstance(event, StreamEnded):
                        return
                reason = "the server closed the stream before the call ended"
            except APIConnectionError as exc:
                reason = str(exc)
            failures += 1
            if failures > limit:
                raise APIConnectionError(
                    f"transcript stream of {call_id} lost after {limit} reconnects: {reason}"
                )
            wait = transport.backoff_delay(failures, self.backoff_factor, self.max_wait,
                                           self.backoff_factor * 0.1)
            log.info("transcript stream of %s interrupted (%s); reconnecting in %.1f s",
                     call_id, reason, wait)
            time.sleep(wait)

    def _stream_events(self, path: str, quiet: float) -> Iterator[TranscriptEvent]:
        """Typed events of one connection to an SSE endpoint."""
        response = self._open(
            "GET", path, stream=True, timeout=(self.timeout[0], quiet),
            headers={"Accept": "text/event-stream", "Accept-Encoding": "identity"},
        )
        with response:
            try:
                for sse in parse_sse(_arrived_chunks(response.raw)):
                    event = transcript_event(sse)
                    if event is not None:
                        yield event
            except (requests.RequestException, Urllib3HTTPError, OSError) as exc:
                raise APIConnectionError(f"GET {path}: stream interrupted: {exc}") from exc

    # -- messages ---------------------------------------------------------------------------

    def send_message(self, agent_id: str | None = None, to_number: str | None = None,
                     body: str = "", *, media_urls: list[str] | None = None,
                     number_id: str | None = None, from_number: str | None = None,
                     recipients: list[str] | None = None, send_style: str | None = None,
                     reply_to_message_id: str | None = None) -> Message:
        """Send an SMS/MMS/iMessage (POST /v1/messages, snake_case body, contract 4.6).

        `to_number` (or `recipients`, for a new iMessage group) is who gets it; `number_id`
        or `from_number` picks the sending number. Options left None are not sent.
        Retried only on 429/503; a timeout raises APIConnectionError and is NOT retried,
        since the text may have gone out.
        """
        payload = _drop_none({
            "agent_id": agent_id, "to_number": to_number, "recipients": recipients,
            "body": body, "media_urls": media_urls, "number_id": number_id,
            "from_number": from_number, "send_style": send_style,
            "reply_to_message_id": reply_to_message_id,
        })
        return Message.from_dict(self.request("POST", "/v1/messages", json=payload))

    def react(self, message_id: str, reaction: str) -> Reaction:
        """iMessage tapback on a message; `reaction` is its type, e.g. ``love``."""
        return Reaction.from_dict(self.request(
            "POST", f"/v1/messages/{_path_segment(message_id)}/reactions",
            json={"reaction": reaction},
        ))

    @staticmethod
    def _messages_path(number_id: str | None, conversation_id: str | None) -> str:
        if (number_id is None) == (conversation_id is None):
            raise ValueError("pass exactly one of number_id and conversation_id")
        if number_id is not None:
            return f"/v1/numbers/{_path_segment(number_id)}/messages"
        return f"/v1/conversations/{_path_segment(conversation_id)}/messages"

    def _messages_body(self, path: str, limit: int | None = None, before: object = None,
                       after: object = None) -> Any:
        if before is not None and after is not None:
            raise ValueError("pass before or after, not both")  # contract D28
        return self.request("GET", path, params={
            "limit": limit,
            "before": None if before is None else format_timestamp(before),
            "after": None if after is None else format_timestamp(after),
        })

    def messages_page(self, *, number_id: str | None = None, conversation_id: str | None = None,
                      limit: int | None = None, before: object = None,
                      after: object = None) -> Page[Message]:
        """One page of a number's or a conversation's messages (timestamp cursors).

        Give exactly one of `number_id` and `conversation_id`, and at most one of `before`
        and `after` (a datetime or an ISO-8601 string).

        :raises ValueError: both or neither id, both cursors, or a cursor that is no time.
        """
        path = self._messages_path(number_id, conversation_id)
        body = self._messages_body(path, limit, before, after)
        items = page_items(body)
        return parse_offset_page(
            {"data": items, "hasMore": bool(isinstance(body, dict) and body.get("hasMore"))},
            0, limit, Message.from_dict,
        )

    def iter_messages(self, *, number_id: str | None = None,
                      conversation_id: str | None = None,
                      direction: Literal["older", "newer"] = "older", start: object = None,
                      limit: int | None = None, max_items: int | None = None
                      ) -> Iterator[Message]:
        """Messages across pages: "older" walks back from `start` (default: now), "newer"
        forward from `start`; de-duplicated by id (contract D28).

        Give exactly one of `number_id` and `conversation_id`; `limit` is the page size,
        `max_items` where to stop. Pages are fetched as the iterator goes.

        :raises ValueError: both or neither id, or an unknown `direction`.
        """
        path = self._messages_path(number_id, conversation_id)
        items = walk_cursor(
            lambda lim, **cursor: self._messages_body(path, lim, **cursor),
            direction=direction, limit=limit, start=start, max_items=max_items,
        )
        return (Message.from_dict(item) for item in items)

    # -- conversations ----------------------------------------------------------------------

    def list_conversations(self, limit: int | None = None,
                           offset: int = 0) -> Page[Conversation]:
        """One page of conversations, most recent first."""
        return self._page("/v1/conversations", Conversation, limit, offset)

    def list_agent_conversations(self, agent_id: str, limit: int | None = None,
                                 offset: int = 0) -> Page[Conversation]:
        """One page of an agent's conversations, most recent first."""
        return self._page(f"/v1/agents/{_path_segment(agent_id)}/conversations", Conversation,
                          limit, offset)

    def get_conversation(self, conversation_id: str,
                         message_limit: int | None = None) -> Conversation:
        """A conversation with its messages (at most `message_limit` of them)."""
        return Conversation.from_dict(self.request(
            "GET", f"/v1/conversations/{_path_segment(conversation_id)}",
            params={"message_limit": message_limit},
        ))

    def update_conversation(self, conversation_id: str,
                            metadata: dict[str, Any] | Literal[_Unset.UNSET] | None = UNSET,
                            group_name: str | None = None) -> Conversation:
        """Replace the conversation's metadata (None clears it); fields not given are kept."""
        body = _drop_none({"group_name": group_name})
        if metadata is not UNSET:
            body["metadata"] = metadata
        return Conversation.from_dict(self.request(
            "PATCH", f"/v1/conversations/{_path_segment(conversation_id)}", json=body
        ))

    # -- webhooks ---------------------------------------------------------------------------

    @staticmethod
    def _webhook_path(agent_id: str | None) -> str:
        if agent_id is None:
            return "/v1/webhooks"
        return f"/v1/agents/{_path_segment(agent_id)}/webhook"

    def get_webhook(self, agent_id: str | None = None) -> Webhook | None:
        """The project's (or an agent's own) webhook, or None when none is set."""
        body = self.request("GET", self._webhook_path(agent_id))
        return Webhook.from_dict(body) if body else None

    def set_webhook(self, url: str, context_limit: int | None = None, timeout: int | None = None,
                    agent_id: str | None = None) -> Webhook:
        """Create or replace the webhook; the result carries the new signing secret.

        `context_limit` is how many recent messages deliveries carry, `timeout` the seconds
        AgentPhone waits for an answer; `agent_id` sets that agent's own webhook instead of
        the project's.
        """
        body = _drop_none({"url": url, "contextLimit": context_limit, "timeout": timeout})
        return Webhook.from_dict(self.request("POST", self._webhook_path(agent_id), json=body))

    def delete_webhook(self, agent_id: str | None = None) -> Any:
        """Remove the project's (or an agent's own) webhook; returns the decoded answer."""
        return self.request("DELETE", self._webhook_path(agent_id))

    def test_webhook(self, agent_id: str | None = None) -> WebhookTestResult:
        """Have AgentPhone send a sample event to the project webhook (agentId in the payload)."""
        return WebhookTestResult.from_dict(self.request(
            "POST", "/v1/webhooks/test", params={"agentId": agent_id}
        ))

    def test_agent_webhook(self, agent_id: str) -> WebhookTestResult:
        """Have AgentPhone send a sample event to the agent's own webhook."""
        return WebhookTestResult.from_dict(self.request(
            "POST", f"/v1/agents/{_path_segment(agent_id)}/webhook/test"
        ))

    def list_deliveries(self, limit: int | None = None, offset: int = 0,
                        hours: int | None = None) -> Page[WebhookDelivery]:
        """One page of the delivery log (`items` envelope, D24); `hours` looks back 1-168 h."""
        return self._page("/v1/webhooks/deliveries", WebhookDelivery, limit, offset, hours=hours)

    def delivery_stats(self, hours: int | None = None) -> DeliveryStats:
        """Delivery totals over the last `hours` (the server's default: 24)."""
        return DeliveryStats.from_dict(self.request(
            "GET", "/v1/webhooks/deliveries/stats", params={"hours": hours}
        ))

    def list_agent_deliveries(self, agent_id: str,
                              limit: int | None = None) -> list[WebhookDelivery]:
        """Recent deliveries to an agent's own webhook (a bare list, no paging)."""
        body = self.request("GET", f"/v1/agents/{_path_segment(agent_id)}/webhook/deliveries",
                            params={"limit": limit})
        return [WebhookDelivery.from_dict(item) for item in page_items(body)]

    # -- agents, numbers, contacts ----------------------------------------------------------

    def list_agents(self, limit: int | None = None, offset: int = 0) -> Page[Agent]:
        """One page of the project's agents."""
        return self._page("/v1/agents", Agent, limit, offset)

    def get_agent(self, agent_id: str) -> Agent:
        """One agent."""
        return Agent.from_dict(self.request("GET", f"/v1/agents/{_path_segment(agent_id)}"))

    def list_numbers(self, limit: int | None = None, offset: int = 0) -> Page[PhoneNumber]:
        """One page of the project's phone numbers."""
        return self._page("/v1/numbers", PhoneNumber, limit, offset)

    def get_number(self, number_id: str) -> PhoneNumber:
        """One phone number."""
        return PhoneNumber.from_dict(self.request("GET", f"/v1/numbers/{_path_segment(number_id)}"))

    def list_contacts(self, limit: int | None = None, offset: int = 0) -> Page[Contact]:
        """One page of the project's contacts."""
        return self._page("/v1/contacts", Contact, limit, offset)


def _timed_out(exc: requests.RequestException) -> bool:
    """True for a timeout, also one that ended the retries (requests reports a ConnectionError)."""
    if isinstance(exc, requests.Timeout):
        return True
    reason = exc.args[0] if exc.args else None
    return isinstance(reason, MaxRetryError) and isinstance(reason.reason, Urllib3TimeoutError)


def _read_timeout(timeout: float | tuple[float, float] | None) -> float | None:
    return timeout[1] if isinstance(timeout, tuple) else timeout


def _arrived_chunks(raw: Any, size: int = 65536) -> Iterator[bytes]:
    """Bytes as they arrive: read1 returns what is there instead of waiting for `size`."""
    while True:
        chunk = raw.read1(size)
        if not chunk:
            return
        yield chunk


def from_config(config: Mapping[str, Any], **options: Any) -> AgentPhoneClient:
    """A client from a mapping with AGENTPHONE_API_KEY and (optionally) AGENTPHONE_API_URL;
    ``options`` are AgentPhoneClient's (timeouts, retries).

    :raises MissingAPIKeyError: the mapping has no API key.
    """
    return AgentPhoneClient(
        config.get("AGENTPHONE_API_KEY"),
        base_url=config.get("AGENTPHONE_API_URL") or DEFAULT_BASE_URL,
        **options,
    )


def client_from_app(app: "Flask", **options: Any) -> AgentPhoneClient:
    """A client configured from a Flask app's config; ``options`` as for `from_config`."""
    return from_config(app.config, **options)
