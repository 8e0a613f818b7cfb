"""The SQL repositories of the agent's records: per-call context, the reply outbox, call
records and reactions (protocols ``AgentSessions``, ``ReplyOutbox``, ``CallRecords`` and
``Reactions`` of ``app.store.base``).

Mixed into SQLStore; every method is one statement or one short transaction with no other
I/O inside (under gevent a SQLite call never yields).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any, TypeVar

T = TypeVar("T")


class SQLRepository:
    """Base of the repositories SQLStore is made of: their SQL runs through its plumbing."""

    if TYPE_CHECKING:  # provided by SQLStore
        clock: Callable[[], float]

        def run(self, fn: Callable[[Any], T], transaction: bool = True, *,
                bulk: bool = False) -> T: ...

        def _one(self, sql: str, params: Sequence[Any] = ()) -> Any: ...

        def _exec(self, sql: str, params: Sequence[Any] = ()) -> int: ...

    def row(self, columns: Sequence[str], rest: str,
            params: Sequence[Any] = ()) -> dict[str, Any] | None:
        """The first row of ``SELECT columns rest`` as a dict (None when there is none)."""
        return self.run(lambda cur: select_one(cur, columns, rest, params), transaction=False)

    def rows(self, columns: Sequence[str], rest: str,
             params: Sequence[Any] = ()) -> list[dict[str, Any]]:
        """Every row of ``SELECT columns rest`` as dicts keyed by column name."""
        return self.run(lambda cur: select(cur, columns, rest, params), transaction=False)


class SessionsSQL(SQLRepository):
    """The agent's saved context per call or conversation (``AgentSessions``)."""

    def session_state(self, session_id: str) -> dict[str, Any]:
        """The agent's saved context for a call or conversation ({} when none)."""
        row = self._one("SELECT state FROM agent_sessions WHERE session_id = ?", (session_id,))
        return json.loads(row[0]) if row else {}

    def save_session_state(self, session_id: str, state: dict[str, Any]) -> None:
        """Replace the saved context of ``session_id`` (values JSON cannot hold as str)."""
        self._exec(
            "INSERT INTO agent_sessions (session_id, state, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET state = excluded.state, "
            "updated_at = excluded.updated_at",
            (session_id, json.dumps(state, default=str), self.clock()),
        )


class OutboxSQL(SQLRepository):
    """Replies sent through the API, at most once per delivery (``ReplyOutbox``; its
    ``resend_reply`` queues a job, so SQLStore has it with the jobs)."""

    def outbox_begin(self, delivery_id: str, to_number: str | None, body: str,
                     job_id: int | None = None) -> tuple[str, bool]:
        """Reserve the send for ``delivery_id`` (by job ``job_id``). Returns (status, send_now):
        ``send_now`` is True when the caller must send now; otherwise ``status`` says why not (sent,
        sending, unknown)."""

        def begin(cur):
            now = self.clock()
            cur.execute(
                "INSERT INTO outbox (delivery_id, status, to_number, body, job_id, created_at, "
                "updated_at) VALUES (?, 'sending', ?, ?, ?, ?, ?) ON CONFLICT DO NOTHING",
                (delivery_id, to_number, body, job_id, now, now),
            )
            if cur.rowcount == 1:
                return "sending", True
            cur.execute("SELECT status FROM outbox WHERE delivery_id = ?", (delivery_id,))
            status = cur.fetchone()[0]
            if status not in RESENDABLE:
                return status, False
            # Rejected before (nothing went out), or resent on an operator's word.
            cur.execute(
                "UPDATE outbox SET status = 'sending', body = ?, error = NULL, updated_at = ? "
                "WHERE delivery_id = ?",
                (body, now, delivery_id),
            )
            return "sending", True

        return self.run(begin)

    def outbox_finish(self, delivery_id: str, status: str, message_id: str | None = None,
                      error: str | None = None) -> None:
        """Record the outcome: ``sent``, ``failed`` (safe to retry) or ``unknown``."""
        self._exec(
            "UPDATE outbox SET status = ?, message_id = COALESCE(?, message_id), error = ?, "
            "updated_at = ? WHERE delivery_id = ?",
            (status, message_id, error, self.clock(), delivery_id),
        )

    def outbox_entry(self, delivery_id: str) -> dict[str, Any] | None:
        """The outbox row of ``delivery_id`` (None when nothing was reserved for it)."""
        return self.row(OUTBOX, "FROM outbox WHERE delivery_id = ?", (delivery_id,))

    def outbox_for(self, delivery_ids: Sequence[str]) -> dict[str, dict[str, Any]]:
        """Reply outbox rows of these deliveries, by delivery id."""
        if not delivery_ids:
            return {}
        marks = ", ".join("?" for _ in delivery_ids)
        rows = self.rows(("delivery_id", "status", "body", "error", "updated_at"),
                         f"FROM outbox WHERE delivery_id IN ({marks})", tuple(delivery_ids))
        return {row["delivery_id"]: row for row in rows}

    def unsure_replies(self, limit: int = 50) -> list[dict[str, Any]]:
        """Outbox rows whose text may or may not have gone out (``sending`` left by a process
        that died, ``unknown`` after a failure mid-request), newest first."""
        return self.rows(OUTBOX, "FROM outbox WHERE status IN ('sending', 'unknown') "
                                  "ORDER BY updated_at DESC LIMIT ?", (limit,))

    def unsure_reply_count(self) -> int:
        """How many replies are in doubt (for metrics and the `jobs` totals)."""
        return self._one("SELECT COUNT(*) FROM outbox WHERE status IN ('sending', 'unknown')")[0]


class CallRecordsSQL(SQLRepository):
    """Finished calls, stored once each (``CallRecords``)."""

    def save_call_record(self, record: dict[str, Any], delivery_id: str | None = None) -> bool:
        """Store a finished call once (keyed by call id); True if it was new."""
        successful = record.get("successful")
        changed = self._exec(
            "INSERT INTO call_records (call_id, agent_id, from_number, to_number, direction, "
            "status, started_at, ended_at, duration_seconds, disconnection_reason, transcript, "
            "summary, sentiment, successful, delivery_id, created_at) "
            "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (call_id) DO NOTHING",
            (
                record["call_id"], record.get("agent_id"), record.get("from_number"),
                record.get("to_number"), record.get("direction"), record.get("status"),
                record.get("started_at"), record.get("ended_at"),
                record.get("duration_seconds"), record.get("disconnection_reason"),
                json.dumps(record.get("transcript") or []), record.get("summary"),
                record.get("sentiment"), None if successful is None else int(bool(successful)),
                delivery_id, self.clock(),
            ),
        )
        return changed == 1

    def call_records(self, limit: int = 20, status: str | None = None) -> list[dict[str, Any]]:
        """Stored call records, newest first (only those with ``status`` if given)."""
        where, params = ("WHERE status = ? ", (status,)) if status else ("", ())
        rows = self.rows(CALL, f"FROM call_records {where}ORDER BY created_at DESC, call_id "
                         "LIMIT ?", (*params, limit))
        return [_call(r) for r in rows]

    def call_record(self, call_id: str) -> dict[str, Any] | None:
        """The stored record of call ``call_id`` (None when there is none)."""
        row = self.row(CALL, "FROM call_records WHERE call_id = ?", (call_id,))
        return _call(row) if row else None


class ReactionsSQL(SQLRepository):
    """Reactions to messages, stored once per delivery (``Reactions``)."""

    def save_reaction(self, delivery_id: str, data: dict[str, Any]) -> bool:
        """Store one reaction event once; True if it was new."""
        changed = self._exec(
            "INSERT INTO reactions (delivery_id, conversation_id, message_id, reaction_type, "
            "from_number, direction, created_at) VALUES (?, ?, ?, ?, ?, ?, ?) "
            "ON CONFLICT (delivery_id) DO NOTHING",
            (
                delivery_id, data.get("conversation_id"), data.get("message_id"),
                data.get("reaction_type"), data.get("from_number"), data.get("direction"),
                self.clock(),
            ),
        )
        return changed == 1

    def reactions(self, limit: int = 50) -> list[dict[str, Any]]:
        """Stored reactions, newest first."""
        return self.rows(REACTION, "FROM reactions ORDER BY created_at DESC LIMIT ?",
                         (limit,))


OUTBOX = ("delivery_id", "status", "to_number", "body", "message_id", "error", "job_id",
          "created_at", "updated_at")
# Outbox states in which a send may start: nothing went out, or an operator asked for it.
RESENDABLE = ("failed", "resend")
CALL = ("call_id", "agent_id", "from_number", "to_number", "direction", "status", "started_at",
        "ended_at", "duration_seconds", "disconnection_reason", "transcript", "summary",
        "sentiment", "successful", "created_at")
REACTION = ("delivery_id", "conversation_id", "message_id", "reaction_type", "from_number",
            "direction", "created_at")


def select(cur, columns, rest, params=()):
    """Every row of ``SELECT columns rest`` on ``cur`` as dicts keyed by column name (the part
    after the last dot)."""
    # Names come from the column list: not every driver wrapper exposes cursor.description.
    cur.execute(f"SELECT {', '.join(columns)} {rest}", params)
    names = [c.rsplit(".", 1)[-1] for c in columns]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def select_one(cur, columns, rest, params=()):
    """The first row of ``select`` (None when there is none)."""
    rows = select(cur, columns, rest, params)
    return rows[0] if rows else None


def _call(row):
    row = dict(row)
    row["transcript"] = json.loads(row["transcript"] or "[]")
    if row["successful"] is not None:
        row["successful"] = bool(row["successful"])
    return row
