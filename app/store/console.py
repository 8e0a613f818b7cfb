"""The SQL delivery log of the operator console and the figures of its pages (protocol
``DeliveryLog`` of ``app.store.base``).

Mixed into SQLStore. Every query is bounded (a time window, a LIMIT, an index), so that pages
stay fast with hundreds of thousands of rows.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from app.store.records import SQLRepository

LOG_COLUMNS = ("id", "delivery_id", "event", "channel", "agent_id", "call_id",
               "conversation_id", "outcome", "status", "said", "answered", "received_at",
               "first_line_ms", "final_ms")
IN_FLIGHT = "in-flight"
ROWS_PER_STATEMENT = 64  # 896 parameters: under SQLite's oldest limit (999)
# A failed delivery, written as the partial index delivery_log_failures is, so that it is used.
FAILED = "(status >= 400 OR outcome IN ('deadline', 'agent_error'))"


class DeliveryLogSQL(SQLRepository):
    """The console's log of recent deliveries (``DeliveryLog``)."""

    def write_delivery_log(self, rows: Sequence[Sequence[Any]]) -> None:
        """Insert or update log rows, their values in LOG_COLUMNS order (a voice turn is
        written when it starts and again when it ends; one id at most once per call), in one
        transaction."""
        if not rows:
            return
        columns = ", ".join(LOG_COLUMNS)
        updates = ", ".join(f"{c} = excluded.{c}" for c in LOG_COLUMNS[7:])
        row_marks = "(" + ", ".join("?" for _ in LOG_COLUMNS) + ")"

        def insert(cur):
            # Many rows per statement: each statement lets go of the GIL and takes it back,
            # which a thread waits for behind a busy event loop while it holds the file lock.
            for start in range(0, len(rows), ROWS_PER_STATEMENT):
                chunk = rows[start:start + ROWS_PER_STATEMENT]
                cur.execute(f"INSERT INTO delivery_log ({columns}) VALUES "
                            f"{', '.join([row_marks] * len(chunk))} "
                            f"ON CONFLICT (id) DO UPDATE SET {updates}",
                            [value for row in chunk for value in row])

        self.run(insert, bulk=True)

    def delivery_log(self, limit: int = 100, voice: bool | None = None,
                     call_id: str | None = None,
                     failures_first: bool = False) -> list[dict[str, Any]]:
        """Recent log rows, newest first (``voice`` True/False: only voice turns / texts)."""
        where, params = [], []
        if call_id is not None:
            where.append("call_id = ?")
            params.append(call_id)
        if voice is not None:
            where.append("channel = 'voice'" if voice else "channel <> 'voice'")
        clause = ("WHERE " + " AND ".join(where) + " ") if where else ""
        rows = self.rows(LOG_COLUMNS, f"FROM delivery_log {clause}ORDER BY received_at DESC "
                          "LIMIT ?", (*params, limit))
        if not failures_first:
            return rows
        # Two index walks, not a sort of the whole table: the newest failures, then the rest.
        failures = self.rows(LOG_COLUMNS, f"FROM delivery_log WHERE {FAILED} ORDER BY "
                              "received_at DESC LIMIT ?", (limit,))
        seen = {row["id"] for row in failures}
        return (failures + [row for row in rows if row["id"] not in seen])[:limit]

    def in_flight_turns(self, since: float) -> list[dict[str, Any]]:
        """Voice turns started after ``since`` and not finished (as far as the log knows);
        only voice turns are ever in flight."""
        # The literal matches the partial index delivery_log_in_flight (a parameter would not).
        return self.rows(LOG_COLUMNS, f"FROM delivery_log WHERE outcome = '{IN_FLIGHT}' AND "
                          "received_at > ? ORDER BY received_at", (since,))

    def recent_voice_latencies(self, since: float,
                               limit: int = 5000) -> list[tuple[float, float]]:
        """``(received_at, first_line_ms)`` of finished voice turns since ``since``, newest
        first, at most ``limit`` (a sample large enough for a p99)."""
        return self.run(lambda cur: _all(
            cur, "SELECT received_at, first_line_ms FROM delivery_log WHERE channel = 'voice' "
            "AND received_at > ? AND first_line_ms IS NOT NULL ORDER BY received_at DESC "
            "LIMIT ?", (since, limit)), transaction=False)

    def delivery_counts(self, since: float) -> dict[str, int]:
        """Log rows since ``since`` by outcome."""
        rows = self.run(lambda cur: _all(
            cur, "SELECT outcome, COUNT(*) FROM delivery_log WHERE received_at > ? "
            "GROUP BY outcome", (since,)), transaction=False)
        return dict(rows)


def _all(cur, sql, params):
    cur.execute(sql, params)
    return cur.fetchall()
