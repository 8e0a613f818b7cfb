"""POST /webhook: verify, claim the delivery id, then stream a voice reply or queue a job."""

import functools
import logging
import time

from flask import Blueprint, current_app, g, jsonify, request
from gunicorn.http.errors import ParseException

from app.agent.base import Turn
from app.errors import BadRequest, PayloadTooLarge, field_error
from app.store import Replayed, SignedBytes, get_store
from app.voice.hangup import caller_socket
from app.voice.ndjson import StreamResponse, line
from app.voice.replay import ReplayAgent
from app.voice.streamer import deadline_for, stream_turn
from app.webhook import events, signing

log = logging.getLogger(__name__)
bp = Blueprint("webhook", __name__)


@bp.before_request
def verify_signature():
    """Fail closed: nothing below runs unless the body is signed with a configured secret."""
    if request.method == "OPTIONS":
        return  # Flask's automatic answer: Allow, no body read, nothing stored
    body = _raw_body()
    clock = current_app.config.get("CLOCK", time.time)
    try:
        signing.verify(
            current_app.config["WEBHOOK_SECRETS"],
            request.headers.get("X-Webhook-Signature"),
            request.headers.get("X-Webhook-Timestamp"),
            body,
            now=clock(),
        )
    except signing.Unauthorized as exc:
        log.warning("rejected delivery from %s: %s", request.remote_addr, exc.code)
        raise
    g.delivery_id = events.delivery_id(request.headers.get("X-Webhook-ID"), body)
    g.signed = SignedBytes(*signing.signed_digest(request.headers["X-Webhook-Timestamp"], body))
    g.event = events.parse(body)


def _raw_body():
    """The body bytes exactly as sent, before any JSON parsing (SPEC 1.5)."""
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
def receive():
    event, delivery_id = g.event, g.delivery_id
    if event.is_voice_turn:
        return _voice_turn(event, delivery_id)
    kind = event.job_kind
    if kind is None:
        log.info("delivery %s: ignored unknown event %r (channel %r)",
                 delivery_id, event.event, event.channel)
        return _ack()
    payload = request.get_data(as_text=True)
    if get_store().claim_with_job(delivery_id, event.event, kind, payload, g.signed):
        log.info("delivery %s: %s queued as %s job", delivery_id, event.event, kind)
        current_app.extensions["job_runner"].wake()
    else:
        log.info("delivery %s: duplicate %s ignored", delivery_id, event.event)
    return _ack()


def _ack():
    return jsonify(ok=True)


@bp.errorhandler(Replayed)
def _replayed(exc):
    """The same signed bytes under a new delivery id: acknowledged, with no effect."""
    log.warning("delivery %s from %s: replay of delivery %s, ignored", g.delivery_id,
                request.remote_addr, exc.first_delivery_id)
    return _ack()


def _voice_turn(event, delivery_id):
    store = get_store()
    turn = Turn.from_event(event, delivery_id)
    deadline = deadline_for(current_app.config["VOICE_TIMEOUT"])
    environ = request.environ
    sock = caller_socket(environ)
    filler_after = current_app.config["VOICE_FILLER_AFTER"]
    # Claimed here, in the view: Flask tears down the request context before the stream runs.
    if store.claim_delivery(delivery_id, event.event, g.signed):
        agent = current_app.extensions["agent"]
        # A partial rather than a closure: it lives as long as the held stream, and is smaller.
        on_final = functools.partial(store.save_voice_reply, delivery_id)
        lines = stream_turn(agent, turn, deadline, on_final, sock, filler_after=filler_after,
                            environ=environ)
    else:
        stored = store.voice_reply(delivery_id)
        if stored is not None:
            log.info("delivery %s: duplicate voice turn, replaying stored reply", delivery_id)
            lines = iter([line(stored)])
        else:
            log.info("delivery %s: duplicate voice turn still running, waiting", delivery_id)
            agent = ReplayAgent(store, delivery_id, deadline)
            lines = stream_turn(agent, turn, deadline, None, sock, filler_after=filler_after,
                                environ=environ)
    return StreamResponse(lines)
