"""The store interface: delivery claims, cached voice replies and durable jobs."""

from dataclasses import dataclass

from app.errors import ServiceUnavailable

DAY = 86400.0
# Every status a job goes through: queued, claimed by a worker, finished, or dead-lettered.
JOB_STATES = ("pending", "running", "done", "dead")


class StoreUnavailable(ServiceUnavailable):
    """The database cannot be reached or written; the platform should retry (503)."""

    code = "STORE_UNAVAILABLE"
    message = "Event store unavailable, retry later"


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
