"""Counters, histograms and gauges that hold their counts in memory until a flush: the same
samples as the library's own metrics, written by a flush, by the flusher thread, never twice."""

import math
import os
import select
import time

import prometheus_client
import pytest
from prometheus_client import CollectorRegistry

from app import metrics
from app.metrics import Counter, Gauge, Histogram

BUCKETS = (0.001, 0.01, 0.1, 1)
# On a bound, between bounds, past the last one, zero, negative, and an int.
AMOUNTS = (0.001, 0.0005, 0.01, 0.05, 0.1, 1, 7.5, 0, -2.0, 3, 0.1, 1e-9)


def samples(metric):
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in metric.collect() for s in family.samples
            if not s.name.endswith("_created")}


def test_a_histogram_flushed_has_the_librarys_samples():
    ours = Histogram("agentphone_test_h", "A test histogram.", ["kind"], buckets=BUCKETS,
                     registry=CollectorRegistry())
    theirs = prometheus_client.Histogram("agentphone_test_h", "A test histogram.", ["kind"],
                                         buckets=BUCKETS, registry=CollectorRegistry())
    with metrics._write_lock:  # the flusher thread waits meanwhile
        for amount in AMOUNTS:
            ours.labels("a").observe(amount)
            theirs.labels("a").observe(amount)
        ours.labels("b").observe(float("nan"))  # written at once, as the library does
        theirs.labels("b").observe(float("nan"))
        assert samples(ours)[("agentphone_test_h_count", (("kind", "a"),))] == 0  # not yet
    metrics.flush()
    mine, expected = samples(ours), samples(theirs)
    nan_sum = ("agentphone_test_h_sum", (("kind", "b"),))
    assert math.isnan(mine.pop(nan_sum)) and math.isnan(expected.pop(nan_sum))
    assert mine == expected
    assert expected[("agentphone_test_h_count", (("kind", "a"),))] == len(AMOUNTS)


def test_a_counter_flushed_has_the_librarys_samples():
    ours = Counter("agentphone_test_c", "A test counter.", ["outcome"],
                   registry=CollectorRegistry())
    for amount in (1, 2.5, 0, 1):
        ours.labels("ok").inc(amount)
    ours.labels("error").inc()
    with pytest.raises(ValueError):
        ours.labels("ok").inc(-1)  # the library's refusal
    with pytest.raises(ValueError):
        ours.inc()  # a labelled parent counts nothing itself
    with pytest.raises(AttributeError):
        ours.reset()  # nor resets: the library's error, and nothing queued
    with pytest.raises(ValueError):
        ours.inc()
    metrics.flush()
    metrics.flush()  # nothing pending: nothing written twice
    assert samples(ours) == {("agentphone_test_c_total", (("outcome", "ok"),)): 4.5,
                             ("agentphone_test_c_total", (("outcome", "error"),)): 1.0}
    ours.labels("ok").inc(3)
    ours.labels("ok").reset()  # pending counts go with the reset
    metrics.flush()
    assert samples(ours)[("agentphone_test_c_total", (("outcome", "ok"),))] == 0


def test_a_gauge_flushed_has_the_librarys_samples():
    ours = Gauge("agentphone_test_g", "A test gauge.", ["side"], registry=CollectorRegistry())
    theirs = prometheus_client.Gauge("agentphone_test_g", "A test gauge.", ["side"],
                                     registry=CollectorRegistry())
    with metrics._write_lock:  # the flusher thread waits meanwhile
        for gauge in (ours, theirs):
            gauge.labels("a").inc()
            gauge.labels("a").inc(2.5)
            gauge.labels("a").dec()
            gauge.labels("b").dec(3)
        assert samples(ours)[("agentphone_test_g", (("side", "a"),))] == 0  # not yet
    metrics.flush()
    metrics.flush()  # nothing pending: nothing written twice
    assert samples(ours) == samples(theirs) == {("agentphone_test_g", (("side", "a"),)): 2.5,
                                                ("agentphone_test_g", (("side", "b"),)): -3.0}
    with pytest.raises(TypeError):
        ours.labels("a").set(1)  # changes not written yet would overtake it
    with pytest.raises(ValueError):
        ours.inc()  # a labelled parent holds no value itself


def test_the_flusher_thread_writes_counts_without_a_scrape():
    counter = Counter("agentphone_test_flusher", "A test counter.", registry=CollectorRegistry())
    counter.inc(2)
    deadline = time.monotonic() + 20 * metrics.FLUSH_SECONDS
    while counter._value.get() == 0 and time.monotonic() < deadline:
        time.sleep(metrics.FLUSH_SECONDS / 10)
    assert counter._value.get() == 2


def test_a_forked_child_never_writes_its_parents_counts():
    counter = Counter("agentphone_test_fork", "A test counter.", registry=CollectorRegistry())
    counter.inc(5)  # written by the parent, before or after the fork
    read, write = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: its own counts only
        try:
            before = counter._value.get()
            counter.inc(1)
            metrics.flush()
            os.write(write, f"{before} {counter._value.get()}".encode())
        finally:
            os._exit(0)
    os.close(write)
    try:
        assert select.select([read], [], [], 30)[0], "the child did not answer"
        before, after = map(float, os.read(read, 64).decode().split())
    finally:
        os.close(read)
        os.waitpid(pid, 0)
    assert after - before == 1
    metrics.flush()
    assert counter._value.get() == 5


def test_a_failed_write_is_logged_and_the_other_counts_written(monkeypatch, caplog):
    registry = CollectorRegistry()
    broken = Counter("agentphone_test_broken", "A test counter.", registry=registry)
    fine = Counter("agentphone_test_fine", "A test counter.", registry=registry)

    def full_disk(amount):
        raise OSError("No space left on device")

    monkeypatch.setattr(broken._value, "inc", full_disk)
    broken.inc(3)
    fine.inc(2)
    metrics.flush()
    assert "could not write the counts of agentphone_test_broken" in caplog.text
    assert fine._value.get() == 2
    monkeypatch.undo()
    broken.inc(1)
    metrics.flush()
    assert broken._value.get() == 1  # the failed batch's counts are not written twice
