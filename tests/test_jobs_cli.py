"""`agentphone jobs [--dead|--status S] [--json]`, `jobs retry ID` and the worker process's loop."""

import json
import threading
import time

import pytest

from app.jobs import get_job_runner
from app.store import get_store

pytest_plugins = ["tests.postgres"]  # database_url


@pytest.fixture
def app(make_app, database_url):
    return make_app(DATABASE_URL=database_url, clock=time.time)


def test_jobs_list_dead_and_retry(app):
    store = get_store(app)
    ok = store.enqueue("reaction", "{}")
    dead = store.enqueue("call_ended", "{}")
    store.claim_job("w", 60)
    store.finish_job(ok)
    store.claim_job("w", 60)
    store.fail_job(dead, "RuntimeError: upstream said no")
    cli = app.test_cli_runner()

    result = cli.invoke(args=["agentphone", "jobs"])
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "KIND", "STATUS", "TRIES", "LAST", "ERROR"]
    assert lines[1].split()[:4] == [str(dead), "call_ended", "dead", "1"]
    assert "RuntimeError: upstream said no" in lines[1]
    assert lines[2].split() == [str(ok), "reaction", "done", "1"]
    assert lines[-1] == "totals: dead 1, done 1"

    result = cli.invoke(args=["agentphone", "jobs", "--dead"])
    assert result.exit_code == 0, result.output
    assert [line.split()[0] for line in result.output.splitlines()[1:-1]] == [str(dead)]

    result = cli.invoke(args=["agentphone", "jobs", "retry", str(dead)])
    assert result.exit_code == 0, result.output
    assert result.output.strip() == f"job {dead} queued again"
    job = store.job(dead)
    assert (job.status, job.attempts) == ("pending", 0)

    result = cli.invoke(args=["agentphone", "jobs", "retry", "999999"])
    assert result.exit_code == 1
    assert "no job 999999" in result.output


def test_jobs_json_and_status(app):
    store = get_store(app)
    done = store.enqueue("reaction", '{"event": "agent.reaction"}', delivery_id="whd_1")
    store.claim_job("w", 60)
    store.finish_job(done)
    pending = store.enqueue("call_ended", "{}")
    cli = app.test_cli_runner()

    result = cli.invoke(args=["agentphone", "jobs", "--json", "--status", "done"])
    assert result.exit_code == 0, result.output
    listed = json.loads(result.stdout)
    assert listed["totals"] == {"done": 1, "pending": 1}
    [job] = listed["jobs"]
    assert {k: job[k] for k in ("id", "kind", "status", "attempts", "delivery_id", "payload")} == {
        "id": done, "kind": "reaction", "status": "done", "attempts": 1,
        "delivery_id": "whd_1", "payload": '{"event": "agent.reaction"}'}
    result = cli.invoke(args=["agentphone", "jobs", "--json", "--status", "pending"])
    assert [j["id"] for j in json.loads(result.stdout)["jobs"]] == [pending]

    result = cli.invoke(args=["agentphone", "jobs", "--status", "failed"])
    assert result.exit_code == 2
    assert "'failed' is not one of 'pending', 'running', 'done', 'dead'" in result.stderr
    assert cli.invoke(args=["agentphone", "jobs", "--limit", "0"]).exit_code == 2


def test_jobs_when_the_store_is_down(app, monkeypatch):
    from app.store import StoreUnavailable

    def down(*args, **kwargs):
        raise StoreUnavailable("postgresql store error: connection refused")

    monkeypatch.setattr(get_store(app), "jobs", down)
    result = app.test_cli_runner().invoke(args=["agentphone", "jobs"])
    assert result.exit_code == 1
    assert "connection refused" in result.output


# -- the worker loop (threads, as in `agentphone worker`) ----------------------------------


@pytest.fixture
def worker(app):
    """``worker(handlers, lease=..., grace=...)`` -> the job runner running in a thread, as in
    `agentphone worker`."""
    started = []

    def start(handlers, lease=60.0, grace=5.0, concurrency=4, timeout=60.0):
        runner = get_job_runner(app)
        runner.handlers, runner.lease, runner.grace = handlers, lease, grace
        runner.timeout = timeout
        runner.concurrency, runner.poll = concurrency, 0.05
        job_worker = runner
        job_worker.result = None

        def main():
            job_worker.result = job_worker.run()

        job_worker.thread = threading.Thread(target=main, daemon=True)
        job_worker.thread.start()
        started.append(job_worker)
        return job_worker

    yield start
    for job_worker in started:
        job_worker.request_stop()
        job_worker.request_stop()
        job_worker.thread.join(10)


def wait_until(predicate, timeout):
    deadline = time.monotonic() + timeout
    while not (value := predicate()) and time.monotonic() < deadline:
        time.sleep(0.05)
    return value


def statuses(store):
    return sorted((j.status, j.attempts) for j in store.jobs())


def test_worker_runs_jobs_then_stops_cleanly(app, worker):
    store = get_store(app)
    ran = []
    for i in range(6):
        store.enqueue("reaction", str(i))
    job_worker = worker({"reaction": lambda job: ran.append(job.payload)})
    assert wait_until(lambda: statuses(store) == [("done", 1)] * 6, timeout=10)
    job_worker.request_stop()
    job_worker.thread.join(5)
    assert not job_worker.thread.is_alive()
    assert job_worker.result == 0
    assert sorted(ran) == [str(i) for i in range(6)]


def test_worker_renews_the_lease_of_a_slow_job(app, worker):
    store = get_store(app)
    job_id = store.enqueue("reaction", "{}")
    worker({"reaction": lambda job: time.sleep(1.5)}, lease=0.6)
    assert wait_until(lambda: store.job(job_id).status == "running", timeout=5)
    stolen = []
    deadline = time.monotonic() + 1.2
    while time.monotonic() < deadline:  # well past the first lease
        if job := store.claim_job("thief", 0.6):
            stolen.append(job)
        time.sleep(0.05)
    assert stolen == []
    assert wait_until(lambda: store.job(job_id).status == "done", timeout=5)
    assert store.job(job_id).attempts == 1


def test_a_hung_job_does_not_hold_the_only_slot(app, worker):
    store = get_store(app)
    hung = store.enqueue("call_ended", "{}")
    worker({"call_ended": lambda job: time.sleep(10),  # a wait inside C: runs on, abandoned
            "reaction": lambda job: None}, concurrency=1, timeout=0.5)
    assert wait_until(lambda: store.job(hung).status == "running", timeout=5)
    queued = [store.enqueue("reaction", str(i)) for i in range(3)]
    assert wait_until(lambda: all(store.job(j).status == "done" for j in queued), timeout=5)
    job = store.job(hung)
    assert (job.status, job.attempts, job.last_error) == (
        "pending", 1, "JobTimeout: timed out after 0.5 s")
    assert job.run_at > time.time()  # retried after the usual backoff


def test_stop_waits_for_running_jobs(app, worker):
    store = get_store(app)
    job_id = store.enqueue("reaction", "{}")
    started = threading.Event()

    def slow(job):
        started.set()
        time.sleep(0.5)

    job_worker = worker({"reaction": slow}, grace=5)
    assert started.wait(5)
    job_worker.request_stop()
    job_worker.thread.join(5)
    assert job_worker.result == 0
    assert store.job(job_id).status == "done"


def test_stop_hands_back_jobs_that_outlast_the_grace(app, worker):
    store = get_store(app)
    first = store.enqueue("reaction", "{}")
    release = threading.Event()
    started = threading.Event()

    def stuck(job):
        started.set()
        release.wait(10)

    job_worker = worker({"reaction": stuck}, grace=0.3, concurrency=1)
    assert started.wait(5)
    queued_later = store.enqueue("reaction", "{}")
    job_worker.request_stop()
    job_worker.thread.join(5)
    release.set()
    assert job_worker.result == 1
    job = store.job(first)
    assert (job.status, job.attempts) == ("pending", 0)  # back in the queue, attempt uncounted
    assert store.job(queued_later).status == "pending"  # never claimed after the stop
