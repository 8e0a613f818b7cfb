"""The POST /webhook contract: verification, status codes, error envelope, idempotent acks."""

import contextlib
import json
import sqlite3
import time

import pytest

from app.jobs import get_job_runner
from app.simulator import payload, signed_request
from app.store import get_store
from app.voice.streamer import LATE_TEXT, deadline_for
from tests.conftest import NOW, SECRET


def _error(response):
    body = response.get_json()
    assert set(body) == {"error"}
    assert {"code", "message"} <= set(body["error"])
    return body["error"]


def _jobs(app):
    path = app.config["DATABASE_URL"][len("sqlite:///"):]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT delivery_id, kind, status FROM jobs").fetchall()


@pytest.mark.parametrize(
    ("mutate", "code"),
    [
        (lambda h: h.pop("X-Webhook-Signature"), "MISSING_SIGNATURE"),
        (lambda h: h.pop("X-Webhook-Timestamp"), "MISSING_SIGNATURE"),
        (lambda h: h.update({"X-Webhook-Signature": "sha256=" + "0" * 64}), "INVALID_SIGNATURE"),
        (lambda h: h.update({"X-Webhook-Signature": h["X-Webhook-Signature"][7:]}),
         "INVALID_SIGNATURE"),
        (lambda h: h.update({"X-Webhook-Timestamp": str(NOW + 301)}), "INVALID_TIMESTAMP"),
        (lambda h: h.update({"X-Webhook-Timestamp": str(NOW - 301)}), "INVALID_TIMESTAMP"),
        (lambda h: h.update({"X-Webhook-Timestamp": "soon"}), "INVALID_TIMESTAMP"),
        # Re-signed for the new timestamp would pass; the old signature must not.
        (lambda h: h.update({"X-Webhook-Timestamp": str(NOW + 1)}), "INVALID_SIGNATURE"),
    ],
)
def test_unverified_deliveries_are_401(client, mutate, code):
    raw, headers = signed_request(SECRET, payload("sms"), timestamp=NOW)
    mutate(headers)
    response = client.post("/webhook", data=raw, headers=headers)
    assert response.status_code == 401
    assert _error(response)["code"] == code


@pytest.mark.parametrize(
    ("mutate", "error"),
    [
        (lambda h: h.pop("X-Webhook-Signature"), {
            "code": "MISSING_SIGNATURE",
            "message": "Missing X-Webhook-Signature or X-Webhook-Timestamp header"}),
        (lambda h: h.update({"X-Webhook-Timestamp": "soon"}), {
            "code": "INVALID_TIMESTAMP",
            "message": "X-Webhook-Timestamp must be unix seconds within 300 s of now"}),
        (lambda h: h.update({"X-Webhook-Signature": "sha256=" + "0" * 64}), {
            "code": "INVALID_SIGNATURE",
            "message": "Signature does not match the body and timestamp"}),
    ],
)
def test_refusals_are_answered_in_the_error_envelope(client, mutate, error):
    raw, headers = signed_request(SECRET, payload("sms"), timestamp=NOW)
    mutate(headers)
    response = client.post("/webhook", data=raw, headers=headers)
    assert (response.status_code, response.get_json()) == (401, {"error": error})


@pytest.mark.parametrize(
    ("body", "error"),
    [
        (b"\xff\xfe", {"code": "VALIDATION_ERROR", "message": "Body is not valid UTF-8"}),
        (b'{"event": "agent.message", "data": {"message": 7}}', {
            "code": "VALIDATION_ERROR", "message": "Invalid agent.message delivery",
            "details": [{"field": "channel", "message": "required string"},
                        {"field": "data.message", "message": "must be a string"}]}),
    ],
)
def test_malformed_bodies_are_answered_in_the_error_envelope(post_signed, body, error):
    response = post_signed(body)
    assert (response.status_code, response.get_json()) == (400, {"error": error})


def test_unverified_delivery_has_no_effect(app, client):
    raw, headers = signed_request("whsec_wrong", payload("sms"), timestamp=NOW)
    assert client.post("/webhook", data=raw, headers=headers).status_code == 401
    assert _jobs(app) == []


def test_rotated_secrets_both_accepted(make_app):
    app = make_app(WEBHOOK_SECRETS=("whsec_new", SECRET))
    for secret in ("whsec_new", SECRET):
        raw, headers = signed_request(secret, payload("sms"), timestamp=NOW)
        assert app.test_client().post("/webhook", data=raw, headers=headers).status_code == 200


@pytest.mark.parametrize(
    ("body", "field"),
    [
        (b"not json", "body"),
        (b"", "body"),
        (b"\xff\xfe", None),
        (b"[1, 2]", "body"),
        (b'"agent.message"', "body"),
        (b"null", "body"),
        (b"{}", "event"),
        (b'{"event": 7}', "event"),
        (b'{"event": ""}', "event"),
        (b'{"event": "agent.message", "channel": "sms", "data": []}', "data"),
        (b'{"event": "agent.message", "data": {}}', "channel"),
        (b"[" * 100000 + b"]" * 100000, "body"),
    ],
)
def test_signed_but_malformed_is_400(post_signed, body, field):
    response = post_signed(body)
    assert response.status_code == 400
    error = _error(response)
    assert error["code"] == "VALIDATION_ERROR"
    if field:
        assert error["details"][0]["field"] == field


def test_body_over_one_mebibyte_is_413(client):
    raw = b'{"event":"agent.message","pad":"' + b"x" * (1024 * 1024) + b'"}'
    raw, headers = signed_request(SECRET, raw, timestamp=NOW)
    response = client.post("/webhook", data=raw, headers=headers)
    assert response.status_code == 413
    assert _error(response)["code"] == "PAYLOAD_TOO_LARGE"


@pytest.mark.parametrize("event", ["call.started", "message.received", "agent.typing"])
def test_unknown_events_are_acknowledged_and_ignored(app, post_signed, event):
    response = post_signed({"event": event, "channel": "sms", "data": {}})
    assert response.status_code == 200
    assert response.get_json() == {"ok": True}
    assert _jobs(app) == []


@pytest.mark.parametrize(
    ("name", "kind"),
    [("message-sms.json", "text_message"), ("message-imessage.json", "text_message"),
     ("reaction-imessage.json", "reaction"), ("call_ended-voice.json", "call_ended")],
)
def test_platform_fixtures_are_queued_once(app, post_signed, fixtures_dir, name, kind):
    raw = (fixtures_dir / name).read_bytes()
    for _ in range(3):
        response = post_signed(raw, delivery_id="whd_fixture")
        assert response.status_code == 200
        assert response.get_json() == {"ok": True}
    assert _jobs(app) == [("whd_fixture", kind, "pending")]


def test_missing_delivery_id_falls_back_to_body_hash(app, client):
    raw, headers = signed_request(SECRET, payload("sms"), timestamp=NOW)
    del headers["X-Webhook-ID"]
    for _ in range(2):
        assert client.post("/webhook", data=raw, headers=headers).status_code == 200
    [(delivery_id, _, _)] = _jobs(app)
    assert delivery_id.startswith("sha256:")


def test_voice_turn_streams_ndjson(post_signed, fixtures_dir):
    response = post_signed((fixtures_dir / "message-voice.json").read_bytes())
    assert response.status_code == 200
    assert response.mimetype == "application/x-ndjson"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert response.headers["Cache-Control"] == "no-cache, no-transform"
    lines = response.get_data(as_text=True).split("\n")
    assert lines[-1] == ""
    objects = [json.loads(line) for line in lines[:-1]]
    assert objects[0]["interim"] is True
    assert all(o.get("interim") is True for o in objects[:-1])
    assert "interim" not in objects[-1] and objects[-1]["text"]


def test_duplicate_voice_turn_replays_the_stored_reply(post_signed):
    first = post_signed(payload("voice"), delivery_id="whd_voice").get_data(as_text=True)
    again = post_signed(payload("voice"), delivery_id="whd_voice").get_data(as_text=True)
    interim, final = again.splitlines(keepends=True)
    assert json.loads(interim)["interim"] is True
    assert final == first.splitlines(keepends=True)[-1]


def test_voice_turn_whose_first_attempt_stopped_beating_runs_again(app, post_signed):
    store = get_store(app)
    store.clock = lambda: NOW - 10  # claimed 10 s ago by a worker that has died since
    assert store.claim_voice("whd_dead", "agent.message", "gone:1:0")
    store.clock = lambda: NOW
    lines = post_signed(payload("voice"), delivery_id="whd_dead").get_data(as_text=True)
    objects = [json.loads(line) for line in lines.splitlines()]
    assert objects[0]["interim"] is True
    assert objects[-1] != {"text": LATE_TEXT}
    assert "order" in objects[-1]["text"]
    assert store.voice_reply("whd_dead") == objects[-1]


def _drop_deliveries_table(conn):
    conn.execute("DROP TABLE deliveries")


def _hold_write_lock(conn):
    conn.isolation_level = None
    conn.execute("BEGIN EXCLUSIVE")


def _post_to_broken_store(make_app, monkeypatch, break_store, kind, **config):
    monkeypatch.setattr("app.store.sqlite.SQLiteStore.lock_wait", 0.1)
    app = make_app(**config)
    conn = sqlite3.connect(app.config["DATABASE_URL"][len("sqlite:///"):])
    try:
        break_store(conn)
        raw, headers = signed_request(SECRET, payload(kind), timestamp=NOW)
        started = time.monotonic()
        response = app.test_client().post("/webhook", data=raw, headers=headers)
        body = response.get_data(as_text=True)
        return response, body, time.monotonic() - started
    finally:
        conn.close()


@pytest.mark.parametrize("break_store", [_drop_deliveries_table, _hold_write_lock])
def test_store_failure_is_503_never_2xx(make_app, monkeypatch, break_store):
    response, _, _ = _post_to_broken_store(make_app, monkeypatch, break_store, "sms")
    assert response.status_code == 503
    assert _error(response)["code"] == "STORE_UNAVAILABLE"


@pytest.mark.parametrize("break_store", [_drop_deliveries_table, _hold_write_lock])
def test_unclaimable_voice_turn_still_hears_interim_and_fallback(make_app, monkeypatch,
                                                                  break_store):
    response, body, seconds = _post_to_broken_store(make_app, monkeypatch, break_store,
                                                    "voice", VOICE_TIMEOUT=5)
    assert response.status_code == 200
    interim, final = (json.loads(line) for line in body.splitlines())
    assert interim["interim"] is True
    assert final == {"text": LATE_TEXT}
    assert 1 < seconds < deadline_for(5)  # claimed again and again, then the fallback in time


def test_healthz(app, client):
    assert client.get("/healthz").get_json() == {"ok": True, "store": "sqlite",
                                                 "webhook_secret": "ok"}
    path = app.config["DATABASE_URL"][len("sqlite:///"):]
    get_store(app).close()
    get_store(app).path = str(path) + ".missing/x.db"
    assert client.get("/healthz").status_code == 503


@pytest.mark.parametrize(("method", "path", "status"), [
    ("GET", "/webhook", 405), ("GET", "/nope", 404), ("PUT", "/healthz", 405),
])
def test_other_routes_answer_json_errors(client, method, path, status):
    response = client.open(path, method=method)
    assert response.status_code == status
    _error(response)


@pytest.mark.parametrize(("method", "path", "allow"), [
    ("GET", "/webhook", {"OPTIONS", "POST"}), ("DELETE", "/webhook/", {"OPTIONS", "POST"}),
    ("PUT", "/healthz", {"GET", "HEAD", "OPTIONS"}),
])
def test_405_names_the_allowed_methods(client, method, path, allow):
    response = client.open(path, method=method)
    assert response.status_code == 405
    assert set(response.headers["Allow"].split(", ")) == allow
    assert response.mimetype == "application/json"
    assert _error(response)["code"] == "METHOD_NOT_ALLOWED"


@pytest.mark.parametrize("path", ["/webhook", "/webhook/"])
def test_options_is_answered_without_auth_or_effects(app, client, path):
    response = client.options(path, data=b'{"event": "agent.message"}')
    assert response.status_code == 200
    assert set(response.headers["Allow"].split(", ")) == {"OPTIONS", "POST"}
    assert response.data == b""
    assert _jobs(app) == []
    path = app.config["DATABASE_URL"][len("sqlite:///"):]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        assert conn.execute("SELECT count(*) FROM deliveries").fetchone() == (0,)


def test_trailing_slash_is_served_without_a_redirect(app, client):
    raw, headers = signed_request(SECRET, payload("sms"), "whd_slash", timestamp=NOW)
    response = client.post("/webhook/", data=raw, headers=headers)
    assert (response.status_code, response.get_json()) == (200, {"ok": True})
    assert _jobs(app) == [("whd_slash", "text_message", "pending")]
    raw, headers = signed_request(SECRET, payload("voice"), timestamp=NOW)
    response = client.post("/webhook/", data=raw, headers=headers)
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.data.splitlines()]
    assert lines[0]["interim"] is True and "interim" not in lines[-1]
    raw, headers = signed_request("whsec_wrong", payload("sms"), timestamp=NOW)
    assert client.post("/webhook/", data=raw, headers=headers).status_code == 401


@pytest.mark.parametrize("name", ["call_ended-voice.json", "reaction-imessage.json"])
def test_call_ended_and_reaction_need_no_channel(app, post_signed, fixtures_dir, name):
    body = json.loads((fixtures_dir / name).read_text())
    del body["channel"]
    response = post_signed(body, delivery_id="whd_nochannel")
    assert (response.status_code, response.get_json()) == (200, {"ok": True})
    assert get_job_runner(app).run_pending() == 1
    store = get_store(app)
    assert [(j.delivery_id, j.status) for j in store.jobs()] == [("whd_nochannel", "done")]
    if body["event"] == "agent.call_ended":
        assert store.call_record("call_ghi012")["duration_seconds"] == 330
    else:
        assert [r["reaction_type"] for r in store.reactions()] == ["love"]


@pytest.mark.parametrize("channel", [None, ""])
def test_a_message_still_needs_its_channel(post_signed, channel):
    body = payload("sms")
    body["channel"] = channel
    response = post_signed(body)
    assert response.status_code == 400
    assert _error(response)["details"] == [{"field": "channel", "message": "required string"}]
