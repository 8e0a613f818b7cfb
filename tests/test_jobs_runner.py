"""Job outcomes: success, retry with backoff, dead-letter, unknown kinds, lost workers,
attempts past the time limit."""

import threading
import time

import pytest

from app.jobs import get_job_runner
from app.jobs.runner import retry_delay
from app.runtime import Cancelled
from app.store import StoreUnavailable, get_store


@pytest.fixture
def runner(app):
    runner = get_job_runner(app)
    calls = []

    def flaky(job):
        calls.append(job.attempts)
        if job.payload == "fail":
            raise RuntimeError("upstream down")

    runner.handlers = {"flaky": flaky}
    runner.calls = calls
    return runner


@pytest.fixture
def clock(app):
    now = [1000.0]
    get_store(app).clock = lambda: now[0]
    return now


def test_success_runs_once(runner, clock):
    job_id = runner.store.enqueue("flaky", "ok")
    assert runner.run_pending() == 1
    assert runner.run_pending() == 0
    assert runner.store.job(job_id).status == "done"
    assert runner.calls == [1]


def test_failures_back_off_then_dead_letter(runner, clock):
    job_id = runner.store.enqueue("flaky", "fail")
    for attempt in range(1, runner.max_attempts + 1):
        assert runner.run_pending() == 1
        job = runner.store.job(job_id)
        assert job.attempts == attempt
        assert job.last_error == "RuntimeError: upstream down"
        if attempt < runner.max_attempts:
            assert job.status == "pending"
            assert job.run_at > clock[0]
            assert runner.run_pending() == 0  # not due yet
            clock[0] = job.run_at
    assert runner.store.job(job_id).status == "dead"
    assert runner.calls == list(range(1, runner.max_attempts + 1))
    assert runner.store.retry_job(job_id)
    assert runner.store.job(job_id).status == "pending"


def test_unknown_kind_is_dead_lettered(runner, clock):
    job_id = runner.store.enqueue("nobody-handles-this", "{}")
    runner.run_pending()
    job = runner.store.job(job_id)
    assert (job.status, job.last_error) == ("dead", "no handler for 'nobody-handles-this'")


def test_job_whose_workers_keep_dying_is_dead_lettered(runner, clock):
    job_id = runner.store.enqueue("flaky", "ok")
    for _ in range(runner.max_attempts):
        assert runner.store.claim_job("doomed", lease=5) is not None  # claimed, never finished
        clock[0] += 6
    runner.run_pending()
    job = runner.store.job(job_id)
    assert (job.status, job.last_error) == ("dead", "worker lost while running the job")
    assert runner.calls == []


def test_an_attempt_past_the_limit_is_cancelled_failed_and_dead_lettered(runner, clock):
    runner.timeout = 0.3
    cancelled = threading.Event()

    def hang(job):
        try:
            while True:  # a handler stuck in a loop of short waits
                time.sleep(0.01)
        except Cancelled:
            cancelled.set()
            raise

    runner.handlers["hang"] = hang
    hung = runner.store.enqueue("hang", "{}")
    ok = runner.store.enqueue("flaky", "ok")
    for attempt in range(1, runner.max_attempts + 1):
        cancelled.clear()
        started = time.monotonic()
        assert runner.run_pending() >= 1
        assert time.monotonic() - started < 2
        assert cancelled.wait(2)  # the thread itself was stopped, not just left behind
        job = runner.store.job(hung)
        assert (job.attempts, job.last_error) == (attempt, "JobTimeout: timed out after 0.3 s")
        clock[0] = job.run_at
    assert runner.store.job(hung).status == "dead"
    assert runner.store.job(ok).status == "done"


@pytest.mark.parametrize("payload", ["ok", "fail"])
def test_an_outcome_the_store_could_not_take_is_recorded_when_it_is_back(
        runner, clock, monkeypatch, caplog, payload):
    monkeypatch.setattr("app.jobs.runner.RECORD_RETRY_SECONDS", 0.01)
    store = runner.store
    refusals = []
    for name in ("finish_job", "fail_job"):
        real = getattr(store, name)

        def down_twice(*args, real=real, **kwargs):
            if len(refusals) < 2:
                refusals.append(args[0])
                raise StoreUnavailable("connection refused")
            return real(*args, **kwargs)

        monkeypatch.setattr(store, name, down_twice)
    job_id = store.enqueue("flaky", payload)
    assert runner.run_pending() == 1
    job = store.job(job_id)
    assert job.status == ("done" if payload == "ok" else "pending")
    assert refusals == [job_id, job_id]
    assert runner.calls == [1]  # recorded, not run again
    assert caplog.text.count("not recorded yet, store unavailable") == 2


def test_an_outcome_is_given_up_on_after_half_a_lease(runner, clock, monkeypatch):
    monkeypatch.setattr("app.jobs.runner.RECORD_RETRY_SECONDS", 0.01)
    runner.lease = 0.2
    attempts = []

    def down(job_id, owner=None):
        attempts.append(job_id)
        raise StoreUnavailable("connection refused")

    monkeypatch.setattr(runner.store, "finish_job", down)
    job_id = runner.store.enqueue("flaky", "ok")
    with pytest.raises(StoreUnavailable):
        runner.run_pending()
    assert len(attempts) >= 2  # tried again, then gave up instead of waiting on
    assert runner.store.job(job_id).status == "running"  # its lease runs out, it runs again


@pytest.mark.parametrize(("attempt", "low", "high"), [(1, 1.5, 2.5), (2, 3, 5), (5, 24, 40),
                                                      (20, 450, 750)])
def test_retry_delay_grows_and_is_capped(attempt, low, high):
    assert low <= retry_delay(attempt, rand=lambda: 0.0) <= high
    assert low <= retry_delay(attempt, rand=lambda: 1.0) <= high
