"""Prometheus metrics for every process of the service, served at ``GET /metrics``.

gunicorn's workers and the ``worker`` process each write their own values into
``PROMETHEUS_MULTIPROC_DIR`` (gunicorn.conf.py picks a per-instance default and empties it at
start); a scrape of any web worker adds them all up. Without that directory (``flask run``,
tests) the values are this process's own. Labels come from small fixed sets (event, channel,
outcome, tool, job kind, API endpoint template), never from ids.

Counters, histograms and gauges keep their counts in memory and write them into their values
at most FLUSH_SECONDS later, a batch at a time (a scrape writes its own process's first): a
scrape may miss the last half second of the other processes, and a process killed with SIGKILL
loses its last half second of counts.

Job and reply-outbox gauges are read from the store at scrape time, one grouped query each.
"""

from __future__ import annotations

import atexit
import bisect
import hmac
import logging
import os
import re
from typing import Any

import prometheus_client
from flask import Blueprint, Flask, Response, current_app, request
from gevent.monkey import get_original
from prometheus_client import (
    CONTENT_TYPE_LATEST,
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client import values as _values
from prometheus_client.core import GaugeMetricFamily

from app.runtime import ProcessThread, current_pid
from app.store import get_store

log = logging.getLogger(__name__)

if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
    # gunicorn makes it at start; another server (`flask run`, the worker) may come first.
    os.makedirs(os.environ["PROMETHEUS_MULTIPROC_DIR"], exist_ok=True)
    # The library's file-backed values, made with a native lock (gevent's is Python code, about
    # a third of each increment; no greenlet switches while holding it) and the pid kept at
    # fork (the library reads it, a system call, at every increment).
    _lock, _values.Lock = _values.Lock, get_original("_thread", "allocate_lock")
    try:
        _values.ValueClass = _values.MultiProcessValue(current_pid)
    finally:
        _values.Lock = _lock


class _Children:
    """``labels`` that first looks in the library's own dict of children, without its checks,
    conversions and lock (~4 µs, several times per delivery); anything else (other label
    values than strings, keywords, a child not made yet) goes the library's way. ``remove``
    and ``clear`` change that dict, so they keep working."""

    def labels(self, *labelvalues: Any, **labelkwargs: Any) -> Any:
        if not labelkwargs:
            child = getattr(self, "_metrics", {}).get(labelvalues)
            if child is not None:
                return child
        return super().labels(*labelvalues, **labelkwargs)  # type: ignore[misc]


FLUSH_SECONDS = 0.5  # how long another process's latest counts may stay out of a scrape

# Counts and observations wait here, in memory, and reach the library's values (in
# multiprocess mode, a memory-mapped file) at most FLUSH_SECONDS later, many at once: writing
# each one costs ~15 µs, a dozen times per delivery.
# Reentrant: a finalizer run by the garbage collector while it is held may count too.
_pending_lock = get_original("_thread", "RLock")()
_write_lock = get_original("_thread", "allocate_lock")()  # one batch written at a time
_pending: list[Any] = []  # the metrics holding counts not written yet


def flush() -> None:
    """Write every count and observation made so far in this process into the metrics'
    values, where a scrape reads them. A metric whose write fails is logged and skipped."""
    with _write_lock:
        with _pending_lock:  # only taken from the metrics here: counting never waits on a write
            batch = [(metric, metric._take_pending()) for metric in _pending]
            _pending.clear()
        for metric, counts in batch:
            try:
                metric._write(counts)
            except Exception:  # a full disk, say: these counts are lost, not written twice
                log.exception("metrics: could not write the counts of %s", metric._name)


def _mark_pending(metric: Any) -> None:
    """Queue ``metric`` for the next flush (``_pending_lock`` held)."""
    metric._queued = True
    _pending.append(metric)
    if not _flusher.ensure():  # no thread to be had: scrapes still write this process's counts
        log.error("metrics: could not start the thread that writes counts")


def _flush_forever() -> None:
    sleep = get_original("time", "sleep")  # a native thread: gevent's sleep needs a hub
    while True:
        sleep(FLUSH_SECONDS)
        try:
            flush()
        except Exception:  # the thread goes on: without it only scrapes would write counts
            log.exception("metrics: could not write counts")


_flusher = ProcessThread(_flush_forever)


def _before_fork() -> None:
    _write_lock.acquire()  # no batch half written, nor a count half made, in the child
    _pending_lock.acquire()


def _after_fork_in_parent() -> None:
    _pending_lock.release()
    _write_lock.release()


def _forget_pending() -> None:
    """In a forked child: the parent's unwritten counts are the parent's to write."""
    global _pending_lock, _write_lock
    _pending_lock = get_original("_thread", "RLock")()
    _write_lock = get_original("_thread", "allocate_lock")()
    for metric in _pending:
        metric._take_pending()
    _pending.clear()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork_in_parent,
                    after_in_child=_forget_pending)
atexit.register(flush)


class _Total:
    """A metric with one value, whose changes wait in memory for the next ``flush``."""

    _queued = False
    _change: float | None = None  # None: a labelled parent, which holds no value itself
    _value: Any  # the library's value, made by its _metric_init

    def _metric_init(self) -> None:
        super()._metric_init()  # type: ignore[misc]
        self._change = 0.0

    def _add(self, amount: float) -> None:
        with _pending_lock:
            self._change += amount  # type: ignore[operator]
            if not self._queued:
                _mark_pending(self)

    def _take_pending(self) -> float:
        """The change not written yet, now taken (``_pending_lock`` held)."""
        change = self._change
        assert change is not None  # queued by _add(): not a labelled parent
        self._change, self._queued = 0.0, False
        return change

    def _write(self, change: float) -> None:
        self._value.inc(change)


class Counter(_Children, _Total, prometheus_client.Counter):
    """A counter whose increments are written at the next ``flush``."""

    def inc(self, amount: float = 1, exemplar: dict[str, str] | None = None) -> None:
        if self._change is None or amount < 0 or exemplar:
            return super().inc(amount, exemplar)  # the library's errors, and exemplars
        self._add(amount)

    def reset(self) -> None:
        if self._change is None:
            return super().reset()  # the library's error
        with _pending_lock:
            self._take_pending()
            super().reset()


class Histogram(_Children, prometheus_client.Histogram):
    """A histogram whose observations are written at the next ``flush``."""

    _queued = False
    _counts: list[int] | None = None  # per bucket (not cumulative); None: a labelled parent
    _total = 0.0

    def _metric_init(self) -> None:
        super()._metric_init()
        self._counts = [0] * len(self._upper_bounds)

    def observe(self, amount: float, exemplar: dict[str, str] | None = None) -> None:
        if self._counts is None or exemplar or amount != amount:  # NaN: in no bucket
            return super().observe(amount, exemplar)
        bucket = bisect.bisect_left(self._upper_bounds, amount)  # the first bound >= amount
        with _pending_lock:
            self._counts[bucket] += 1
            self._total += amount
            if not self._queued:
                _mark_pending(self)

    def _take_pending(self) -> tuple[list[int], float]:
        """The bucket counts and sum not written yet, now taken (``_pending_lock`` held)."""
        counts = self._counts
        assert counts is not None  # queued by observe(): not a labelled parent
        # A count made by a finalizer while the new list is made lands in the one taken.
        self._counts = [0] * len(self._upper_bounds)
        total, self._total, self._queued = self._total, 0.0, False
        return counts, total

    def _write(self, pending: tuple[list[int], float]) -> None:
        counts, total = pending
        self._sum.inc(total)
        for bucket, count in enumerate(counts):
            if count:
                self._buckets[bucket].inc(count)


class Gauge(_Children, _Total, prometheus_client.Gauge):
    """A gauge of running totals whose changes are written at the next ``flush``.

    It has ``inc`` and ``dec`` but no ``set``: a value written at once would be overtaken by
    changes made before it and written after."""

    def inc(self, amount: float = 1) -> None:
        if self._change is None:
            return super().inc(amount)  # the library's error
        self._add(amount)

    def dec(self, amount: float = 1) -> None:
        self.inc(-amount)

    def set(self, value: float) -> None:
        raise TypeError(f"{self._name}: a gauge of running totals has only inc and dec")


LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
TURN_BUCKETS = (0.1, 0.25, 0.5, 1, 2, 3, 5, 8, 13, 20, 30, 60, 120)

DELIVERIES = Counter("agentphone_deliveries", "Webhook deliveries by event, channel and outcome "
                     "(accepted, duplicate, replay, ignored, or the HTTP status of a refusal).",
                     ["event", "channel", "outcome"])
FIRST_LINE = Histogram("agentphone_voice_first_line_seconds", "From a voice turn's arrival to "
                       "its first NDJSON line handed to the socket.", buckets=LATENCY_BUCKETS)
FINAL_LINE = Histogram("agentphone_voice_final_line_seconds", "From a voice turn's arrival to "
                       "its final line handed to the socket.", buckets=TURN_BUCKETS)
VOICE_OUTCOMES = Counter("agentphone_voice_turns", "Voice turns by how they ended (answered, "
                         "deadline fallback, agent_error, hangup, store_unavailable: not "
                         "claimed before the deadline).", ["outcome"])
IN_FLIGHT = Gauge("agentphone_voice_turns_in_flight", "Voice turns being streamed now.",
                  multiprocess_mode="livesum")
TOOL_CALLS = Counter("agentphone_tool_calls", "Tool calls by tool and outcome.",
                     ["tool", "outcome"])
TOOL_SECONDS = Histogram("agentphone_tool_seconds", "Tool call durations.", ["tool"],
                         buckets=TURN_BUCKETS)
LLM_ROUNDS = Counter("agentphone_llm_rounds", "Model calls made by the LLM agent, by outcome.",
                     ["outcome"])
LLM_FIRST_TOKEN = Histogram("agentphone_llm_first_token_seconds", "From a model request to "
                            "its first streamed token.", buckets=TURN_BUCKETS)
JOB_SECONDS = Histogram("agentphone_job_seconds", "Background job attempts by kind.", ["kind"],
                        buckets=TURN_BUCKETS)
JOB_OUTCOMES = Counter("agentphone_job_attempts", "Job attempts by kind and outcome (done, "
                       "retry, dead).", ["kind", "outcome"])
API_REQUESTS = Counter("agentphone_api_requests", "AgentPhone API requests by endpoint and HTTP "
                       "status (error: no response).", ["method", "endpoint", "status"])
API_RETRIES = Counter("agentphone_api_retries", "AgentPhone API requests sent again.",
                      ["method", "endpoint"])
API_RETRY_AFTER = Counter("agentphone_api_retry_after_seconds", "Seconds waited because the API "
                          "answered with Retry-After.")
STORE_SECONDS = Histogram("agentphone_store_seconds", "Store operations (one transaction or "
                          "statement each).", buckets=LATENCY_BUCKETS)
LOOP_BLOCKS = Counter("agentphone_loop_blocks", "Times a worker's event loop was blocked longer "
                      "than LOOP_BLOCK_THRESHOLD.")

_ID_SEGMENT = re.compile(r"/(?:[a-z]+_[A-Za-z0-9-]+|[0-9a-f-]{16,}|\d+)(?=/|$)")


def endpoint(path: str) -> str:
    """An API path with its ids replaced, e.g. ``/v1/calls/{id}/transcript``."""
    return _ID_SEGMENT.sub("/{id}", path.split("?", 1)[0])


def tool_called(name: str, arguments: dict, value: object, error: BaseException | None,
                seconds: float) -> None:
    """``Agent.observe_tools`` callback: count the call and time it."""
    if error is None:
        outcome = "ok"
    elif isinstance(error, Exception):
        outcome = "error"
    else:
        outcome = "cancelled"  # the turn's deadline or a hang-up interrupted it
    TOOL_CALLS.labels(name, outcome).inc()
    TOOL_SECONDS.labels(name).observe(seconds)


class StoreCollector:
    """Job counts by kind and state, and replies whose fate is unknown, read at scrape."""

    def __init__(self, store: object) -> None:
        self.store = store

    def collect(self):
        jobs = GaugeMetricFamily("agentphone_jobs", "Background jobs by kind and state "
                                 "(finished jobs are not counted).", labels=["kind", "state"])
        unsure = GaugeMetricFamily("agentphone_replies_unknown", "Text replies that may or may "
                                   "not have been sent (the process died or the API did not "
                                   "answer mid-send).")
        try:
            for kind, state, count in self.store.open_job_counts():
                jobs.add_metric([kind, state], count)
            unsure.add_metric([], self.store.unsure_reply_count())
        except Exception:  # a scrape must answer even when the store cannot
            current_app.logger.exception("metrics: could not read job counts from the store")
        yield jobs
        yield unsure


bp = Blueprint("metrics", __name__)


@bp.get("/metrics")
def scrape() -> Response:
    token = current_app.config.get("METRICS_TOKEN")
    if token:
        given = request.headers.get("Authorization", "")
        if not hmac.compare_digest(given.encode(), f"Bearer {token}".encode()):
            return Response("metrics need Authorization: Bearer <METRICS_TOKEN>\n", 401,
                            {"WWW-Authenticate": "Bearer"}, mimetype="text/plain")
    flush()  # this process's latest counts; the others' are at most FLUSH_SECONDS old
    if os.environ.get("PROMETHEUS_MULTIPROC_DIR"):
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)
    else:
        registry = CollectorRegistry()
        registry.register(_Process())
    registry.register(StoreCollector(get_store()))
    return Response(generate_latest(registry), mimetype=CONTENT_TYPE_LATEST)


class _Process:
    """This process's own metrics (single-process mode)."""

    def collect(self):
        for family in REGISTRY.collect():
            if family.name.startswith("agentphone_"):
                yield family


def init_app(app: Flask) -> None:
    app.register_blueprint(bp)
