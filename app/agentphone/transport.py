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
from collections.abc import Iterator
from contextvars import ContextVar
from types import TracebackType
from typing import Any, Self, cast, overload

import requests
from requests.adapters import HTTPAdapter
from urllib3 import BaseHTTPResponse, HTTPConnectionPool, HTTPSConnectionPool
from urllib3.connectionpool import ConnectionPool
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
_deadline: ContextVar[tuple[float | None, bool]] = ContextVar(
    "agentphone_call_deadline", default=(None, False))


class DeadlineExceeded(requests.Timeout):
    """The call's deadline passed before its response was complete."""


@contextlib.contextmanager
def call_deadline(budget: float | None, cut_reads: bool = True) -> Iterator[float | None]:
    """Bound the requests made inside the block, retries included, to `budget` seconds in
    all: each attempt's connect timeout (and read timeout, with ``cut_reads``) is cut to the
    time left. Yields the deadline (a `time.monotonic()` value, None without a budget)."""
    deadline = None if budget is None else time.monotonic() + budget
    token = _deadline.set((deadline, cut_reads))
    try:
        yield deadline
    finally:
        _deadline.reset(token)


@overload
def within(timeout: float | None, deadline: float | None) -> float | None: ...


@overload
def within(timeout: tuple[float | None, ...], deadline: float | None
           ) -> tuple[float | None, ...]: ...


def within(timeout: float | tuple[float | None, ...] | None, deadline: float | None
           ) -> float | tuple[float | None, ...] | None:
    """`timeout` (seconds, or a (connect, read) pair) cut to the time left before `deadline`
    (a `time.monotonic()` value; None leaves it as it is)."""
    if deadline is None:
        return timeout
    left = max(deadline - time.monotonic(), 0.001)
    if isinstance(timeout, tuple):
        return tuple(left if t is None else min(t, left) for t in timeout)
    return left if timeout is None else min(timeout, left)


def read_body(response: requests.Response, deadline: float | None,
              read_timeout: float | None = None, size: int = 65536) -> requests.Response:
    """Read the whole body of a `stream=True` response by `deadline` and keep it as the
    response's content; returns the response, closed.

    :raises DeadlineExceeded: the body was not complete by `deadline`.
    :raises requests.ReadTimeout: `read_timeout` seconds passed without a byte.
    :raises requests.ConnectionError: the connection failed while reading.
    """
    raw = response.raw
    sock = getattr(raw.connection, "sock", None)
    chunks: list[bytes] = []
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
    response._content_consumed = True  # type: ignore[attr-defined]  # not in the stubs
    response.close()
    return response


def request_sent(exc: requests.RequestException) -> bool:
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

    def is_retry(self, method: str, status_code: int, has_retry_after: bool = False) -> bool:
        """Whether a response with `status_code` to `method` is retried (the module's policy)."""
        if not self.total:
            return False
        method = method.upper()
        if method in IDEMPOTENT_METHODS:
            return status_code in IDEMPOTENT_RETRY_STATUSES
        return method == "POST" and status_code in POST_RETRY_STATUSES

    def get_backoff_time(self) -> float:
        """Seconds to wait before the next retry when the server named no time."""
        # Stock urllib3 waits 0 s before the first retry; a 503 deserves a pause.
        return backoff_delay(len(self.history), self.backoff_factor, self.backoff_max,
                             self.backoff_jitter)

    def get_retry_after(self, response: BaseHTTPResponse) -> float | None:
        """The response's Retry-After in seconds, capped at `backoff_max`; None without one."""
        # Capped like every other wait: a server asking for an hour should not hang a job.
        seconds = parse_retry_after(response.headers.get("Retry-After"))
        return None if seconds is None else min(seconds, self.backoff_max)

    def planned_wait(self, response: BaseHTTPResponse | None) -> float:
        """Seconds `sleep(response)` will wait before the next attempt."""
        retry_after = self.get_retry_after(response) if response is not None else None
        return retry_after if retry_after else self.get_backoff_time()

    def increment(self, method: str | None = None, url: str | None = None,
                  response: BaseHTTPResponse | None = None, error: Exception | None = None,
                  _pool: ConnectionPool | None = None,
                  _stacktrace: TracebackType | None = None) -> Self:
        """The Retry for the next attempt, counted in the metrics.

        :raises MaxRetryError: the retries are used up, or the wait before the next attempt
            would end past the call's deadline.
        """
        new = super().increment(method, url, response, error, _pool, _stacktrace)
        deadline, _ = _deadline.get()
        wait = new.planned_wait(response)
        if deadline is not None and time.monotonic() + wait > deadline:
            reason = error or ResponseError("retry budget exhausted")
            # urllib3 raises it with the pool it was given, None included, the same way.
            raise MaxRetryError(_pool, url, reason) from reason  # type: ignore[arg-type]
        API_RETRIES.labels(method or "-", endpoint(url or "")).inc()
        if response is not None and self.get_retry_after(response):
            API_RETRY_AFTER.inc(wait)
        return new


def backoff_delay(failures: int, factor: float, cap: float, jitter: float) -> float:
    """Wait before retry number `failures` (1-based): factor * 2^(n-1) + up to `jitter`, capped."""
    if failures <= 0 or factor <= 0:
        return 0.0
    delay: float = factor * 2 ** (failures - 1) + random.random() * jitter
    return min(cap, delay)


def build_retry(max_retries: int = 2, backoff_factor: float = 1.0, max_wait: float = 60.0,
                jitter: float = 0.1) -> AgentPhoneRetry:
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


class _DeadlinePool(HTTPConnectionPool):
    """Cuts every attempt's socket timeouts to what is left of the call's deadline (urllib3
    asks `_get_timeout` once per attempt, retries included)."""

    def _get_timeout(self, timeout: Any) -> Timeout:
        given = super()._get_timeout(timeout)
        deadline, cut_reads = _deadline.get()
        if deadline is None:
            return given
        read = given.read_timeout
        # requests always sets the connect timeout: never urllib3's DEFAULT_TIMEOUT here.
        connect = cast(float | None, given.connect_timeout)
        return Timeout(connect=within(connect, deadline),
                       read=within(read, deadline) if cut_reads else read)


class _DeadlineHTTPPool(_DeadlinePool, HTTPConnectionPool):
    pass


class _DeadlineHTTPSPool(_DeadlinePool, HTTPSConnectionPool):
    pass


class DeadlineAdapter(HTTPAdapter):
    """An HTTPAdapter whose connection pools keep each attempt within the call's deadline."""

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        super().init_poolmanager(*args, **kwargs)
        self.poolmanager.pool_classes_by_scheme = {"http": _DeadlineHTTPPool,
                                                   "https": _DeadlineHTTPSPool}


def build_session(api_key: str, retry: Retry, user_agent: str) -> requests.Session:
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
