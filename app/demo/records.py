"""The demo business's data (customers, orders, a calendar, appointments) over the app's store.

Every method is one statement or one short transaction with no other I/O inside, like the
store's own (under gevent a SQLite call never yields).
"""

from app.demo import schema
from app.store.records import select_one


class DemoRecords:
    """The demo tables in ``store``'s database, created (and migrated) when this is made."""

    def __init__(self, store):
        self.store = store
        store.add_schema(schema.VERSION_TABLE, schema.MIGRATIONS)

    def customers(self, name=None, phone=None, limit=5):
        """Customers whose name contains ``name`` (any case) and/or whose phone is ``phone``."""
        where, params = [], []
        if name:
            where.append("LOWER(name) LIKE ?")
            params.append(f"%{name.lower()}%")
        if phone:
            where.append("phone = ?")
            params.append(phone)
        clause = " WHERE " + " AND ".join(where) if where else ""
        return self.store.rows(("id", "name", "phone", "email", "notes"),
                               f"FROM demo_customers{clause} ORDER BY name LIMIT ?",
                               (*params, limit))

    def order(self, order_id):
        """One order with its customer's name and phone (None when there is no such order)."""
        return self.store.row(ORDER, ORDER_FROM + "WHERE o.id = ?", (order_id,))

    def orders_for_phone(self, phone):
        """The orders of the customer with this phone number."""
        return self.store.rows(ORDER, ORDER_FROM + "WHERE c.phone = ? ORDER BY o.id", (phone,))

    def open_slots(self, day=None):
        """Free (day, time) slots in calendar order, optionally for one day."""
        clause, params = ("AND s.day = ? ", (day,)) if day else ("", ())
        return self.store.rows(
            ("s.day", "s.slot_time"),
            "FROM demo_slots s LEFT JOIN demo_appointments a ON a.day = s.day "
            "AND a.slot_time = s.slot_time AND a.status = 'booked' "
            f"WHERE a.id IS NULL {clause}ORDER BY s.day_index, s.slot_time",
            params,
        )

    def appointments(self, phone=None, status="booked"):
        """Appointments with ``status`` (all phones, or one), oldest booking first."""
        clause, params = ("AND phone = ? ", (status, phone)) if phone else ("", (status,))
        return self.store.rows(APPOINTMENT, f"FROM demo_appointments WHERE status = ? {clause}"
                               "ORDER BY id", params)

    def book(self, day, slot_time, name, phone=None, delivery_id=None):
        """Book a slot. Returns (outcome, appointment): ``booked``; ``repeated`` when this
        delivery already booked (a retried turn: its booking is returned, nothing new is
        made); ``taken``; ``no_such_slot``. The slot index makes a double booking impossible
        even for two processes racing."""

        def book(cur):
            if delivery_id is not None:
                earlier = select_one(cur, APPOINTMENT, BY_DELIVERY, (delivery_id,))
                if earlier:
                    return "repeated", earlier
            cur.execute(
                "SELECT 1 FROM demo_slots WHERE day = ? AND slot_time = ?", (day, slot_time)
            )
            if cur.fetchone() is None:
                return "no_such_slot", None
            now = self.store.clock()
            cur.execute(
                "INSERT INTO demo_appointments (day, slot_time, name, phone, status, "
                "delivery_id, created_at, updated_at) VALUES (?, ?, ?, ?, 'booked', ?, ?, ?) "
                "ON CONFLICT DO NOTHING",
                (day, slot_time, name, phone, delivery_id, now, now),
            )
            if cur.rowcount == 1:
                return "booked", select_one(
                    cur, APPOINTMENT,
                    "FROM demo_appointments WHERE day = ? AND slot_time = ? AND status = 'booked'",
                    (day, slot_time),
                )
            if delivery_id is not None:
                # Lost a race against another attempt of the same turn.
                earlier = select_one(cur, APPOINTMENT, BY_DELIVERY, (delivery_id,))
                if earlier:
                    return "repeated", earlier
            return "taken", None

        return self.store.run(book)

    def cancel(self, appointment_id, delivery_id=None):
        """Cancel a booked appointment. Returns (outcome, appointment): ``cancelled``;
        ``repeated`` when this delivery already cancelled it; ``not_found``."""

        def cancel(cur):
            row = select_one(cur, (*APPOINTMENT, "cancel_delivery_id"),
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
                (delivery_id, self.store.clock(), appointment_id),
            )
            row["status"] = "cancelled"
            return ("cancelled", row) if cur.rowcount == 1 else ("not_found", None)

        return self.store.run(cancel)

    def cancelled_by(self, delivery_id):
        """The appointment a delivery cancelled, if any (for retried turns)."""
        return self.store.row(APPOINTMENT,
                              "FROM demo_appointments WHERE cancel_delivery_id = ?",
                              (delivery_id,))


BY_DELIVERY = "FROM demo_appointments WHERE delivery_id = ?"
APPOINTMENT = ("id", "day", "slot_time", "name", "phone", "status")
ORDER = ("o.id", "o.item", "o.status", "o.detail", "c.name", "c.phone")
ORDER_FROM = "FROM demo_orders o JOIN demo_customers c ON c.id = o.customer_id "
