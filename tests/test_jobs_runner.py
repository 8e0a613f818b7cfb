"""Job outcomes: success, retry with backoff, dead-letter, unknown kinds, lost workers,
attempts past the time limit."""

import threading
import time

import pytest

from app.jobs import get_job_runner
from app.jobs.runner import retry_delay
from app.runtime import Cancelled
from app.store import get_store


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


@pytest.mark.parametrize(("attempt", "low", "high"), [(1, 1.5, 2.5), (2, 3, 5), (5, 24, 40),
                                                      (20, 450, 750)])
def test_retry_delay_grows_and_is_capped(attempt, low, high):
    assert low <= retry_delay(attempt, rand=lambda: 0.0) <= high
    assert low <= retry_delay(attempt, rand=lambda: 1.0) <= high
