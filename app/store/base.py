"""The store interface: delivery claims, cached voice replies and durable jobs."""

from dataclasses import dataclass

from app.errors import BadRequest, ServiceUnavailable, Unretryable

DAY = 86400.0
# Every status a job goes through: queued, claimed by a worker, finished, or dead-lettered.
JOB_STATES = ("pending", "running", "done", "dead")


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached or written; the platform should retry (503).

    ``detail`` (the driver's own words) is what ``str()`` gives, for logs and the operator's
    CLI; a response body carries only ``message``, which names no internals.
    """

    code = "STORE_UNAVAILABLE"
    message = "Event store unavailable, retry later"

    def __init__(self, detail=None):
        super().__init__()
        self.detail = detail

    def __str__(self):
        return self.detail or self.message


class UnstorableValue(BadRequest, Unretryable):
    """The database refused a value (out of range, not encodable): the same value is refused
    every time, so a request gets 400 and a job is dead-lettered at once."""

    message = "A value in the delivery cannot be stored"


class Replayed(Exception):
    """These signed bytes were accepted before under another delivery id: a replay."""

    def __init__(self, first_delivery_id):
        super().__init__(first_delivery_id)
        self.first_delivery_id = first_delivery_id


@dataclass(frozen=True)
class SignedBytes:
    """What a delivery's signature covers (a digest of timestamp and body), remembered until
    ``expires_at``, after which a copy could no longer pass verification."""

    digest: str
    expires_at: float


@dataclass(frozen=True)
class Job:
    id: int
    kind: str
    payload: str
    attempts: int
    status: str = "running"
    delivery_id: str | None = None
    run_at: float = 0.0
    last_error: str | None = None
    created_at: float = 0.0
    updated_at: float = 0.0


@dataclass(frozen=True)
class Retention:
    deliveries: float = 7 * DAY
    finished_jobs: float = 7 * DAY
    sessions: float = 7 * DAY
    log_rows: int = 200_000  # the console's delivery log keeps at most this many
