"""The demo receptionist through the real gunicorn gevent server: every intent end to end,
context across two workers, and retried turns that cannot book twice."""

import contextlib
import sqlite3
import uuid
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.servers import post_stream

pytestmark = pytest.mark.slow

LATENCY = 0.5
JANE = "+15559876543"


def speak(server, text, call_id, caller=JANE, delivery_id=None):
    """One voice turn; returns (lines as (seconds, obj), delivery id)."""
    delivery_id = delivery_id or f"whd_{uuid.uuid4().hex}"
    body = payload("voice", text, callId=call_id, **{"from": caller})
    raw, headers = signed_request(SECRET, body, delivery_id)
    response, lines = post_stream(server.webhook, raw, headers)
    assert response.status_code == 200
    objects = [obj for _, obj in lines]
    assert objects[0]["interim"] is True, objects
    assert [("interim" in o) for o in objects].count(False) == 1, objects
    assert "interim" not in objects[-1]
    return lines, delivery_id


def tool_runs(server, delivery_id):
    """The demo tools run for ``delivery_id``, from their DEBUG lines."""
    return [line.split("demo tool ")[1].split(" ")[0] for line in server.log().splitlines()
            if "demo tool " in line and f" ran for {delivery_id} " in line + " "]


def appointments(tmp_path, day):
    with contextlib.closing(sqlite3.connect(tmp_path / "events.db")) as conn:
        return conn.execute(
            "SELECT slot_time, name, delivery_id FROM demo_appointments "
            "WHERE day = ? AND status = 'booked' ORDER BY slot_time", (day,)).fetchall()


def test_each_intent_end_to_end(gunicorn, tmp_path):
    server = gunicorn(workers=2, DEMO_TOOL_LATENCY=LATENCY, LOG_LEVEL="DEBUG")

    # Order status: acknowledgement at once, the tool's answer after it.
    lines, delivery = speak(server, "Where is my order?", "call_a")
    assert lines[0][1] == {"text": "Let me look that up.", "interim": True}
    assert lines[0][0] < LATENCY <= lines[-1][0]
    assert lines[1][1] == {"text": "I found order 4521, a pair of running shoes.", "interim": True}
    assert lines[-1][1]["text"].startswith("It shipped yesterday by FedEx, due Thursday.")
    assert tool_runs(server, delivery) == ["lookup_order"]

    lines, delivery = speak(server, "What are your opening hours?", "call_a")
    assert lines[-1][1]["text"].startswith("We're open Monday to Friday from 9 AM to 5 PM")
    assert tool_runs(server, delivery) == []

    lines, delivery = speak(server, "Do you have availability on Thursday?", "call_a")
    assert lines[-1][1] == {"text": "On Thursday I have 9 AM, 10 AM, 11 AM, 2 PM, 3 PM and "
                                    "4 PM. Which time would you like?"}
    assert tool_runs(server, delivery) == ["check_availability"]

    # Booking over three turns; the two workers share the call's context in the database.
    lines, _ = speak(server, "I'd like to book an appointment", "call_b")
    assert lines[-1][1]["text"].startswith("Sure. Which day would you like?")
    lines, _ = speak(server, "Tuesday", "call_b")
    assert lines[-1][1]["text"].startswith("On Tuesday I have 9 AM, 10 AM")
    lines, delivery = speak(server, "Ten AM please", "call_b")
    assert [obj for _, obj in lines] == [
        {"text": "One moment.", "interim": True},
        {"text": "Let me pull up your details.", "interim": True},
        {"text": "You're booked for Tuesday at 10 AM, Jane Doe. Is there anything else I "
                 "can help with?"},
    ]
    assert lines[-1][0] >= 2 * LATENCY
    assert tool_runs(server, delivery) == ["search_customers", "book_appointment"]
    assert appointments(tmp_path, "tuesday") == [("10:00", "Jane Doe", delivery)]

    lines, delivery = speak(server, "Actually, cancel my appointment", "call_c")
    assert lines[0][1] == {"text": "Let me find your appointment.", "interim": True}
    assert lines[-1][1]["text"].startswith("Your appointment on Tuesday at 10 AM is cancelled.")
    assert tool_runs(server, delivery) == ["cancel_appointment"]
    assert appointments(tmp_path, "tuesday") == []

    lines, _ = speak(server, "Can I talk to a person?", "call_c")
    assert lines[-1][1] == {"text": "Let me connect you with someone from our team.",
                            "action": "transfer"}
    lines, _ = speak(server, "No thanks, goodbye", "call_c")
    assert lines[-1][1] == {"text": "Thanks for calling. Goodbye!", "hangup": True}


def test_a_retried_booking_turn_books_once(gunicorn, tmp_path):
    server = gunicorn(workers=2, DEMO_TOOL_LATENCY=LATENCY, LOG_LEVEL="DEBUG")
    speak(server, "book wednesday", "call_r")
    delivery = "whd_retried_booking"
    body = payload("voice", "at 3pm please", callId="call_r", **{"from": JANE})
    raw, headers = signed_request(SECRET, body, delivery)

    def post(_):
        return post_stream(server.webhook, raw, headers)

    # The platform's retries arrive while the first attempt is still running ...
    with ThreadPoolExecutor(6) as pool:
        results = list(pool.map(post, range(6)))
    finals = [lines[-1][1] for _, lines in results]
    assert all(r.status_code == 200 for r, _ in results)
    assert finals == [finals[0]] * 6
    assert finals[0]["text"].startswith("You're booked for Wednesday at 3 PM, Jane Doe.")
    # ... and after it finished: the stored final line is replayed at once, after the
    # interim line.
    _, lines = post(0)
    assert [obj for _, obj in lines][1:] == [finals[0]]
    assert lines[0][1]["interim"] is True
    assert lines[-1][0] < LATENCY
    assert tool_runs(server, delivery) == ["search_customers", "book_appointment"]
    assert appointments(tmp_path, "wednesday") == [("15:00", "Jane Doe", delivery)]
