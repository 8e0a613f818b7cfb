"""Replays: the same signed bytes sent again under another X-Webhook-ID have no effect,
while a genuine platform retry (new timestamp and signature, same id) is de-duplicated as
always."""

import contextlib
import json
import logging
import sqlite3
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.jobs import get_job_runner
from app.simulator import payload, signed_request
from app.store import Replayed, SignedBytes, open_store
from app.webhook.signing import REPLAY_MARGIN, TOLERANCE, signed_digest
from tests.conftest import NOW, SECRET
from tests.servers import post_stream

REACTION = {"event": "agent.reaction", "channel": "imessage", "agentId": "agt_1",
            "data": {"conversationId": "conv_1", "messageId": "msg_1", "reactionType": "love",
                     "fromNumber": "+15551234567", "direction": "inbound"}}


def _rows(app, sql):
    path = app.config["DATABASE_URL"][len("sqlite:///"):]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute(sql).fetchall()


def test_reaction_replayed_under_new_ids_is_stored_once(app, client, caplog):
    caplog.set_level(logging.WARNING, logger="app.webhook.views")
    raw, headers = signed_request(SECRET, REACTION, "whd_first", NOW)
    assert client.post("/webhook", data=raw, headers=headers).get_json() == {"ok": True}
    for n in range(4):
        replay = {**headers, "X-Webhook-ID": f"whd_replay_{n}"}
        response = client.post("/webhook", data=raw, headers=replay)
        assert (response.status_code, response.get_json()) == (200, {"ok": True})
    runner = get_job_runner(app)
    assert runner.run_pending() == 1
    assert len(runner.store.reactions()) == 1
    assert _rows(app, "SELECT id FROM deliveries") == [("whd_first",)]
    assert caplog.text.count("replay of delivery whd_first, ignored") == 4


def test_replay_with_the_signature_in_upper_case_is_still_a_replay(app, client):
    raw, headers = signed_request(SECRET, REACTION, "whd_first", NOW)
    client.post("/webhook", data=raw, headers=headers)
    upper = {**headers, "X-Webhook-ID": "whd_other",
             "X-Webhook-Signature": "sha256=" + headers["X-Webhook-Signature"][7:].upper()}
    assert client.post("/webhook", data=raw, headers=upper).status_code == 200
    assert get_job_runner(app).run_pending() == 1


def test_replay_without_an_id_is_a_replay_of_the_first(app, client):
    raw, headers = signed_request(SECRET, REACTION, "whd_first", NOW)
    client.post("/webhook", data=raw, headers=headers)
    del headers["X-Webhook-ID"]
    assert client.post("/webhook", data=raw, headers=headers).status_code == 200
    assert _rows(app, "SELECT COUNT(*) FROM jobs") == [(1,)]


def test_platform_retry_with_a_new_signature_and_the_same_id_is_deduplicated(app, client):
    for timestamp in (NOW - 20, NOW - 10, NOW):
        raw, headers = signed_request(SECRET, REACTION, "whd_retried", timestamp)
        assert client.post("/webhook", data=raw, headers=headers).status_code == 200
    assert _rows(app, "SELECT delivery_id FROM jobs") == [("whd_retried",)]
    assert _rows(app, "SELECT COUNT(*) FROM signed_requests") == [(3,)]


def test_same_bytes_at_a_new_timestamp_and_id_are_a_new_delivery(app, client):
    """Only the signed bytes are remembered: the platform may send equal bodies twice."""
    for timestamp, delivery_id in ((NOW - 1, "whd_a"), (NOW, "whd_b")):
        raw, headers = signed_request(SECRET, REACTION, delivery_id, timestamp)
        assert client.post("/webhook", data=raw, headers=headers).status_code == 200
    assert get_job_runner(app).run_pending() == 2


def test_voice_replay_under_a_new_id_does_not_run_the_agent(app, client):
    raw, headers = signed_request(SECRET, payload("voice"), "whd_call_turn", NOW)
    first = client.post("/webhook", data=raw, headers=headers)
    assert first.mimetype == "application/x-ndjson" and first.get_data()
    replay = client.post("/webhook", data=raw, headers={**headers, "X-Webhook-ID": "whd_x"})
    # A voice turn is claimed after its interim line: the replay hears it, then nothing.
    lines = [json.loads(line) for line in replay.get_data(as_text=True).splitlines()]
    assert replay.status_code == 200 and lines[0]["interim"] and lines[-1] == {"text": ""}
    assert _rows(app, "SELECT id FROM deliveries") == [("whd_call_turn",)]
    assert _rows(app, "SELECT delivery_id FROM voice_replies") == [("whd_call_turn",)]


@pytest.mark.slow
def test_voice_replays_across_workers_run_the_agent_once(gunicorn, effects_agent):
    server = gunicorn(workers=2, TEST_TOOL_SECONDS=0.2, **effects_agent.env)
    raw, headers = signed_request(SECRET, payload("voice", "where is my order"))
    response, lines = post_stream(server.webhook, raw, headers)
    assert response.status_code == 200 and "interim" not in lines[-1][1]
    copies = [{**headers, "X-Webhook-ID": f"whd_replay_{n}"} for n in range(12)]
    with ThreadPoolExecutor(6) as pool:
        answers = list(pool.map(
            lambda h: requests.post(server.webhook, data=raw, headers=h, timeout=30), copies))
    # Claimed after the interim line: each replay hears it, then nothing.
    assert [(a.status_code, [json.loads(line) for line in a.text.splitlines()][-1])
            for a in answers] == [(200, {"text": ""})] * 12
    assert effects_agent.effects() == [headers["X-Webhook-ID"]]
    assert server.log().count(f"replay of delivery {headers['X-Webhook-ID']}, ignored") == 12


# -- how long the store remembers signed bytes ----------------------------------------------
# (the store's part of replays runs against every backend in tests/test_store.py)


def test_signed_bytes_are_pruned_once_too_old_to_verify(tmp_path):
    store = open_store("sqlite:///" + str(tmp_path / "s.db"))
    now = [float(NOW)]
    store.clock = lambda: now[0]
    store.migrate()
    signed = SignedBytes(*signed_digest(str(NOW), b"{}"))
    try:
        store.claim_voice("whd_1", "agent.message", "owner", signed)
        now[0] = NOW + TOLERANCE + REPLAY_MARGIN - 1
        store.prune()
        with pytest.raises(Replayed):
            store.claim_voice("whd_2", "agent.message", "owner", signed)
        now[0] = NOW + TOLERANCE + REPLAY_MARGIN + 1
        assert store.prune() >= 1
        assert store.claim_voice("whd_3", "agent.message", "owner", signed) is True
    finally:
        store.close()
