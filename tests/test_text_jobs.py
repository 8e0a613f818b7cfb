"""Background jobs for texts, reactions and call ends, against a fake AgentPhone API on
127.0.0.1: each inbound text is answered with at most one POST /v1/messages."""

import json
import logging
import re
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.agent import Agent, CallRecord, Reaction, Reply
from app.jobs import get_job_runner
from app.simulator import payload, signed_request
from app.store import get_store
from tests.conftest import NOW, SECRET
from tests.fake_agentphone import (  # noqa: F401
    API_KEY,
    cut_short,
    fake_api_fixture,
    json_reply,
)
from tests.fake_llm import fake_llm_fixture, no_finish, text  # noqa: F401
from tests.servers import free_port

JANE = "+15559876543"
SENT = {"id": "msg_1", "status": "sent", "channel": "sms", "from_number": "+15551234567",
        "to_number": JANE, "media_urls": [], "reply_to_message_id": None,
        "reply_parent_unresolved": False}
REACTION = {
    "event": "agent.reaction", "channel": "imessage", "agentId": "agt_demo",
    "data": {"conversationId": "conv_def", "numberId": "num_xyz", "reactionType": "love",
             "fromNumber": JANE, "direction": "inbound", "messageId": "msg_003",
             "messageBody": "Hey", "messageMediaUrl": None, "messageMediaUrls": [],
             "createdAt": "2025-06-01T10:04:00Z"},
}


@pytest.fixture
def api_app(make_app, fake_api):
    fake_api.on("POST", "/v1/messages", SENT)
    return make_app(AGENTPHONE_API_KEY=API_KEY, AGENTPHONE_API_URL=fake_api.url)


def deliver(app, body, delivery_id=None, timestamp=NOW):
    raw, headers = signed_request(SECRET, body, delivery_id, timestamp)
    response = app.test_client().post("/webhook", data=raw, headers=headers)
    assert response.status_code == 200 and response.get_json() == {"ok": True}
    return headers["X-Webhook-ID"]


def run_jobs(app):
    return get_job_runner(app).run_pending()


def sms(text="Where is my order?", **data):
    return payload("sms", text, **data)


def job_for(app, delivery_id):
    store = get_store(app)
    return next(j for j in store.jobs(limit=500) if j.delivery_id == delivery_id)


def test_inbound_text_is_answered_once(api_app, fake_api):
    delivery = deliver(api_app, sms())
    assert run_jobs(api_app) == 1
    assert fake_api.count("POST", "/v1/messages") == 1
    sent = fake_api.last("POST", "/v1/messages").body
    assert sent == {
        "agent_id": "agt_demo", "to_number": JANE, "number_id": "num_demo",
        "body": "I found order 4521, a pair of running shoes. It shipped yesterday by FedEx, "
                "due Thursday. You also have order 4524; just ask if you'd like an update on "
                "it. Is there anything else I can help with?",
    }
    store = get_store(api_app)
    assert store.outbox_entry(delivery)["status"] == "sent"
    assert store.outbox_entry(delivery)["message_id"] == "msg_1"
    # The platform retries the delivery; an operator replays the finished job: no new text.
    deliver(api_app, sms(), delivery)
    assert store.retry_job(job_for(api_app, delivery).id)
    assert run_jobs(api_app) == 1
    assert fake_api.count("POST", "/v1/messages") == 1
    assert job_for(api_app, delivery).status == "done"


def test_a_send_that_may_have_happened_is_not_repeated(api_app, fake_api, caplog):
    store = get_store(api_app)
    # A worker died between recording "sending" and recording the outcome.
    delivery = deliver(api_app, sms())
    assert store.outbox_begin(delivery, JANE, "an earlier attempt") == ("sending", True)
    with caplog.at_level(logging.WARNING, logger="app.jobs.handlers"):
        run_jobs(api_app)
    assert fake_api.count("POST", "/v1/messages") == 0
    assert "already sending, not sending again" in caplog.text
    # The API failed in a way that does not say whether the text went out (a 500).
    fake_api.on("POST", "/v1/messages", json_reply({"detail": "boom"}, 500))
    delivery = deliver(api_app, sms("What are your hours?"))
    run_jobs(api_app)
    assert fake_api.count("POST", "/v1/messages") == 1
    assert store.outbox_entry(delivery)["status"] == "unknown"
    store.retry_job(job_for(api_app, delivery).id)
    run_jobs(api_app)
    assert fake_api.count("POST", "/v1/messages") == 1


def test_a_rejected_or_unconnected_send_is_retried(api_app, fake_api):
    store = get_store(api_app)
    fake_api.on("POST", "/v1/messages",
                json_reply({"error": {"message": "to_number is invalid"}}, 400), SENT)
    delivery = deliver(api_app, sms("What are your hours?"))
    run_jobs(api_app)
    job = job_for(api_app, delivery)
    assert (job.status, store.outbox_entry(delivery)["status"]) == ("pending", "failed")
    assert "to_number is invalid" in job.last_error
    store.retry_job(job.id)
    run_jobs(api_app)
    assert fake_api.count("POST", "/v1/messages") == 2
    assert store.outbox_entry(delivery)["status"] == "sent"
    # Connection refused: the request never left, so the next attempt sends.
    api_app.config["AGENTPHONE_API_URL"] = f"http://127.0.0.1:{free_port()}"
    delivery = deliver(api_app, sms("bye"))
    run_jobs(api_app)
    assert store.outbox_entry(delivery)["status"] == "failed"
    api_app.config["AGENTPHONE_API_URL"] = fake_api.url
    store.retry_job(job_for(api_app, delivery).id)
    run_jobs(api_app)
    assert store.outbox_entry(delivery)["status"] == "sent"
    assert fake_api.last("POST", "/v1/messages").body["body"] == "Thanks for getting in touch. " \
                                                                 "Bye for now!"


def test_a_send_whose_answer_was_cut_short_is_not_repeated(api_app, fake_api, caplog):
    store = get_store(api_app)
    # The request went out and the connection broke in the answer: the text may be sent.
    fake_api.on("POST", "/v1/messages", cut_short(SENT))
    delivery = deliver(api_app, sms("What are your hours?"))
    with caplog.at_level(logging.ERROR, logger="app.jobs.handlers"):
        run_jobs(api_app)
    assert "may or may not have worked, not retrying" in caplog.text
    assert (job_for(api_app, delivery).status, store.outbox_entry(delivery)["status"]) == (
        "done", "unknown")
    store.retry_job(job_for(api_app, delivery).id)
    run_jobs(api_app)
    assert fake_api.count("POST", "/v1/messages") == 1


def test_test_and_outbound_deliveries_get_no_text(api_app, fake_api, caplog):
    with caplog.at_level(logging.INFO, logger="app.jobs.handlers"):
        deliver(api_app, {**sms(), "test": True})
        deliver(api_app, sms(direction="outbound"))
        assert run_jobs(api_app) == 2
    assert fake_api.count("POST", "/v1/messages") == 0
    assert "test delivery, reply not sent to +15559876543" in caplog.text
    assert "I found order 4521" not in caplog.text  # bodies only at DEBUG
    assert "sms message is not inbound, no reply" in caplog.text


def test_without_an_api_key_the_reply_is_logged(make_app, caplog):
    app = make_app()
    with caplog.at_level(logging.DEBUG, logger="app.jobs.handlers"):
        delivery = deliver(app, sms("what are your hours"))
        run_jobs(app)
    assert "AGENTPHONE_API_KEY not set, reply to +15559876543 on sms not sent" in caplog.text
    info = [r.getMessage() for r in caplog.records if r.levelno >= logging.INFO]
    debug = [r.getMessage() for r in caplog.records if r.levelno == logging.DEBUG]
    assert not any("We're open" in m for m in info)  # the body only at DEBUG
    assert any("We're open" in m for m in debug)
    assert get_store(app).outbox_entry(delivery) is None
    assert job_for(app, delivery).status == "done"


def test_call_records_are_stored_once_and_listed(make_app):
    app = make_app()
    ended = payload("call_ended")
    deliver(app, ended)
    # A second delivery of the same call: a new delivery id, signed anew.
    deliver(app, ended, timestamp=NOW + 1)
    deliver(app, payload("call_ended", callId="call_two", durationSeconds=12.5,
                         callSuccessful=None, summary=None, userSentiment=None))
    assert run_jobs(app) == 3
    store = get_store(app)
    record = store.call_record("call_sim")
    assert {k: record[k] for k in ("call_id", "from_number", "to_number", "duration_seconds",
                                   "summary", "sentiment", "successful")} == {
        "call_id": "call_sim", "from_number": JANE, "to_number": "+15551234567",
        "duration_seconds": 330, "summary": "Caller asked about an order.",
        "sentiment": "Neutral", "successful": True}
    assert record["transcript"] == [{"role": "agent", "content": "Hello"},
                                    {"role": "user", "content": "Where is my order?"}]
    assert len(store.call_records()) == 2

    runner = app.test_cli_runner()
    result = runner.invoke(args=["agentphone", "calls", "--local"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "FROM", "TO", "ENDED", "SECONDS", "SENTIMENT",
                                "SUCCESS", "SUMMARY"]
    assert any(line.startswith("call_sim ") and "330" in line and "yes" in line
               and "Caller asked about an order." in line for line in lines)
    assert any(line.startswith("call_two ") and "12.5" in line for line in lines)
    assert lines[-1] == "2 stored call(s)"
    result = runner.invoke(args=["agentphone", "calls", "--local", "--json", "--limit", "1"])
    assert result.exit_code == 0
    assert [r["call_id"] for r in json.loads(result.output)] in (["call_sim"], ["call_two"])


def test_reactions_are_recorded_without_a_reply(make_app):
    app = make_app()
    delivery = deliver(app, REACTION)
    deliver(app, REACTION, delivery)
    assert run_jobs(app) == 1
    [stored] = get_store(app).reactions()
    assert stored["delivery_id"] == delivery
    assert (stored["reaction_type"], stored["message_id"], stored["from_number"]) == (
        "love", "msg_003", JANE)


@pytest.mark.slow
def test_concurrent_copies_through_gunicorn_send_one_text(gunicorn, fake_api):
    fake_api.on("POST", "/v1/messages", SENT)
    server = gunicorn(workers=2, DEMO_TOOL_LATENCY=0.2, AGENTPHONE_API_KEY=API_KEY,
                      AGENTPHONE_API_URL=fake_api.url)
    raw, headers = signed_request(SECRET, sms("book saturday at 11 for Sam Patel"))
    with ThreadPoolExecutor(10) as pool:
        statuses = list(pool.map(
            lambda _: requests.post(server.webhook, data=raw, headers=headers,
                                    timeout=10).status_code, range(10)))
    assert statuses == [200] * 10
    deadline = time.monotonic() + 15
    while fake_api.count("POST", "/v1/messages") < 1 and time.monotonic() < deadline:
        time.sleep(0.05)
    server.wait_for_log(f"reply msg_1 sent to {JANE}")
    time.sleep(0.5)
    assert fake_api.count("POST", "/v1/messages") == 1
    # One line for the job: its outcome rides on the runner's "done" line.
    assert re.search(rf"job \d+ \(text_message\) done in \d+ ms, attempt 1: reply msg_1 sent "
                     rf"to \{JANE} on sms", server.log())
    assert fake_api.last("POST", "/v1/messages").body["body"].startswith(
        "You're booked for Saturday at 11 AM, Sam Patel.")


def test_one_message_under_two_delivery_ids_is_answered_once(api_app, fake_api):
    deliver(api_app, sms(messageId="msg_777"), delivery_id="whd_first")
    deliver(api_app, sms(messageId="msg_777"), delivery_id="whd_second", timestamp=NOW + 1)
    deliver(api_app, sms(messageId="msg_778"), delivery_id="whd_third")
    assert run_jobs(api_app) == 3
    assert fake_api.count("POST", "/v1/messages") == 2


def test_replies_of_unknown_fate_are_listed_counted_and_resent_only_on_request(
        api_app, fake_api, caplog):
    store = get_store(api_app)
    cli = api_app.test_cli_runner()
    # The API fails mid-request: the text may have gone out.
    fake_api.on("POST", "/v1/messages", json_reply({"detail": "boom"}, 500))
    unknown = deliver(api_app, sms("What are your hours?"))
    run_jobs(api_app)
    first_body = fake_api.last("POST", "/v1/messages").body["body"]
    # The process died between recording "sending" and making the request.
    crashed = deliver(api_app, sms("bye"))
    crashed_job = job_for(api_app, crashed).id
    assert store.outbox_begin(crashed, JANE, "Bye for now!", job_id=crashed_job)[1]
    run_jobs(api_app)
    unknown_job = job_for(api_app, unknown).id
    assert [job_for(api_app, d).status for d in (unknown, crashed)] == ["done", "done"]
    assert store.unsure_reply_count() == 2

    listed = cli.invoke(args=["agentphone", "jobs", "--unsure"])
    assert listed.exit_code == 0, listed.output
    rows = [line.split()[:3] for line in listed.output.splitlines()[1:-1]]
    assert sorted(rows) == sorted([[str(unknown_job), "unknown", JANE],
                                   [str(crashed_job), "sending", JANE]])
    assert "boom" in listed.output
    assert cli.invoke(args=["agentphone", "jobs"]).output.splitlines()[-1].endswith(
        "; unsure replies 2 (jobs --unsure)")

    fake_api.on("POST", "/v1/messages", SENT)
    with caplog.at_level(logging.WARNING):
        resent = cli.invoke(args=["agentphone", "jobs", "resend", str(unknown_job)])
        assert resent.exit_code == 0, resent.output
        assert resent.output.strip() == f"job {unknown_job} queued to resend its reply to {JANE}"
        assert store.outbox_entry(unknown)["status"] == "resend"
        assert run_jobs(api_app) == 1
    assert fake_api.count("POST", "/v1/messages") == 2
    assert fake_api.last("POST", "/v1/messages").body["body"] == first_body  # the stored text
    assert store.outbox_entry(unknown)["status"] == "sent"
    assert f"operator resend: job {unknown_job} queued" in caplog.text
    assert f"job {unknown_job}: resending the reply for delivery {unknown}" in caplog.text
    assert store.unsure_reply_count() == 1

    # Nothing to resend for a sent reply; and not while the job runs (its send may be live).
    refused = cli.invoke(args=["agentphone", "jobs", "resend", str(unknown_job)])
    assert refused.exit_code == 1
    assert f"job {unknown_job} has no unsure reply" in refused.output
    assert store.retry_job(crashed_job) and store.claim_job("w", 60).id == crashed_job
    assert cli.invoke(args=["agentphone", "jobs", "resend", str(crashed_job)]).exit_code == 1
    assert store.outbox_entry(crashed)["status"] == "sending"
    assert fake_api.count("POST", "/v1/messages") == 2


@pytest.mark.parametrize("written_apology", [True, False])
def test_a_text_the_model_could_not_answer_is_retried_then_apologised_for(
        make_app, fake_api, fake_llm, caplog, written_apology):
    from app.agent.llm import APOLOGY
    from app.jobs.handlers import TEXT_FAILURE_MESSAGE

    fake_api.on("POST", "/v1/messages", SENT)
    now = [NOW]
    app = make_app(AGENTPHONE_API_KEY=API_KEY, AGENTPHONE_API_URL=fake_api.url,
                   LLM_BASE_URL=fake_llm.url, LLM_API_KEY="sk-test", JOB_MAX_ATTEMPTS=2,
                   TEXT_FAILURE_REPLY=written_apology, clock=lambda: now[0])
    store = get_store(app)
    for _ in range(4):  # two attempts, each asking the model twice
        fake_llm.script(text("Your order"), no_finish())
    delivery = deliver(app, sms())
    assert run_jobs(app) == 1
    job = job_for(app, delivery)
    assert job.status == "pending" and "could not answer" in job.last_error
    assert fake_api.count("POST", "/v1/messages") == 0  # no voice apology as a text
    now[0] += 60  # the retry is due
    assert run_jobs(app) == 1
    assert job_for(app, delivery).status == "done"
    sent = [r.body["body"] for r in fake_api.requests if r.path == "/v1/messages"]
    assert sent == ([TEXT_FAILURE_MESSAGE] if written_apology else [])
    assert APOLOGY not in sent and len(fake_llm.requests) == 4
    # Replayed by an operator: the apology was the one text; if none went out, the answer goes.
    assert store.retry_job(job.id)
    fake_llm.script(text("It shipped."))
    run_jobs(app)
    sent = [r.body["body"] for r in fake_api.requests if r.path == "/v1/messages"]
    assert sent == ([TEXT_FAILURE_MESSAGE] if written_apology else ["It shipped."])


# -- an agent's own hooks, run by the jobs ------------------------------------------------------


class HookAgent(Agent):
    """Keeps what each hook got; stores call records like the default, reactions not."""

    def __init__(self, fail_reactions=0):
        self.turns, self.records, self.reactions = [], [], []
        self.fail_reactions = fail_reactions

    def respond(self, turn):
        self.turns.append(turn)
        yield Reply(f"Got {len(turn.media_urls)} picture(s).")

    def on_call_ended(self, record):
        self.records.append(record)
        super().on_call_ended(record)

    def on_reaction(self, reaction):
        if self.fail_reactions:
            self.fail_reactions -= 1
            raise RuntimeError("CRM is down")
        self.reactions.append(reaction)


def test_a_custom_agent_hears_call_ends_and_reactions(make_app, fixtures_dir):
    agent = HookAgent(fail_reactions=1)
    app = make_app(AGENT_INSTANCE=agent)
    store = get_store(app)
    deliver(app, json.loads((fixtures_dir / "call_ended-voice.json").read_text()), "whd_call")
    reaction = deliver(app, REACTION)
    assert run_jobs(app) == 2
    [record] = agent.records
    assert isinstance(record, CallRecord)
    assert (record.call_id, record.from_number, record.duration_seconds, record.sentiment,
            record.successful, record.delivery_id) == (
        "call_ghi012", "+15559876543", 330, "Positive", True, "whd_call")
    assert record.transcript == [{"role": "agent", "content": "Hello"},
                                 {"role": "user", "content": "I need help"}]
    assert store.call_record("call_ghi012")["summary"] == "Customer called about an order."
    # The reaction hook failed: the job is retried, and this agent does not store reactions.
    job = job_for(app, reaction)
    assert (job.status, job.last_error) == ("pending", "RuntimeError: CRM is down")
    assert agent.reactions == []
    store.retry_job(job.id)
    assert run_jobs(app) == 1
    [got] = agent.reactions
    assert isinstance(got, Reaction)
    assert (got.reaction_type, got.message_id, got.message_body, got.from_number,
            got.delivery_id, got.channel) == ("love", "msg_003", "Hey", JANE, reaction, "imessage")
    assert store.reactions() == []


def test_a_text_turn_carries_its_message_id_and_media(make_app, fixtures_dir, caplog):
    agent = HookAgent()
    app = make_app(AGENT_INSTANCE=agent)
    mms = sms("", messageId="msg_mms", mediaUrl="https://media.example/a.jpg",
              mediaUrls=["https://media.example/a.jpg", "https://media.example/b.jpg"])
    with caplog.at_level(logging.INFO, logger="app.jobs.handlers"):
        deliver(app, {**mms, "channel": "mms"})
        deliver(app, json.loads((fixtures_dir / "message-imessage.json").read_text()))
        deliver(app, sms("no pictures"))
        assert run_jobs(app) == 3
    assert [(t.channel, t.message_id, t.media_urls) for t in agent.turns] == [
        ("mms", "msg_mms", ("https://media.example/a.jpg", "https://media.example/b.jpg")),
        ("imessage", "msg_003", ("https://media.example/img.jpg",)),
        ("sms", None, ()),
    ]
    assert "reply to +15559876543 on mms not sent" in caplog.text
