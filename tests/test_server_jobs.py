"""Background jobs through the real gunicorn gevent workers: once-only, durable across crashes."""

import os
import re
import signal
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import pytest
import requests

from app.simulator import payload, signed_request
from tests.conftest import SECRET

pytestmark = pytest.mark.slow


def jobs(tmp_path, columns="delivery_id, status, attempts"):
    with sqlite3.connect(tmp_path / "events.db") as conn:
        return conn.execute(f"SELECT {columns} FROM jobs ORDER BY id").fetchall()


def wait_until(predicate, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if result := predicate():
            return result
        time.sleep(0.05)
    raise AssertionError("condition not reached in time")


def test_fifty_concurrent_copies_of_one_delivery_make_one_effect(gunicorn, tmp_path):
    server = gunicorn(workers=2, DEMO_TOOL_LATENCY=0)
    raw, headers = signed_request(SECRET, payload("sms"))

    def post(_):
        return requests.post(server.webhook, data=raw, headers=headers, timeout=10)

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        responses = list(pool.map(post, range(50)))
    assert [r.status_code for r in responses] == [200] * 50
    assert all(r.json() == {"ok": True} for r in responses)
    assert time.monotonic() - started < 10
    delivery = headers["X-Webhook-ID"]
    wait_until(lambda: jobs(tmp_path) == [(delivery, "done", 1)])
    assert server.log().count("duplicate agent.message ignored") == 49
    assert server.log().count("(text_message) done") == 1


def test_job_accepted_before_a_crash_runs_after_restart(gunicorn, tmp_path, effects_agent):
    server = gunicorn(workers=1, JOB_LEASE=2, TEST_TOOL_SECONDS=2, **effects_agent.env)
    raw, headers = signed_request(SECRET, payload("sms"))
    assert requests.post(server.webhook, data=raw, headers=headers, timeout=5).status_code == 200
    delivery = headers["X-Webhook-ID"]
    server.wait_for_log(f"test tool started for {delivery}")
    [worker] = server.worker_pids()
    os.kill(worker, signal.SIGKILL)  # mid-job: the job is leased but not finished
    # gunicorn starts a new worker; its runner takes the job once the lease has run out.
    wait_until(lambda: jobs(tmp_path) == [(delivery, "done", 2)], timeout=30)
    assert effects_agent.effects() == [delivery]
    assert server.log().count(f"test tool started for {delivery}") == 2


def test_jobs_left_by_a_stopped_server_run_on_the_next_start(gunicorn, tmp_path):
    first = gunicorn(workers=1, JOB_RUNNER="off")
    raw, headers = signed_request(SECRET, payload("call_ended"))
    assert requests.post(first.webhook, data=raw, headers=headers, timeout=5).status_code == 200
    first.process.send_signal(signal.SIGKILL)
    first.process.wait(5)
    assert jobs(tmp_path) == [(headers["X-Webhook-ID"], "pending", 0)]
    gunicorn(workers=1)
    wait_until(lambda: jobs(tmp_path) == [(headers["X-Webhook-ID"], "done", 1)])


def test_a_hung_job_is_cancelled_at_the_limit_and_the_others_run(gunicorn, tmp_path,
                                                                  effects_agent):
    # One job at a time: the reactions queued behind the hung text run only if it is cut off.
    server = gunicorn(workers=1, JOB_CONCURRENCY=1, JOB_TIMEOUT=1, JOB_MAX_ATTEMPTS=2,
                      TEST_TOOL_SECONDS=600, **effects_agent.env)
    hung_raw, hung_headers = signed_request(SECRET, payload("sms"))
    hung = hung_headers["X-Webhook-ID"]
    assert requests.post(server.webhook, data=hung_raw, headers=hung_headers,
                         timeout=5).status_code == 200
    server.wait_for_log(f"test tool started for {hung}")
    others = []
    for _ in range(3):
        raw, headers = signed_request(SECRET, payload("call_ended"))
        assert requests.post(server.webhook, data=raw, headers=headers,
                             timeout=5).status_code == 200
        others.append(headers["X-Webhook-ID"])
    wait_until(lambda: all(status == "done" for delivery, status, _ in jobs(tmp_path)
                           if delivery in others), timeout=10)
    server.wait_for_log(f"test tool cancelled for {hung}")
    # Retried after its backoff (about 2 s), timed out again, dead-lettered at 2 attempts.
    wait_until(lambda: jobs(tmp_path, "delivery_id, status, attempts, last_error")[0] == (
        hung, "dead", 2, "JobTimeout: timed out after 1 s"), timeout=15)
    assert server.log().count(f"test tool cancelled for {hung}") == 2
    assert effects_agent.effects() == []


@pytest.mark.parametrize(("tool_seconds", "outcome"), [(1.5, ("done", 1)), (30, ("pending", 0))])
def test_graceful_stop_finishes_or_hands_back_running_jobs(gunicorn, tmp_path, effects_agent,
                                                           tool_seconds, outcome):
    server = gunicorn(workers=1, JOB_GRACE=2, TEST_TOOL_SECONDS=tool_seconds,
                      **effects_agent.env)
    raw, headers = signed_request(SECRET, payload("sms"))
    assert requests.post(server.webhook, data=raw, headers=headers, timeout=5).status_code == 200
    server.wait_for_log(f"test tool started for {headers['X-Webhook-ID']}")
    server.process.send_signal(signal.SIGTERM)  # a deploy: gunicorn stops gracefully
    server.process.wait(30)
    # Finished within the grace, or back in the queue at once with the attempt uncounted;
    # either way not left "running" to wait out its 60 s lease.
    assert jobs(tmp_path) == [(headers["X-Webhook-ID"], *outcome)]
    assert re.search(r"job runner \S+ stopped", server.log())
