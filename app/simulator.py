"""Signed deliveries shaped like AgentPhone's, for the simulator CLI, tests and benchmarks."""

import json
import time
import uuid

from app.webhook.signing import compute

SAMPLES = {
    "voice": {
        "event": "agent.message", "channel": "voice", "agentId": "agt_demo",
        "data": {"callId": "call_sim", "numberId": "num_demo", "from": "+15559876543",
                 "to": "+15551234567", "status": "in-progress",
                 "transcript": "Where is my order?", "confidence": 0.95,
                 "direction": "inbound"},
        "conversationState": None, "recentHistory": [],
    },
    "sms": {
        "event": "agent.message", "channel": "sms", "agentId": "agt_demo",
        "data": {"conversationId": "conv_sim", "numberId": "num_demo", "from": "+15559876543",
                 "to": "+15551234567", "message": "Where is my order?", "mediaUrl": None,
                 "direction": "inbound", "receivedAt": "2025-01-15T12:00:00Z"},
        "conversationState": None, "recentHistory": [],
    },
    "call_ended": {
        "event": "agent.call_ended", "channel": "voice", "agentId": "agt_demo",
        "data": {"callId": "call_sim", "numberId": "num_demo", "from": "+15559876543",
                 "to": "+15551234567", "direction": "inbound", "status": "completed",
                 "startedAt": "2025-01-15T14:00:00Z", "endedAt": "2025-01-15T14:05:30Z",
                 "durationSeconds": 330, "disconnectionReason": "user_hangup",
                 "transcript": [{"role": "agent", "content": "Hello"},
                                {"role": "user", "content": "Where is my order?"}],
                 "summary": "Caller asked about an order.", "userSentiment": "Neutral",
                 "callSuccessful": True},
    },
}


def payload(kind, text=None, **data):
    """A sample delivery body (dict) of ``kind`` (voice, sms, call_ended)."""
    body = json.loads(json.dumps(SAMPLES[kind]))
    body["timestamp"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    if text is not None:
        body["data"]["transcript" if kind == "voice" else "message"] = text
    body["data"].update(data)
    return body


def new_call_id():
    """A call id of its own, so that a simulated call does not continue an earlier one."""
    return f"call_sim_{uuid.uuid4().hex[:12]}"


def signed_request(secret, body, delivery_id=None, timestamp=None):
    """(raw body bytes, headers) exactly as the platform sends them."""
    raw = body if isinstance(body, bytes) else json.dumps(body, separators=(",", ":")).encode()
    ts = str(int(time.time()) if timestamp is None else timestamp)
    headers = {
        "Content-Type": "application/json",
        "X-Webhook-Signature": compute(secret, ts, raw),
        "X-Webhook-Timestamp": ts,
        "X-Webhook-ID": delivery_id or f"whd_{uuid.uuid4().hex}",
    }
    return raw, headers


def iter_ndjson(response):
    """Lines of a streamed ``requests`` response as they arrive (chunk_size=None: no
    waiting for a full buffer, which would hide the interim line's timing)."""
    pending = b""
    for chunk in response.iter_content(chunk_size=None):
        pending += chunk
        *lines, pending = pending.split(b"\n")
        yield from (line for line in lines if line)
    if pending:
        yield pending
