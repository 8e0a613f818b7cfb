"""POST /webhook: verify, claim the delivery id, then stream a voice reply or queue a job."""

import functools
import logging
import time
from collections.abc import Callable, Iterator
from typing import Any

from flask import Blueprint, Response, current_app, g, jsonify, request
from gunicorn.http.errors import ParseException

from app import logs, registry
from app.agent import get_agent
from app.agent.base import Agent, Reply, Turn
from app.console.journal import Journal, Row, get_journal
from app.errors import BadRequest, PayloadTooLarge, Unauthorized, field_error, render
from app.jobs.runner import get_job_runner
from app.metrics import DELIVERIES
from app.store import Replayed, SignedBytes, StoreUnavailable, get_store
from app.store.console import IN_FLIGHT
from app.voice.claims import VoiceClaims, get_voice_claims
from app.voice.hangup import caller_socket
from app.voice.ndjson import StreamResponse
from app.voice.replay import ReplayAgent
from app.voice.streamer import deadline_for, stream_turn
from app.webhook import events, signing
from app.webhook.secrets import get_webhook_secrets

log = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)

CLAIM_RETRY_SECONDS = 0.1  # pause between claims of a voice turn while the store is locked
# A voice turn's outcome is known in its stream, after the interim line: counted there.
COUNTED_IN_STREAM = "counted in stream"
CLAIM_MARGIN_SECONDS = 0.5  # how far a claim may overrun its lock wait (connecting, busy CPU)


@bp.before_request
def verify_signature() -> None:
    """Fail closed: nothing below runs unless the body is signed with a valid secret."""
    if request.method == "OPTIONS":
        return  # Flask's automatic answer: Allow, no body read, nothing stored
    g.arrived = time.monotonic()
    body = _raw_body()
    secrets = get_webhook_secrets()
    check = functools.partial(
        signing.verify, signature=request.headers.get("X-Webhook-Signature"),
        timestamp=request.headers.get("X-Webhook-Timestamp"), body=body, now=secrets.clock())
    try:
        try:
            check(secrets.current())
        except signing.InvalidSignature:
            # Perhaps signed with a secret stored a moment ago by `webhook set|rotate`.
            if not secrets.reload_after_miss():
                raise
            check(secrets.current())
    except signing.SignatureError as exc:
        log.warning("rejected delivery from %s: %s", request.remote_addr, exc.code)
        raise
    g.delivery_id = events.delivery_id(request.headers.get("X-Webhook-ID"), body)
    g.signed = SignedBytes(*signing.signed_digest(request.headers["X-Webhook-Timestamp"], body))
    try:
        g.event = events.parse(body)
    except BaseException:
        logs.bind(delivery_id=g.delivery_id)  # for the refusal's lines
        raise
    data = g.event.data
    logs.bind(delivery_id=g.delivery_id, event=g.event.event, channel=g.event.channel,
              agent_id=g.event.agent_id, call_id=_text(data.get("callId")),
              conversation_id=_text(data.get("conversationId")))


def _text(value: object) -> str | None:
    return value if isinstance(value, str) else None


def _raw_body() -> bytes:
    """The body bytes exactly as sent, before any JSON parsing (contract 1.5)."""
    try:
        body = request.get_data(cache=True)
        # A chunked body has no Content-Length: Werkzeug stops reading at the limit without
        # saying so, and the truncated body would be rejected as a bad signature instead.
        if (request.content_length is None
                and len(body) >= current_app.config["MAX_CONTENT_LENGTH"]
                and request.environ["wsgi.input"].read(1)):
            raise PayloadTooLarge()
    except (OSError, ParseException) as exc:
        # A malformed chunk size or terminator, or a body cut short: the client's fault.
        log.warning("unreadable body from %s: %s", request.remote_addr, type(exc).__name__)
        raise BadRequest("Request body could not be read",
                         [field_error("body", "malformed or incomplete")]) from None
    return body


# strict_slashes=False: "/webhook/" is served as it is, not redirected (contract D40).
@bp.post("/webhook", strict_slashes=False)
def receive() -> Response:
    """Take a verified delivery where the registry routes it: a voice turn is answered in
    this response, anything else is queued as a job (once per delivery id) and acknowledged."""
    event, delivery_id = g.event, g.delivery_id
    route = registry.route_for(event)
    if route is None:
        log.info("delivery %s: ignored unknown event %r (channel %r)",
                 delivery_id, event.event, event.channel)
        g.outcome = "ignored"
        return _ack()
    if route.streamed:
        return _voice_turn(event, delivery_id)
    kind = route.job_kind
    assert kind is not None  # a route that is not streamed is a job's
    payload = request.get_data(as_text=True)
    if get_store().claim_with_job(delivery_id, event.event, kind, payload, g.signed):
        # DEBUG: the access line and the job's own lines already tell it, at every ack's cost.
        log.debug("delivery %s: %s queued as %s job", delivery_id, event.event, kind)
        get_job_runner().wake()
        g.outcome = "accepted"
    else:
        log.info("delivery %s: duplicate %s ignored", delivery_id, event.event)
        g.outcome = "duplicate"
    return _ack()


@bp.after_request
def count_delivery(response: Response) -> Response:
    """One count per delivery: its event, channel and outcome (a refusal's HTTP status)."""
    if request.method == "OPTIONS":
        return response
    seen = g._get_current_object()  # one lookup through the proxy for the reads below
    event = getattr(seen, "event", None)
    outcome = getattr(seen, "outcome", None) or str(response.status_code)
    if outcome == COUNTED_IN_STREAM:
        return response
    DELIVERIES.labels(*_labels(event), outcome).inc()
    if hasattr(seen, "delivery_id"):
        _journal(get_journal(), outcome, response.status_code, seen)
    return response


def _labels(event: events.Event | None) -> tuple[str, str]:
    """The delivery counter's event and channel labels (known values only)."""
    name = event.event if event is not None and event.event in events.KNOWN_EVENTS else "other"
    channel = event.channel if event is not None and event.channel in events.CHANNELS else "none"
    return name, channel


def _journal(journal: Journal, outcome: str, status: int, seen: Any) -> Row:
    """Log this signed delivery for the console (a voice turn's row is completed later);
    ``seen`` is the request's ``g``."""
    event = getattr(seen, "event", None)
    if event is None:
        return journal.record(seen.delivery_id, "unparsed", outcome, status)
    data = event.data
    said = data.get("transcript") if _streamed(event) else None
    return journal.record(
        seen.delivery_id, event.event, outcome, status, channel=_text(event.channel),
        agent_id=event.agent_id, call_id=_text(data.get("callId")),
        conversation_id=_text(data.get("conversationId")),
        said=_text(said) if said is not None else _text(data.get("message")))


def _streamed(event: events.Event) -> bool:
    route = registry.route_for(event)
    return route is not None and route.streamed


def _ack() -> Response:
    return jsonify(ok=True)


@bp.errorhandler(signing.SignatureError)
def _unsigned(exc: signing.SignatureError) -> Response:
    """A signature that cannot be trusted: 401 with the refusal's own code and message."""
    error = Unauthorized(exc.message)
    error.code = exc.code
    return render(error)


@bp.errorhandler(events.InvalidEvent)
def _invalid(exc: events.InvalidEvent) -> Response:
    """A body that cannot be processed: 400 naming every problem."""
    return render(BadRequest(exc.message, exc.details))


@bp.errorhandler(Replayed)
def _replayed(exc: Replayed) -> Response:
    """The same signed bytes under a new delivery id: acknowledged, with no effect."""
    log.warning("delivery %s from %s: replay of delivery %s, ignored", g.delivery_id,
                request.remote_addr, exc.first_delivery_id)
    g.outcome = "replay"
    return _ack()


def _voice_turn(event: events.Event, delivery_id: str) -> StreamResponse:
    turn = Turn.from_event(event, delivery_id)
    agent = get_agent(turn.agent_id)
    deadline = deadline_for(current_app.config["VOICE_TIMEOUT"])
    environ = request.environ
    # Claimed in the stream, after the interim line: a locked store must not keep the caller
    # silent. Whether the turn is a retry is only known then, so every voice turn is
    # journalled as in flight here and completed when its stream ends.
    g.outcome = COUNTED_IN_STREAM
    # Bound here: Flask tears down the request context before the stream runs.
    journal = get_journal()
    held = _HeldTurn(get_voice_claims(), agent, delivery_id, event.event, g.signed,
                     _labels(event), journal,
                     _journal(journal, IN_FLIGHT, 200, g._get_current_object()))
    lines = stream_turn(agent, turn, deadline, sock=caller_socket(environ),
                        filler_after=current_app.config["VOICE_FILLER_AFTER"], environ=environ,
                        arrived=g.arrived, report=held.report, claim=held.claim)
    return StreamResponse(lines)


class _Nothing(Agent):
    """What a replayed voice delivery runs: nothing (its first delivery had the effect)."""

    def respond(self, turn: Turn) -> Iterator[str | Reply]:
        yield Reply("")


_NOTHING = _Nothing()


class _HeldTurn:
    """What a voice turn's stream needs of its delivery: ``claim`` and ``report``.

    One slotted object rather than closures or partials: it lives as long as the held stream.
    """

    __slots__ = ("agent", "claims", "delivery_id", "event", "journal", "labels", "row",
                 "signed")

    def __init__(self, claims: VoiceClaims, agent: Agent, delivery_id: str, event: str,
                 signed: SignedBytes | None, labels: tuple[str, str], journal: Journal,
                 row: Row) -> None:
        self.claims, self.agent, self.delivery_id, self.event = claims, agent, delivery_id, event
        self.signed, self.labels, self.journal, self.row = signed, labels, journal, row

    def claim(self, until: float
              ) -> tuple[Agent, Callable[[dict[str, Any]], object] | None] | None:
        """Claim the delivery id for this turn, after its interim line is out: ``(agent,
        on_final)`` for the first attempt; for a retry, an agent that replays the first
        attempt's reply (or takes the turn over if that attempt's worker died); None when the
        store stayed unavailable (e.g. locked by another process) until too close to
        ``until`` for another try. The agent never runs unclaimed: it could run twice. The
        delivery is counted here, once its outcome is known."""
        claims, delivery_id, labels = self.claims, self.delivery_id, self.labels
        while True:
            try:
                claim = claims.claim(delivery_id, self.event, self.signed)
                break
            except Replayed as exc:
                log.warning("delivery %s: replay of delivery %s, ignored", delivery_id,
                            exc.first_delivery_id)
                DELIVERIES.labels(*labels, "replay").inc()
                return _NOTHING, None
            except StoreUnavailable as exc:
                time.sleep(CLAIM_RETRY_SECONDS)
                if until - time.monotonic() <= claims.store.lock_wait + CLAIM_MARGIN_SECONDS:
                    log.error("delivery %s: voice turn not claimed: %s", delivery_id, exc)
                    DELIVERIES.labels(*labels, "store_unavailable").inc()
                    return None
                log.warning("delivery %s: store unavailable (%s), claiming again",
                            delivery_id, exc)
        DELIVERIES.labels(*labels, "accepted" if claim is not None else "duplicate").inc()
        if claim is not None:
            return self.agent, claim
        log.info("delivery %s: duplicate voice turn, waiting for or replaying the first "
                 "attempt", delivery_id)
        retry = ReplayAgent(claims, self.agent, delivery_id, until - time.monotonic())
        return retry, retry.finish

    def report(self, outcome: str, first_line: float | None, final_line: float | None,
               answered: str | None) -> None:
        """Complete the turn's row in the delivery log."""
        self.journal.voice_finished(self.row, outcome, first_line, final_line, answered)
