"""PostgreSQL with real processes: gunicorn gevent web workers (JOB_RUNNER=off) and
`flask agentphone worker` job workers sharing one database, as on Heroku or several VMs."""

import collections
import http.client
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import psycopg
import pytest
import requests

from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.servers import LOG_SETTLE_SECONDS, ROOT, stop_process

pytest_plugins = ["tests.postgres"]  # pg_server, pg_url, pg_own_server
pytestmark = pytest.mark.slow

FLASK = Path(sys.executable).with_name("flask")
DONE = re.compile(r"job (\d+) \(text_message\) done")


def wait_until(predicate, timeout, interval=0.1):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(interval)
    return value


def base_env(database_url, **extra):
    env = {
        "AGENTPHONE_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": database_url,
        "JOB_RUNNER": "off",
        "DEMO_TOOL_LATENCY": "0",
        "AGENTPHONE_API_KEY": "",
        "LOG_LEVEL": "INFO",
    }
    env.update({k: str(v) for k, v in extra.items()})
    return env


@dataclass
class JobProcess:
    process: subprocess.Popen
    log_path: Path

    def log(self):
        time.sleep(LOG_SETTLE_SECONDS)  # the lines logged so far are written
        return self.log_path.read_text(errors="replace")

    def done_jobs(self):
        return [int(m) for m in DONE.findall(self.log())]

    def stop(self):
        stop_process(self.process, timeout=15)


@pytest.fixture
def job_workers(tmp_path):
    """``job_workers(env, n)`` -> n running `flask agentphone worker` processes; all stopped
    (SIGTERM, then SIGKILL) after the test."""
    started = []

    def start(env, n=1):
        procs = []
        for _ in range(n):
            log_path = tmp_path / f"job-worker-{len(started)}.log"
            full_env = {**os.environ, "PYTHONUNBUFFERED": "1", **env}
            full_env.pop("AGENTPHONE_DEV", None)
            with log_path.open("w") as log_file:
                process = subprocess.Popen([str(FLASK), "--app", "wsgi", "agentphone", "worker"],
                                           cwd=ROOT, env=full_env, stdout=log_file,
                                           stderr=subprocess.STDOUT)
            proc = JobProcess(process, log_path)
            started.append(proc)
            procs.append(proc)
        for proc in procs:
            if not wait_until(lambda p=proc: "started:" in p.log() or p.process.poll(), 20):
                raise AssertionError(f"job worker did not start:\n{proc.log()[-3000:]}")
            assert proc.process.poll() is None, proc.log()[-3000:]
        return procs

    yield start
    for proc in started:
        proc.stop()


def jobs(database_url):
    with psycopg.connect(database_url, autocommit=True) as conn:
        return conn.execute(
            "SELECT id, delivery_id, status, attempts FROM jobs ORDER BY id").fetchall()


def post(server, raw, headers, timeout=10):
    return requests.post(server.webhook, data=raw, headers=headers, timeout=timeout)


def test_four_web_workers_and_two_job_workers_run_each_job_once(gunicorn, job_workers, pg_url):
    env = base_env(pg_url)
    server = gunicorn(workers=4, **{**env, "LOG_LEVEL": "WARNING", "GUNICORN_ACCESS_LOG": ""})
    workers = job_workers(env, n=2)
    deliveries = [signed_request(SECRET, payload("sms", text=f"Where is my order? ({i})"),
                                 f"whd_pg_{i:03d}") for i in range(200)]
    address = urlsplit(server.url)

    def one_copy(seed):
        """Every delivery once, in its own order, over one keep-alive connection."""
        order = list(range(len(deliveries)))
        random.Random(seed).shuffle(order)
        conn = http.client.HTTPConnection(address.hostname, address.port, timeout=30)
        statuses = collections.Counter()
        try:
            for i in order:
                raw, headers = deliveries[i]
                conn.request("POST", "/webhook", body=raw, headers=headers)
                response = conn.getresponse()
                response.read()
                statuses[response.status] += 1
        finally:
            conn.close()
        return statuses

    started = time.monotonic()
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(one_copy, range(50)))
    elapsed = time.monotonic() - started
    assert sum(results, collections.Counter()) == {200: 50 * 200}
    assert wait_until(lambda: sum(r[2] == "done" for r in jobs(pg_url)) == 200, timeout=30)

    rows = jobs(pg_url)
    assert sorted(r[1] for r in rows) == [f"whd_pg_{i:03d}" for i in range(200)]
    assert {(r[2], r[3]) for r in rows} == {("done", 1)}
    done = collections.Counter(job_id for w in workers for job_id in w.done_jobs())
    assert sorted(done) == sorted(r[0] for r in rows)
    assert set(done.values()) == {1}  # each job id logged done once across both workers
    assert all(w.done_jobs() for w in workers), "both job workers took jobs"
    print(f"10000 deliveries in {elapsed:.1f}s")


def test_job_of_a_killed_worker_completes_once_on_the_other(gunicorn, job_workers, pg_url,
                                                            effects_agent):
    env = base_env(pg_url, JOB_LEASE=2, TEST_TOOL_SECONDS=3, **effects_agent.env)
    server = gunicorn(workers=1, **env)
    workers = job_workers(env, n=2)
    raw, headers = signed_request(SECRET, payload("sms"))
    delivery = headers["X-Webhook-ID"]
    assert post(server, raw, headers).status_code == 200

    victim = wait_until(
        lambda: next((w for w in workers if f"test tool started for {delivery}" in w.log()),
                     None), timeout=10)
    assert victim, [w.log()[-2000:] for w in workers]
    victim.process.send_signal(signal.SIGKILL)  # mid-job: leased, not finished
    victim.process.wait(5)
    [survivor] = [w for w in workers if w is not victim]

    assert wait_until(lambda: jobs(pg_url)[0][2] == "done", timeout=20), survivor.log()[-3000:]
    [(job_id, _, status, attempts)] = jobs(pg_url)
    assert (status, attempts) == ("done", 2)
    assert survivor.done_jobs() == [job_id]
    assert victim.done_jobs() == []
    assert effects_agent.effects() == [delivery]  # the tool finished once, on the survivor
    assert "lease lost" not in survivor.log()


def test_job_worker_sigterm_finishes_the_running_job(gunicorn, job_workers, pg_url,
                                                     effects_agent):
    env = base_env(pg_url, TEST_TOOL_SECONDS=1.5, **effects_agent.env)
    server = gunicorn(workers=1, **env)
    [worker] = job_workers(env, n=1)
    raw, headers = signed_request(SECRET, payload("sms"))
    assert post(server, raw, headers).status_code == 200
    assert wait_until(lambda: "test tool started" in worker.log(), timeout=10)
    worker.process.send_signal(signal.SIGTERM)
    assert worker.process.wait(15) == 0
    log = worker.log()
    assert "stopping: claiming no more jobs; 1 running" in log
    assert len(worker.done_jobs()) == 1
    assert log.rindex("(text_message) done") < log.rindex("stopped")
    assert [(r[2], r[3]) for r in jobs(pg_url)] == [("done", 1)]


def test_postgres_down_at_boot_and_later_then_back(gunicorn, pg_own_server, tmp_path):
    pg = pg_own_server
    url = pg.url(pg.create_database())
    pg.stop()

    def start_when_a_worker_booted_without_it():
        wait_until(lambda: any("will migrate on first use" in p.read_text(errors="replace")
                               for p in tmp_path.glob("gunicorn-*.log")), timeout=15)
        pg.start()

    # Booting while the database is down must not kill gunicorn (it halts when a worker
    # fails to boot): the store migrates once the server is back.
    starter = threading.Thread(target=start_when_a_worker_booted_without_it)
    starter.start()
    try:
        server = gunicorn(workers=2, **base_env(url, JOB_RUNNER="on"))
    finally:
        starter.join()
    assert "will migrate on first use" in server.log()
    pids = server.worker_pids()

    raw, headers = signed_request(SECRET, payload("sms", "before the outage"))
    assert post(server, raw, headers).status_code == 200

    pg.stop()
    raw, headers = signed_request(SECRET, payload("sms", "during the outage"))
    for _ in range(3):  # pooled connections found broken, then no connection to be had
        started = time.monotonic()
        response = post(server, raw, headers)
        assert time.monotonic() - started < 5
        assert response.status_code == 503
        assert response.json()["error"]["code"] == "STORE_UNAVAILABLE"
    started = time.monotonic()
    health = requests.get(server.url + "/healthz", timeout=10)
    assert health.status_code == 503
    assert health.json()["ok"] is False
    assert time.monotonic() - started < 5

    pg.start()
    assert wait_until(
        lambda: requests.get(server.url + "/healthz", timeout=10).status_code == 200, 20)
    # The refused delivery, retried by the platform (the healthy answer above may have come
    # from the other worker, its pool reconnected first); then more, over both workers.
    assert wait_until(lambda: post(server, raw, headers).status_code == 200, 10)
    assert wait_until(lambda: all(
        requests.get(server.url + "/healthz", timeout=10).status_code == 200
        for _ in range(8)), 10)
    assert server.process.poll() is None
    assert server.worker_pids() == pids  # recovered without restarting anything
    assert wait_until(lambda: {r[2] for r in jobs(url)} == {"done"}, 10), jobs(url)
    assert len(jobs(url)) == 2
