"""Side-effect checks for the receptionist's scenarios (``after:`` hooks)."""


def booked(context, day, time, name=None, count=1):
    """Exactly ``count`` booked appointments at ``day`` ``time`` (under ``name``, if given)."""
    found = [a for a in context.store.demo_appointments()
             if a["day"] == day and a["slot_time"] == time
             and (name is None or a["name"] == name)]
    assert len(found) == count, f"{len(found)} booking(s) on {day} at {time}, expected {count}"


def cancelled(context, day, time):
    """The appointment at ``day`` ``time`` is cancelled and nothing is booked there."""
    assert not [a for a in context.store.demo_appointments()
                if a["day"] == day and a["slot_time"] == time], f"{day} {time} still booked"
    gone = context.store.demo_appointments(status="cancelled")
    assert any(a["day"] == day and a["slot_time"] == time for a in gone), "nothing cancelled"
