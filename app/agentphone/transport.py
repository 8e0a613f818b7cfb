"""HTTP transport: one requests.Session whose urllib3 Retry is the only place retries happen.

Retry policy (SPEC 5.3, Q32, Q33):
* GET/DELETE: connection errors, read errors, and 408, 429, 500, 502, 503, 504.
* POST: only 429 and 503 (the server refused the work), plus failures to connect (nothing
  was sent). Never a read timeout or a dropped connection after sending: there is no
  idempotency key, and a retried send could text someone twice.
* Wait: `Retry-After` (seconds or HTTP-date) when given, else exponential backoff with
  jitter; every wait capped at `max_wait`; all retries of one call fit in `budget` seconds.
"""

import contextlib
import random
import time
from contextvars import ContextVar

import requests
from requests.adapters import HTTPAdapter
from urllib3.exceptions import MaxRetryError, ResponseError
from urllib3.util.retry import Retry

from app.agentphone.errors import parse_retry_after
from app.metrics import API_RETRIES, API_RETRY_AFTER, endpoint

IDEMPOTENT_RETRY_STATUSES = frozenset({408, 429, 500, 502, 503, 504})
POST_RETRY_STATUSES = frozenset({429, 503})
IDEMPOTENT_METHODS = frozenset({"GET", "HEAD", "DELETE", "OPTIONS"})

# Deadline (time.monotonic()) of the API call in progress; set by `call_deadline`. A context
# variable, not an attribute, because one Session serves many threads/greenlets at once.
_deadline = ContextVar("agentphone_call_deadline", default=None)


@contextlib.contextmanager
def call_deadline(budget):
    """Bound the retries of the requests made inside the block to `budget` seconds in all."""
    token = _deadline.set(None if budget is None else time.monotonic() + budget)
    try:
        yield
    finally:
        _deadline.reset(token)


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
        deadline = _deadline.get()
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
        status_forcelist=IDEMPOTENT_RETRY_STATUSES | POST_RETRY_STATUSES,
        backoff_factor=backoff_factor,
        backoff_jitter=backoff_factor * jitter,
        backoff_max=max_wait,
        raise_on_status=False,  # hand the last error response back so its body can be parsed
        respect_retry_after_header=True,
    )


def build_session(api_key, retry, user_agent):
    """A Session sending the bearer key on every request, retrying per `retry`."""
    session = requests.Session()
    adapter = HTTPAdapter(max_retries=retry)
    session.mount("https://", adapter)
    session.mount("http://", adapter)
    session.headers.update({
        "Authorization": f"Bearer {api_key}",
        "Accept": "application/json",
        "User-Agent": user_agent,
    })
    return session
