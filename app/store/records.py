"""Store operations for the agent: per-call context, the reply outbox, call records,
reactions and the demo business data (customers, orders, calendar, appointments).

Mixed into SQLStore; every method is one statement or one short transaction with no other
I/O inside (under gevent a SQLite call never yields).
"""

import json


class RecordsMixin:
    # -- per-call context -------------------------------------------------------------------

    def session_state(self, session_id):
        """The agent's saved context for a call or conversation ({} when none)."""
        row = self._one("SELECT state FROM agent_sessions WHERE session_id = ?", (session_id,))
        return json.loads(row[0]) if row else {}

    def save_session_state(self, session_id, state):
        self._exec(
            "INSERT INTO agent_sessions (session_id, state, updated_at) VALUES (?, ?, ?) "
            "ON CONFLICT (session_id) DO UPDATE SET state = excluded.state, "
            "updated_at = excluded.updated_at",
            (session_id, json.dumps(state, default=str), self.clock()),
        )

    # -- outbox: replies sent through the API, at most once per delivery --------------------

    def outbox_begin(self, delivery_id, to_number, body, job_id=None):
        """Reserve the send for ``delivery_id`` (by job ``job_id``). Returns (status, go):
        ``go`` is True when the caller must send now; otherwise ``status`` says why not (sent,
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

        return self._run(begin)

    def outbox_finish(self, delivery_id, status, message_id=None, error=None):
        """Record the outcome: ``sent``, ``failed`` (safe to retry) or ``unknown``."""
        self._exec(
            "UPDATE outbox SET status = ?, message_id = COALESCE(?, message_id), error = ?, "
            "updated_at = ? WHERE delivery_id = ?",
            (status, message_id, error, self.clock(), delivery_id),
        )

    def outbox_entry(self, delivery_id):
        return self._row(OUTBOX, "FROM outbox WHERE delivery_id = ?", (delivery_id,))

    def unsure_replies(self, limit=50):
        """Outbox rows whose text may or may not have gone out (``sending`` left by a process
        that died, ``unknown`` after a failure mid-request), newest first."""
        return self._rows(OUTBOX, "FROM outbox WHERE status IN ('sending', 'unknown') "
                                  "ORDER BY updated_at DESC LIMIT ?", (limit,))

    def unsure_reply_count(self):
        """How many replies are in doubt (for metrics and the `jobs` totals)."""
        return self._one("SELECT COUNT(*) FROM outbox WHERE status IN ('sending', 'unknown')")[0]

    # -- call records and reactions ---------------------------------------------------------

    def save_call_record(self, record, delivery_id=None):
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

    def call_records(self, limit=20, status=None):
        """Stored call records, newest first (only those with ``status`` if given)."""
        where, params = ("WHERE status = ? ", (status,)) if status else ("", ())
        rows = self._rows(CALL, f"FROM call_records {where}ORDER BY created_at DESC, call_id "
                          "LIMIT ?", (*params, limit))
        return [_call(r) for r in rows]

    def call_record(self, call_id):
        row = self._row(CALL, "FROM call_records WHERE call_id = ?", (call_id,))
        return _call(row) if row else None

    def save_reaction(self, delivery_id, data):
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

    def reactions(self, limit=50):
        return self._rows(REACTION, "FROM reactions ORDER BY created_at DESC LIMIT ?",
                          (limit,))

    # -- demo business: customers and orders ------------------------------------------------

    def demo_customers(self, name=None, phone=None, limit=5):
        """Customers whose name contains ``name`` (any case) and/or whose phone is ``phone``."""
        where, params = [], []
        if name:
            where.append("LOWER(name) LIKE ?")
            params.append(f"%{name.lower()}%")
        if phone:
            where.append("phone = ?")
            params.append(phone)
        clause = " WHERE " + " AND ".join(where) if where else ""
        return self._rows(("id", "name", "phone", "email", "notes"),
                          f"FROM demo_customers{clause} ORDER BY name LIMIT ?", (*params, limit))

    def demo_order(self, order_id):
        return self._row(ORDER, ORDER_FROM + "WHERE o.id = ?", (order_id,))

    def demo_orders_for_phone(self, phone):
        return self._rows(ORDER, ORDER_FROM + "WHERE c.phone = ? ORDER BY o.id", (phone,))

    # -- demo business: calendar ------------------------------------------------------------

    def demo_open_slots(self, day=None):
        """Free (day, time) slots in calendar order, optionally for one day."""
        clause, params = ("AND s.day = ? ", (day,)) if day else ("", ())
        return self._rows(
            ("s.day", "s.slot_time"),
            "FROM demo_slots s LEFT JOIN demo_appointments a ON a.day = s.day "
            "AND a.slot_time = s.slot_time AND a.status = 'booked' "
            f"WHERE a.id IS NULL {clause}ORDER BY s.day_index, s.slot_time",
            params,
        )

    def demo_appointments(self, phone=None, status="booked"):
        clause, params = ("AND phone = ? ", (status, phone)) if phone else ("", (status,))
        return self._rows(APPOINTMENT, f"FROM demo_appointments WHERE status = ? {clause}"
                          "ORDER BY id", params)

    def demo_book(self, day, slot_time, name, phone=None, delivery_id=None):
        """Book a slot. Returns (outcome, appointment): ``booked``; ``repeated`` when this
        delivery already booked (a retried turn: its booking is returned, nothing new is
        made); ``taken``; ``no_such_slot``. The slot index makes a double booking impossible
        even for two processes racing."""

        def book(cur):
            if delivery_id is not None:
                earlier = _select_one(cur, APPOINTMENT, BY_DELIVERY, (delivery_id,))
                if earlier:
                    return "repeated", earlier
            cur.execute(
                "SELECT 1 FROM demo_slots WHERE day = ? AND slot_time = ?", (day, slot_time)
            )
            if cur.fetchone() is None:
                return "no_such_slot", None
            now = self.clock()
            cur.execute(
                "INSERT INTO demo_appointments (day, slot_time, name, phone, status, "
                "delivery_id, created_at, updated_at) VALUES (?, ?, ?, ?, 'booked', ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (day, slot_time, name, phone, delivery_id, now, now),
            )
            if cur.rowcount == 1:
                return "booked", _select_one(
                    cur, APPOINTMENT,
                    "FROM demo_appointments WHERE day = ? AND slot_time = ? AND status = 'booked'",
                    (day, slot_time),
                )
            if delivery_id is not None:
                # Lost a race against another attempt of the same turn.
                earlier = _select_one(cur, APPOINTMENT, BY_DELIVERY, (delivery_id,))
                if earlier:
                    return "repeated", earlier
            return "taken", None

        return self._run(book)

    def demo_cancel(self, appointment_id, delivery_id=None):
        """Cancel a booked appointment. Returns (outcome, appointment): ``cancelled``;
        ``repeated`` when this delivery already cancelled it; ``not_found``."""

        def cancel(cur):
            row = _select_one(cur, (*APPOINTMENT, "cancel_delivery_id"),
                              "FROM demo_appointments WHERE id = ?", (appointment_id,))
            if row is None:
                return "not_found", None
            by = row.pop("cancel_delivery_id")
            if row["status"] == "cancelled" and delivery_id is not None and by == delivery_id:
                return "repeated", row
            if row["status"] != "booked":
                return "not_found", None
            cur.execute(
                "UPDATE demo_appointments SET status = 'cancelled', cancel_delivery_id = ?, "
                "updated_at = ? WHERE id = ? AND status = 'booked'",
                (delivery_id, self.clock(), appointment_id),
            )
            row["status"] = "cancelled"
            return ("cancelled", row) if cur.rowcount == 1 else ("not_found", None)

        return self._run(cancel)

    def demo_cancelled_by(self, delivery_id):
        """The appointment a delivery cancelled, if any (for retried turns)."""
        return self._row(APPOINTMENT, "FROM demo_appointments WHERE cancel_delivery_id = ?",
                         (delivery_id,))

    # -- helpers ----------------------------------------------------------------------------

    def _row(self, columns, rest, params=()):
        """The first row of ``SELECT columns rest`` as a dict (None when there is none)."""
        return self._run(lambda cur: _select_one(cur, columns, rest, params), transaction=False)

    def _rows(self, columns, rest, params=()):
        """Every row of ``SELECT columns rest`` as dicts keyed by column name."""
        return self._run(lambda cur: _select(cur, columns, rest, params), transaction=False)


BY_DELIVERY = "FROM demo_appointments WHERE delivery_id = ?"
APPOINTMENT = ("id", "day", "slot_time", "name", "phone", "status")
ORDER = ("o.id", "o.item", "o.status", "o.detail", "c.name", "c.phone")
ORDER_FROM = "FROM demo_orders o JOIN demo_customers c ON c.id = o.customer_id "
OUTBOX = ("delivery_id", "status", "to_number", "body", "message_id", "error", "job_id",
          "created_at", "updated_at")
# Outbox states in which a send may start: nothing went out, or an operator asked for it.
RESENDABLE = ("failed", "resend")
CALL = ("call_id", "agent_id", "from_number", "to_number", "direction", "status", "started_at",
        "ended_at", "duration_seconds", "disconnection_reason", "transcript", "summary",
        "sentiment", "successful", "created_at")
REACTION = ("delivery_id", "conversation_id", "message_id", "reaction_type", "from_number",
            "direction", "created_at")


def _select(cur, columns, rest, params=()):
    # Names come from the column list: not every driver wrapper exposes cursor.description.
    cur.execute(f"SELECT {', '.join(columns)} {rest}", params)
    names = [c.rsplit(".", 1)[-1] for c in columns]
    return [dict(zip(names, row, strict=True)) for row in cur.fetchall()]


def _select_one(cur, columns, rest, params=()):
    rows = _select(cur, columns, rest, params)
    return rows[0] if rows else None


def _call(row):
    row = dict(row)
    row["transcript"] = json.loads(row["transcript"] or "[]")
    if row["successful"] is not None:
        row["successful"] = bool(row["successful"])
    return row
