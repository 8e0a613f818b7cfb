"""Deliveries that could never be processed are refused at the door (400 with details) or
stored in a form their job accepts: never "200, then dead"."""

import json

import pytest

from app.errors import Unretryable
from app.jobs import get_job_runner
from app.simulator import payload, signed_request
from app.store import get_store
from app.store.base import UnstorableValue
from tests.conftest import NOW, SECRET

pytest_plugins = ["tests.postgres"]  # pg_server, pg_url


@pytest.fixture(params=["sqlite", "postgres"])
def backend_app(request, make_app):
    if request.param == "sqlite":
        app = make_app()
    else:
        app = make_app(DATABASE_URL=request.getfixturevalue("pg_url"))
    yield app
    get_store(app).close()


@pytest.fixture
def post(backend_app):
    client = backend_app.test_client()

    def post(body, delivery_id=None):
        raw = body if isinstance(body, bytes) else json.dumps(body).encode()
        raw, headers = signed_request(SECRET, raw, delivery_id, NOW)
        return client.post("/webhook", data=raw, headers=headers)

    return post


def _run_jobs(app):
    runner = get_job_runner(app)
    runner.run_pending()
    return runner.store.jobs()


def call_ended(**data):
    body = payload("call_ended")
    body["data"].update(data)
    return body


def reaction(**data):
    return {"event": "agent.reaction", "channel": "imessage", "agentId": "agt_1",
            "data": {"conversationId": "conv_1", "messageId": "msg_1", "reactionType": "love",
                     "fromNumber": "+15551234567", "direction": "inbound", **data}}


@pytest.mark.parametrize(("body", "field"), [
    (call_ended(durationSeconds=2**63), "data.durationSeconds"),
    (call_ended(durationSeconds=10**30), "data.durationSeconds"),
    (call_ended(durationSeconds=-1), "data.durationSeconds"),
    (call_ended(durationSeconds="330"), "data.durationSeconds"),
    (call_ended(durationSeconds=True), "data.durationSeconds"),
    (call_ended(callSuccessful="yes"), "data.callSuccessful"),
    (call_ended(transcript="hello"), "data.transcript"),
    (call_ended(callId=12), "data.callId"),
    (reaction(reactionType=["love"]), "data.reactionType"),
    (payload("sms", numberId={"id": "num_1"}), "data.numberId"),
    (payload("sms", message=7), "data.message"),
    (payload("voice", transcript={"text": "hi"}), "data.transcript"),
    ({**payload("sms"), "agentId": 7}, "agentId"),
    ({**payload("sms"), "conversationState": ["x"]}, "conversationState"),
    ({**payload("sms"), "recentHistory": "none"}, "recentHistory"),
])
def test_delivery_a_handler_cannot_use_is_400_with_details_and_queues_nothing(
        backend_app, post, body, field):
    response = post(body)
    assert response.status_code == 400
    error = response.get_json()["error"]
    assert error["code"] == "VALIDATION_ERROR"
    assert field in [d["field"] for d in error["details"]]
    assert get_store(backend_app).jobs() == []


@pytest.mark.parametrize("raw", [
    b'{"event":"agent.call_ended","channel":"voice","data":{"callId":"c","durationSeconds":NaN}}',
    b'{"event":"agent.call_ended","channel":"voice","data":{"callId":"c",'
    b'"durationSeconds":Infinity}}',
    b'{"event":"agent.call_ended","channel":"voice","data":{"callId":"c","durationSeconds":1e400}}',
])
def test_non_finite_numbers_are_400(post, raw):
    response = post(raw)
    assert response.status_code == 400
    assert response.get_json()["error"]["details"]


def test_reaction_with_lone_surrogates_and_nul_is_stored_with_replacement_characters(
        backend_app, post):
    raw = json.dumps(reaction(reactionType="lo\ud800ve", fromNumber="+1555\x00")).encode()
    assert b"\\ud800" in raw and b"\\u0000" in raw
    assert post(raw, delivery_id="whd_poison_reaction").status_code == 200
    [job] = _run_jobs(backend_app)
    assert (job.status, job.attempts) == ("done", 1)
    [stored] = get_store(backend_app).reactions()
    assert stored["reaction_type"] == "lo\ufffdve"
    assert stored["from_number"] == "+1555\ufffd"


def test_call_ended_with_lone_surrogates_is_stored_and_its_job_succeeds(backend_app, post):
    body = call_ended(callId="call_poison", summary="caller said \udfff",
                      transcript=[{"role": "user", "content": "\ud83d broken emoji"}])
    assert post(body).status_code == 200
    [job] = _run_jobs(backend_app)
    assert (job.status, job.attempts) == ("done", 1)
    record = get_store(backend_app).call_record("call_poison")
    assert record["summary"] == "caller said \ufffd"
    assert record["transcript"] == [{"role": "user", "content": "\ufffd broken emoji"}]
    assert record["duration_seconds"] == 330


def test_text_message_with_a_lone_surrogate_is_answered(backend_app, post):
    assert post(payload("sms", message="hi \ud800 there")).status_code == 200
    [job] = _run_jobs(backend_app)
    assert (job.status, job.attempts) == ("done", 1)


def test_voice_turn_with_a_lone_surrogate_streams_a_reply(post):
    response = post(payload("voice", text="where is my order \udc00"))
    assert response.status_code == 200
    lines = [json.loads(line) for line in response.get_data(as_text=True).splitlines()]
    assert lines[-1]["text"]


def test_queued_delivery_that_fails_the_checks_is_dead_at_its_first_attempt(backend_app):
    """A job queued before the checks existed (or by another version) is not retried."""
    store = get_store(backend_app)
    job_id = store.enqueue("call_ended", json.dumps(call_ended(durationSeconds=2**63)),
                           delivery_id="whd_old")
    _run_jobs(backend_app)
    job = store.job(job_id)
    assert (job.status, job.attempts) == ("dead", 1)
    assert "Unretryable" in job.last_error and "data.durationSeconds" in job.last_error


def test_store_refusing_a_value_is_unstorable_not_unavailable(backend_app):
    store = get_store(backend_app)
    with pytest.raises(UnstorableValue) as caught:
        store.save_call_record({"call_id": "c1", "duration_seconds": 2**1100})
    assert caught.value.status == 400
    with pytest.raises(UnstorableValue):
        store.save_reaction("whd_x", {"reaction_type": "\ud800"})


def test_handler_hitting_an_unstorable_value_is_dead_at_once(backend_app):
    store = get_store(backend_app)
    runner = get_job_runner(backend_app)

    def stores_the_unstorable(job):
        store.save_reaction(f"job:{job.id}", {"reaction_type": "\ud800"})

    runner.handlers = {"poison": stores_the_unstorable}
    job_id = store.enqueue("poison", "{}")
    runner.run_pending()
    job = store.job(job_id)
    assert (job.status, job.attempts) == ("dead", 1)
    assert job.last_error.startswith("UnstorableValue")


def test_unretryable_failure_is_dead_lettered_with_its_reason(app):
    runner = get_job_runner(app)

    def hopeless(job):
        raise Unretryable("the order no longer exists")

    runner.handlers = {"hopeless": hopeless}
    job_id = runner.store.enqueue("hopeless", "{}")
    assert runner.run_pending() == 1
    job = runner.store.job(job_id)
    assert (job.status, job.attempts) == ("dead", 1)
    assert job.last_error == "Unretryable: the order no longer exists"
