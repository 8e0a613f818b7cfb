"""Metrics at /metrics across workers, and logs: one stream, text or JSON, with ids."""

import contextlib
import json
import signal
import sqlite3
import time

import pytest
import requests
from prometheus_client.parser import text_string_to_metric_families

from app.agentphone import AgentPhoneClient
from app.metrics import (
    API_REQUESTS,
    API_RETRIES,
    API_RETRY_AFTER,
    FLUSH_SECONDS,
    endpoint,
    flush,
)
from app.simulator import payload, signed_request
from tests.fake_agentphone import API_KEY, fake_api_fixture, json_reply  # noqa: F401
from tests.servers import post_stream

pytestmark = pytest.mark.slow


def scrape(server, token=None):
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    response = requests.get(server.url + "/metrics", headers=headers, timeout=10)
    assert response.status_code == 200, response.text
    values = {}
    for family in text_string_to_metric_families(response.text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            values[key] = values.get(key, 0) + sample.value
    return values


def value(values, name, **labels):
    return values.get((name, tuple(sorted(labels.items()))), 0)


def scrape_once_written(server, deliveries, token=None):
    """A scrape taken once every process has written its counts of ``deliveries`` deliveries
    (each process writes its counts within FLUSH_SECONDS)."""
    deadline = time.monotonic() + 10 * FLUSH_SECONDS
    while True:
        values = scrape(server, token)
        counted = sum(v for (name, _), v in values.items()
                      if name == "agentphone_deliveries_total")
        if counted >= deliveries or time.monotonic() > deadline:
            return values
        time.sleep(FLUSH_SECONDS / 5)


def test_metrics_add_up_every_worker(gunicorn, secret, effects_agent):
    server = gunicorn(workers=2, METRICS_TOKEN="scrape-me", JOB_RUNNER="off",
                      VOICE_TIMEOUT=5, TEST_TOOL_SECONDS=0.2, **effects_agent.env)
    assert requests.get(server.url + "/metrics", timeout=10).status_code == 401
    voice = [signed_request(secret, payload("voice", f"turn {n}")) for n in range(6)]
    for raw, headers in voice:
        resp, lines = post_stream(server.webhook, raw, headers)
        assert resp.status_code == 200 and not lines[-1][1].get("interim")
    post_stream(server.webhook, *voice[0])  # the platform's retry: a duplicate
    for n in range(4):
        raw, headers = signed_request(secret, payload("sms", f"text {n}"))
        assert requests.post(server.webhook, data=raw, headers=headers).status_code == 200
    raw, headers = signed_request("whsec_forged", payload("sms", "x"))
    assert requests.post(server.webhook, data=raw, headers=headers).status_code == 401
    values = scrape_once_written(server, 12, "scrape-me")
    assert value(values, "agentphone_deliveries_total", event="agent.message",
                 channel="voice", outcome="accepted") == 6
    assert value(values, "agentphone_deliveries_total", event="agent.message",
                 channel="voice", outcome="duplicate") == 1
    assert value(values, "agentphone_deliveries_total", event="agent.message",
                 channel="sms", outcome="accepted") == 4
    assert value(values, "agentphone_deliveries_total", event="other", channel="none",
                 outcome="401") == 1
    # The retry streams too (interim line, then the first attempt's answer).
    assert value(values, "agentphone_voice_first_line_seconds_count") == 7
    assert value(values, "agentphone_voice_final_line_seconds_count") == 7
    assert value(values, "agentphone_voice_turns_total", outcome="answered") == 7
    assert 6 * 0.2 <= value(values, "agentphone_voice_final_line_seconds_sum") < 60
    assert value(values, "agentphone_voice_turns_in_flight") == 0
    assert value(values, "agentphone_jobs", kind="text_message", state="pending") == 4
    assert value(values, "agentphone_store_seconds_count") > 10


def test_a_late_turn_and_a_hangup_are_counted(gunicorn, secret, effects_agent):
    server = gunicorn(workers=1, VOICE_TIMEOUT=5, TEST_TOOL_SECONDS=30, **effects_agent.env)
    raw, headers = signed_request(secret, payload("voice", "slow"))
    with requests.post(server.webhook, data=raw, headers=headers, stream=True, timeout=10) as r:
        lines = r.iter_lines()
        next(lines)  # the interim line: the turn is held
        # The worker holding it answers the scrape, writing its latest changes first.
        assert value(scrape(server), "agentphone_voice_turns_in_flight") == 1
        final = json.loads([line for line in lines if line][-1])
    assert final["text"].startswith("Sorry")
    raw, headers = signed_request(secret, payload("voice", "hang up on me"))
    with requests.post(server.webhook, data=raw, headers=headers, stream=True, timeout=10) as r:
        next(r.iter_lines())  # the interim line, then the caller is gone
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        values = scrape(server)
        if value(values, "agentphone_voice_turns_total", outcome="hangup"):
            break
        time.sleep(0.2)
    assert value(values, "agentphone_voice_turns_total", outcome="deadline") == 1
    assert value(values, "agentphone_voice_turns_total", outcome="hangup") == 1
    assert value(values, "agentphone_voice_turns_in_flight") == 0


def test_a_stopping_worker_writes_the_delivery_logs_last_rows(gunicorn, secret, tmp_path):
    server = gunicorn(workers=1, JOB_RUNNER="off")
    sent = []
    for n in range(5):
        raw, headers = signed_request(secret, payload("sms", f"text {n}"))
        assert requests.post(server.webhook, data=raw, headers=headers,
                             timeout=10).status_code == 200
        sent.append(headers["X-Webhook-ID"])
    # A deploy, before the log's first timed flush (a second after its first row): only the
    # stopping worker's own flush can write these rows.
    server.process.send_signal(signal.SIGTERM)
    server.process.wait(30)
    with contextlib.closing(sqlite3.connect(tmp_path / "events.db")) as conn:
        rows = conn.execute("SELECT delivery_id, outcome FROM delivery_log").fetchall()
    assert sorted(rows) == sorted((delivery, "accepted") for delivery in sent)


def test_api_requests_retries_and_retry_after_waits_are_counted(fake_api):
    fake_api.on("GET", "/v1/calls/call_1",
                json_reply({"error": {"message": "slow down"}}, 429, {"Retry-After": "1"}),
                {"id": "call_1", "status": "completed"})
    where = endpoint("/v1/calls/call_1")
    assert where == "/v1/calls/{id}"
    flush()
    before = (API_REQUESTS.labels("GET", where, "200")._value.get(),
              API_RETRIES.labels("GET", where)._value.get(), API_RETRY_AFTER._value.get())
    with AgentPhoneClient(API_KEY, base_url=fake_api.url, backoff_factor=0.01) as client:
        assert client.get_call("call_1").status == "completed"
    flush()
    after = (API_REQUESTS.labels("GET", where, "200")._value.get(),
             API_RETRIES.labels("GET", where)._value.get(), API_RETRY_AFTER._value.get())
    assert after[0] - before[0] == 1 and after[1] - before[1] == 1
    assert after[2] - before[2] == pytest.approx(1.0)


def test_json_logs_on_one_stream_with_ids(gunicorn, secret, tmp_path):
    # DEBUG: the demo tool's line is one the agent writes during the turn.
    server = gunicorn(workers=1, LOG_FORMAT="json", DEMO_TOOL_LATENCY=0, LOG_LEVEL="DEBUG")
    raw, headers = signed_request(secret, payload("voice", "where is order 4521?"),
                                  delivery_id="whd_voice_1")
    post_stream(server.webhook, raw, headers)
    raw, headers = signed_request(secret, payload("sms", "my card number is 4111"),
                                  delivery_id="whd_text_1")
    requests.post(server.webhook, data=raw, headers=headers, timeout=10)
    server.wait_for_log('"job_id"')
    time.sleep(0.5)
    records = [json.loads(line) for line in server.log().splitlines() if line.strip()]
    assert {"time", "level", "logger", "message"} <= set(records[0])
    voice = [r for r in records if r.get("delivery_id") == "whd_voice_1"]
    assert {r["logger"] for r in voice} >= {"gunicorn.access", "app.demo.agent"}
    assert all(r["call_id"] == "call_sim" and r["agent_id"] == "agt_demo" and
               r["channel"] == "voice" for r in voice)
    access = next(r for r in voice if r["logger"] == "gunicorn.access")
    assert "delivery=whd_voice_1" in access["message"] and "ms" in access["message"]
    job = [r for r in records if r.get("job_id") is not None]
    assert job and all(r["attempt"] == 1 and r["delivery_id"] == "whd_text_1" for r in job)


def test_an_empty_access_log_setting_turns_access_lines_off(gunicorn, secret):
    server = gunicorn(workers=1, GUNICORN_ACCESS_LOG="", DEMO_TOOL_LATENCY=0)
    raw, headers = signed_request(secret, payload("sms", "hi"), delivery_id="whd_quiet")
    requests.post(server.webhook, data=raw, headers=headers, timeout=10)
    server.wait_for_log("whd_quiet")  # the app's own line about the delivery
    assert "gunicorn.access" not in server.log()


def test_text_logs_go_to_stderr_only_and_carry_no_bodies(gunicorn, secret, tmp_path):
    import subprocess

    from tests.servers import GUNICORN, ROOT, free_port

    port = free_port()
    env = {"PATH": "/usr/bin:/bin", "PORT": str(port), "AGENTPHONE_WEBHOOK_SECRET": secret,
           "DATABASE_URL": "sqlite:///" + str(tmp_path / "l.db"), "WEB_CONCURRENCY": "1",
           "DEMO_TOOL_LATENCY": "0"}
    process = subprocess.Popen([str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                               env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        deadline = time.monotonic() + 30
        while time.monotonic() < deadline:
            try:
                requests.get(f"http://127.0.0.1:{port}/healthz", timeout=1)
                break
            except requests.RequestException:
                time.sleep(0.2)
        raw, headers = signed_request(secret, payload("sms", "my card number is 4111"),
                                      delivery_id="whd_s")
        requests.post(f"http://127.0.0.1:{port}/webhook", data=raw, headers=headers, timeout=10)
        time.sleep(1.0)  # the job runs (a graceful stop also lets a running job finish)
    finally:
        process.terminate()
        out, err = process.communicate(timeout=30)
    assert out == ""
    assert "gunicorn.access: access 127.0.0.1" in err and "delivery=whd_s" in err
    assert "job_id=" in err and "4111" not in err  # deployed at INFO: no message bodies


def test_labelled_children_are_made_again_after_remove_and_clear(monkeypatch):
    from prometheus_client import CollectorRegistry

    from app.metrics import Counter

    monkeypatch.delenv("PROMETHEUS_MULTIPROC_DIR", raising=False)  # removal is single-process
    counter = Counter("agentphone_test_children", "A test counter.", ["outcome"],
                      registry=CollectorRegistry())
    first = counter.labels("ok")
    assert counter.labels("ok") is first
    assert counter.labels(outcome="ok") is first
    counter.remove("ok")
    second = counter.labels("ok")
    assert second is not first  # the removed child is never handed out again
    counter.clear()
    assert counter.labels("ok") not in (first, second)
