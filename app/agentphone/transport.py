"""HTTP transport: one requests.Session whose urllib3 Retry is the only place retries happen.

Retry policy (contract 5.3, D32, D33):
* GET/DELETE: connection errors, read errors, and 408, 429, 500, 502, 503, 504.
* POST: only 429 and 503 (the server refused the work), plus failures to connect (nothing
  was sent). Never a read timeout or a dropped connection after sending: there is no
  idempotency key, and a retried send could text someone twice.
* Wait: `Retry-After` (seconds or HTTP-date) when given, else exponential backoff with
  jitter; every wait capped at `max_wait`.

Deadline: one call (connects, every attempt, the whole response body) fits in `budget`
seconds. Each attempt's socket timeouts are cut to the time left, a retry that could not
start in time is not made, and the body is read in arrived pieces with each wait cut to the
time left, so a server trickling body bytes cannot stretch a call past its deadline. (The
status line and headers are read by http.client: there only each wait is bounded.)
"""

import contextlib
import random
import time
from contextvars import ContextVar

import requests
from requests.adapters import HTTPAdapter
from urllib3 import HTTPConnectionPool, HTTPSConnectionPool
from urllib3.exceptions import HTTPError as Urllib3HTTPError
from urllib3.exceptions import (
    MaxRetryError,
    NewConnectionError,
    ReadTimeoutError,
    ResponseError,
)
from urllib3.util.retry import Retry
from urllib3.util.timeout import Timeout

from app.agentphone.errors import parse_retry_after
from app.metrics import API_RETRIES, API_RETRY_AFTER, endpoint

IDEMPOTENT_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
POST_RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

# (deadline as a time.monotonic() value, whether socket reads are cut to it) of the API call
# in progress; set by `call_deadline`. A context variable, not an attribute, because one
# Session serves many threads/greenlets at once.
_deadline = ContextVar("agentphone_call_deadline", default=(None, False))


class DeadlineExceeded(requests.Timeout):
    """The call's deadline passed before its response was complete."""


@contextlib.contextmanager
def call_deadline(budget, cut_reads=True):
    """Bound the requests made inside the block, retries included, to `budget` seconds in
    all: each attempt's connect timeout (and read timeout, with ``cut_reads``) is cut to the
    time left. Yields the deadline (a `time.monotonic()` value, None without a budget)."""
    deadline = None if budget is None else time.monotonic() + budget
    token = _deadline.set((deadline, cut_reads))
    try:
        yield deadline
    finally:
        _deadline.reset(token)


def within(timeout, deadline):
    """`timeout` (seconds, or a (connect, read) pair) cut to the time left before `deadline`."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    if isinstance(timeout, tuple):
        return tuple(left if t is None else min(t, left) for t in timeout)
    return left if timeout is None else min(timeout, left)


def read_body(response, deadline, read_timeout=None, size=65536):
    """Read the whole body of a `stream=True` response by `deadline` and keep it as the
    response's content. Raises DeadlineExceeded, or requests' ReadTimeout/ConnectionError."""
    raw = response.raw
    sock = getattr(raw.connection, "sock", None)
    chunks = []
    try:
        while True:
            if deadline is not None and deadline <= time.monotonic():
                raise DeadlineExceeded(f"response not complete within the deadline "
                                       f"({sum(map(len, chunks))} bytes read)")
            wait = within(read_timeout, deadline)
            if sock is not None and wait is not None:
                sock.settimeout(wait)
            # read1: whatever has arrived, instead of waiting for `size` bytes.
            chunk = raw.read1(size, decode_content=True)
            if not chunk:
                break
            chunks.append(chunk)
    except DeadlineExceeded:  # before OSError: requests' exceptions are OSErrors
        response.close()  # closes the half-read connection instead of pooling it
        raise
    except ReadTimeoutError as exc:
        response.close()
        raise requests.ReadTimeout(exc, response=response) from exc
    except (Urllib3HTTPError, OSError) as exc:
        response.close()
        raise requests.ConnectionError(exc, response=response) from exc
    # What Response.content caches: it, .text and .json() keep working.
    response._content = b"".join(chunks)
    response._content_consumed = True
    response.close()
    return response


def request_sent(exc):
    """Whether a call that failed with requests' ``exc`` may have reached the server: False
    only when its last attempt made no connection (refused, DNS, connect timeout). Earlier
    attempts of a POST were retried only when the server refused the work (429, 503) or
    nothing was sent, so they never count."""
    if isinstance(exc, requests.ConnectTimeout):
        return False
    if not isinstance(exc, requests.ConnectionError) or not exc.args:
        return True
    reason = exc.args[0]
    if isinstance(reason, MaxRetryError):
        reason = reason.reason
    return not isinstance(reason, NewConnectionError)  # DNS failures are NewConnectionErrors


class AgentPhoneRetry(Retry):
    """urllib3 Retry with the per-method status lists, capped waits and a per-call budget.

    Subclassed because stock Retry has one status list for every allowed method, retries
    the first failure without any pause, and knows nothing of a time budget.
    """

    def is_retry(self, method, status_code, has_retry_after=False):
        if not self.total:
            return False
        method = method.upper()
        if method in IDEMPOTENT_METHODS:
            return status_code in IDEMPOTENT_RETRY_STATUSES
        return method == "POST" and status_code in POST_RETRY_STATUSES

    def get_backoff_time(self):
        # Stock urllib3 waits 0 s before the first retry; a 503 deserves a pause.
        return backoff_delay(len(self.history), self.backoff_factor, self.backoff_max,
                             self.backoff_jitter)

    def get_retry_after(self, response):
        # Capped like every other wait: a server asking for an hour should not hang a job.
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        return None if seconds is None else min(seconds, self.backoff_max)

    def planned_wait(self, response):
        """Seconds `sleep(response)` will wait before the next attempt."""
        retry_after = self.get_retry_after(response) if response is not None else None
        return retry_after if retry_after else self.get_backoff_time()

    def increment(self, method=None, url=None, response=None, error=None, _pool=None,
                  _stacktrace=None):
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        deadline, _ = _deadline.get()
        wait = new.planned_wait(response)
        if deadline is not None and time.monotonic() + wait > deadline:
            reason = error or ResponseError("retry budget exhausted")
            raise MaxRetryError(_pool, url, reason) from reason
        API_RETRIES.labels(method or "-", endpoint(url or "")).inc()
        if response is not None and self.get_retry_after(response):
            API_RETRY_AFTER.inc(wait)
        return new


def backoff_delay(failures, factor, cap, jitter):
    """Wait before retry number `failures` (1-based): factor * 2^(n-1) + up to `jitter`, capped."""
    if failures <= 0 or factor <= 0:
        return 0.0
    return min(cap, factor * 2 ** (failures - 1) + random.random() * jitter)


def build_retry(max_retries=2, backoff_factor=1.0, max_wait=60.0, jitter=0.1):
    """The Retry every request of a client goes through (see the module docstring)."""
    return AgentPhoneRetry(
        total=max_retries,
        connect=max_retries,
        read=max_retries,
        status=max_retries,
        other=0,  # unclassified errors may strike after the request went out
        redirect=0,
        allowed_methods=IDEMPOTENT_METHODS,  # read errors are retried only for these
        backoff_factor=backoff_factor,
        backoff_jitter=backoff_factor * jitter,
        backoff_max=max_wait,
        raise_on_status=False,  # hand the last error response back so its body can be parsed
        respect_retry_after_header=True,
    )


class _DeadlinePool:
    """Cuts every attempt's socket timeouts to what is left of the call's deadline (urllib3
    asks `_get_timeout` once per attempt, retries included)."""

    def _get_timeout(self, timeout):
        timeout = super()._get_timeout(timeout)
        deadline, cut_reads = _deadline.get()
        if deadline is None:
            return timeout
        read = timeout.read_timeout
        return Timeout(connect=within(timeout.connect_timeout, deadline),
                       read=within(read, deadline) if cut_reads else read)


class _DeadlineHTTPPool(_DeadlinePool, HTTPConnectionPool):
    pass


class _DeadlineHTTPSPool(_DeadlinePool, HTTPSConnectionPool):
    pass


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connection pools keep each attempt within the call's deadline."""

    def init_poolmanager(self, *args, **kwargs):
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _DeadlineHTTPPool,
                                                   "https": _DeadlineHTTPSPool}


def build_session(api_key, retry, user_agent):
    """A Session sending the bearer key on every request, retrying per `retry`."""
    session = requests.Session()
    adapter = DeadlineAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": user_agent,
    })
    return session
