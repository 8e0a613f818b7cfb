"""What the console pages (and ``agentphone top``) show, computed from the store."""

from __future__ import annotations

import math
import time
from typing import Any

from app.store import StoreUnavailable

WINDOW = 300.0  # the "Now" page looks at the last five minutes
IN_FLIGHT_HORIZON = 180.0  # a turn still "in flight" after this was lost with its worker
CHART_BUCKETS = 30


def percentile(values: list[float], q: float) -> float | None:
    """Nearest-rank percentile, ``None`` for no values."""
    if not values:
        return None
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def now(store: Any, api: dict, secret: dict | None = None, clock: Any = time.time) -> dict:
    """The "Now" page: turns in flight, traffic and latency of the last five minutes, jobs,
    the health of the store and the platform API, and ``secret``: whether the serving
    process can verify deliveries."""
    at = clock()
    try:
        store.ping()
        in_flight = store.in_flight_turns(at - IN_FLIGHT_HORIZON)
        latencies = store.recent_voice_latencies(at - WINDOW)
        counts = store.delivery_counts(at - WINDOW)
        jobs = store.job_counts()
        store_state = {"state": "ok"}
    except StoreUnavailable as exc:
        return {"store": {"state": "failing", "error": str(exc)[:200]}, "api": api,
                "secret": secret,
                "in_flight": [], "per_minute": 0, "p50": None, "p99": None, "fallbacks": 0,
                "dead_jobs": 0, "pending_jobs": 0, "chart": chart([], at), "at": at}
    first_lines = [ms for _, ms in latencies]
    return {
        "store": store_state, "api": api, "secret": secret, "at": at,
        "in_flight": [{**row, "elapsed": at - row["received_at"]} for row in in_flight],
        "per_minute": round(sum(counts.values()) / (WINDOW / 60), 1),
        "p50": percentile(first_lines, 50), "p99": percentile(first_lines, 99),
        "fallbacks": counts.get("deadline", 0) + counts.get("agent_error", 0),
        "dead_jobs": jobs.get("dead", 0), "pending_jobs": jobs.get("pending", 0),
        "chart": chart(latencies, at),
    }


def chart(latencies: list[tuple], at: float, width: int = 600, height: int = 120) -> dict:
    """An SVG polyline of the first-line p99 in 10-second steps over the window."""
    step = WINDOW / CHART_BUCKETS
    buckets: list[list[float]] = [[] for _ in range(CHART_BUCKETS)]
    for received_at, ms in latencies:
        index = int((received_at - (at - WINDOW)) // step)
        if 0 <= index < CHART_BUCKETS:
            buckets[index].append(ms)
    p99s = [percentile(b, 99) for b in buckets]
    top = max([p for p in p99s if p is not None] or [1.0])
    top = max(1.0, 10 ** math.ceil(math.log10(top)) if top > 0 else 1.0)
    dots = [(round(i * width / (CHART_BUCKETS - 1)), round(height - p * height / top, 1))
            for i, p in enumerate(p99s) if p is not None]
    # Dots as well as the line: a single busy 10-second step has no line to draw.
    return {"points": " ".join(f"{x},{y}" for x, y in dots), "dots": dots, "top": top,
            "width": width, "height": height, "samples": len(latencies)}


def calls(store: Any, limit: int = 50) -> list[dict]:
    """Recent call records, and calls with turns logged but no record yet (in progress)."""
    records = store.call_records(limit=limit)
    known = {r["call_id"] for r in records}
    live = []
    for row in store.delivery_log(limit=200, voice=True):
        if row["call_id"] and row["call_id"] not in known:
            known.add(row["call_id"])
            live.append({"call_id": row["call_id"], "status": "in-progress",
                         "from_number": None, "to_number": None, "summary": None,
                         "duration_seconds": None, "ended_at": None,
                         "agent_id": row["agent_id"], "live": True})
    return live + [{**r, "live": False} for r in records]


def call(store: Any, call_id: str) -> dict | None:
    """One call: its record (when it has ended) and its turns with their timings."""
    record = store.call_record(call_id)
    turns = list(reversed(store.delivery_log(limit=500, call_id=call_id)))
    if record is None and not turns:
        return None
    return {"call_id": call_id, "record": record, "turns": turns, "live": record is None}


def messages(store: Any, limit: int = 100) -> list[dict]:
    """Recent text deliveries with the reply sent for each and its outbox state."""
    rows = store.delivery_log(limit=limit, voice=False)
    replies = store.outbox_for([r["delivery_id"] for r in rows if r["channel"]])
    return [{**row, "reply": replies.get(row["delivery_id"])} for row in rows
            if row["event"] == "agent.message"]


def jobs(store: Any, limit: int = 50) -> dict:
    return {
        "counts": store.job_counts(),
        "groups": [(state, store.jobs(status=state, limit=limit))
                   for state in ("running", "pending", "dead")],
        "unsure": store.unsure_reply_count(),
    }


def deliveries(store: Any, limit: int = 200) -> list[dict]:
    return store.delivery_log(limit=limit, failures_first=True)


def ago(seconds_since_epoch: float | None) -> str:
    """ "12 s ago", "3 min ago" ..."""
    if seconds_since_epoch is None:
        return "-"
    delta = max(0.0, time.time() - seconds_since_epoch)
    if delta < 90:
        return f"{delta:.0f} s ago"
    if delta < 5400:
        return f"{delta / 60:.0f} min ago"
    return f"{delta / 3600:.1f} h ago"


def ms(value: float | None) -> str:
    return "-" if value is None else f"{value:.0f} ms" if value >= 10 else f"{value:.1f} ms"
