"""The demo package: the receptionist in-process (each intent, follow-up questions, context
kept in the database, side effects that a retried turn or a race cannot repeat), and its
tables, which exist only where the demo runs."""

import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor

import pytest

from app.agent import Agent, Reply, Turn, get_agent
from app.demo import DemoRecords, Receptionist, schema
from app.demo.agent import detect_intent, parse_day, parse_name, parse_time
from app.store import StoreUnavailable, get_store, open_store
from app.store.schema import statements

pytest_plugins = ["tests.postgres"]  # pg_server, database_url

JANE = "+15559876543"  # a customer in the demo data, with orders 4521 and 4524
STRANGER = "+15550009999"


@pytest.fixture
def agent(app):
    return get_agent(app=app)


def say(agent, text, call="call_1", caller=JANE, delivery=None, channel="voice"):
    turn = Turn(text=text, channel=channel, caller=caller,
                call_id=call if channel == "voice" else None,
                conversation_id=call if channel != "voice" else None, delivery_id=delivery)
    chunks = list(agent.respond(turn))
    *interim, final = chunks
    assert isinstance(final, Reply) and all(isinstance(c, str) for c in interim)
    return interim, final


@pytest.fixture
def opened(app):
    """``opened()`` -> another store on the app's database (another worker's), closed after."""
    stores = []

    def make():
        stores.append(open_store(app.config["DATABASE_URL"]))
        return stores[-1]

    yield make
    for store in stores:
        store.close()


def booked(store):
    return [(a["day"], a["slot_time"], a["name"]) for a in DemoRecords(store).appointments()]


def test_it_is_the_default_agent(agent):
    assert isinstance(agent, Receptionist)


def test_order_status_by_caller_number_and_by_order_number(agent):
    interim, final = say(agent, "Hi, where is my order?")
    assert interim == ["I found order 4521, a pair of running shoes."]
    assert final.text.startswith("It shipped yesterday by FedEx, due Thursday.")
    assert "order 4524" in final.text
    _, final = say(agent, "What about order number 4523?", caller=STRANGER)
    assert "being packed" in final.text


def test_unknown_caller_is_asked_for_the_order_number(agent):
    _, final = say(agent, "I want to track my package", call="c2", caller=STRANGER)
    assert final.text.endswith("What's your order number?")
    interim, final = say(agent, "It's 4522", call="c2", caller=STRANGER)
    assert interim == ["I found order 4522, a gift card."]
    assert "delivered by email" in final.text


def test_cancelling_an_order_is_offered_to_a_person(agent):
    _, final = say(agent, "Please cancel my order", call="c8")
    assert final.text.endswith("Would you like me to put you through?")
    _, final = say(agent, "Yes please", call="c8")
    assert final.action == "transfer"
    say(agent, "cancel order 4521", call="c8")
    _, final = say(agent, "no", call="c8")
    assert final.text == "Okay. Is there anything else I can help with?"


def test_hours_transfer_and_goodbye(agent):
    _, final = say(agent, "What are your opening hours?")
    assert "Monday to Friday from 9 AM to 5 PM" in final.text
    _, final = say(agent, "Can I speak to a real person please")
    assert final == Reply("Let me connect you with someone from our team.", action="transfer")
    _, final = say(agent, "No that's all, bye")
    assert final.hangup and final.text == "Thanks for calling. Goodbye!"
    # Texts cannot be transferred or hung up.
    _, final = say(agent, "talk to a human", channel="sms")
    assert final.action is None and "get back to you" in final.text
    _, final = say(agent, "bye", channel="sms")
    assert not final.hangup


def test_booking_over_several_turns_with_the_name_from_the_customer_list(app, agent):
    store = get_store(app)
    _, final = say(agent, "I'd like to make an appointment", delivery="d1")
    assert final.text.startswith("Sure. Which day would you like?")
    _, final = say(agent, "Wednesday please", delivery="d2")
    assert final.text == ("On Wednesday I have 9 AM, 10 AM, 11 AM, 2 PM, 3 PM and 4 PM. "
                          "Which time would you like?")
    interim, final = say(agent, "11 am", delivery="d3")
    assert interim == ["Let me pull up your details."]
    assert final.text.startswith("You're booked for Wednesday at 11 AM, Jane Doe.")
    assert ("wednesday", "11:00", "Jane Doe") in booked(store)


def test_new_caller_is_asked_for_a_name(app, agent):
    _, final = say(agent, "book friday at 3pm", call="c3", caller=STRANGER, delivery="d1")
    assert final.text == "And what name should I put the appointment under?"
    _, final = say(agent, "Bob Jones", call="c3", caller=STRANGER, delivery="d2")
    assert final.text.startswith("You're booked for Friday at 3 PM, Bob Jones.")
    assert ("friday", "15:00", "Bob Jones") in booked(get_store(app))


def test_taken_slot_offers_the_remaining_times(agent):
    # Monday 9:00 is booked in the demo data.
    _, final = say(agent, "Book Monday at 9 am for Sam Patel", delivery="d1")
    assert final.text == ("Sorry, that time is already taken. On Monday I still have 10 AM, "
                          "11 AM, 2 PM, 3 PM and 4 PM. Would one of those work?")
    _, final = say(agent, "10 then", delivery="d2")
    assert final.text.startswith("You're booked for Monday at 10 AM, Sam Patel.")
    _, final = say(agent, "Can I come in on Sunday?", call="c9")
    assert final.text == "We're closed on Sundays. Which other day works for you?"


def test_availability_and_cancel(app, agent):
    _, final = say(agent, "Any availability?")
    assert final.text.startswith("The next openings are Monday at 10 AM, Monday at 11 AM")
    say(agent, "book tuesday at 2pm", call="c5", delivery="b1")
    assert ("tuesday", "14:00", "Jane Doe") in booked(get_store(app))
    _, final = say(agent, "Please cancel my appointment", call="c5", delivery="x1")
    assert final.text.startswith("Your appointment on Tuesday at 2 PM is cancelled.")
    assert ("tuesday", "14:00", "Jane Doe") not in booked(get_store(app))
    _, final = say(agent, "cancel my appointment", call="c5", caller=STRANGER, delivery="x2")
    assert final.text.startswith("I couldn't find an appointment under this number.")


def test_a_retried_turn_repeats_its_answer_without_booking_again(app, opened):
    store = get_store(app)
    first = Receptionist(store, 0)
    say(first, "book thursday", call="c7", delivery="t1")
    interim, final = say(first, "at 10", call="c7", delivery="t2")
    assert final.text.startswith("You're booked for Thursday at 10 AM")
    # Another worker (its own store on the same file) gets the same delivery again.
    other = Receptionist(opened(), 0)
    assert say(other, "at 10", call="c7", delivery="t2") == (interim, final)
    assert booked(store).count(("thursday", "10:00", "Jane Doe")) == 1
    # Even with the call's context lost, the booking is keyed by the delivery id.
    other.store.save_session_state("c7", {})
    _, again = say(other, "book thursday at 11", call="c7", delivery="t2")
    assert again.text.startswith("You're booked for Thursday at 10 AM")
    assert [a for a in booked(store) if a[0] == "thursday"] == [("thursday", "10:00", "Jane Doe")]


def test_context_is_shared_between_workers(opened):
    a = Receptionist(opened(), 0)
    b = Receptionist(opened(), 0)
    say(a, "I need an appointment", call="shared")
    _, final = say(b, "Saturday", call="shared")
    assert final.text.startswith("On Saturday I have 10 AM, 11 AM and noon.")


@pytest.mark.parametrize(("text", "intent"), [
    ("where's my parcel", "order"), ("are you open tomorrow", "hours"),
    ("I want to cancel", "cancel"), ("any free slots on monday", "availability"),
    ("put me through to an operator", "transfer"), ("good bye", "goodbye"),
    ("what's on file for me under my account", "account"), ("hmm", None),
])
def test_detect_intent(text, intent):
    assert detect_intent(text) == intent


def test_parsers():
    assert [parse_time(t) for t in ["10am", "2 pm", "14:00", "at two", "9", "10:30", "noon",
                                    "order 4521", "one of them"]] == [
        "10:00", "14:00", "14:00", "14:00", "09:00", "10:30", "12:00", None, None]
    assert [parse_day(t) for t in ["Tues", "on wed", "FRIDAY", "today"]] == [
        "tuesday", "wednesday", "friday", None]
    assert parse_name("book tuesday for Sam Patel") == "Sam Patel"
    assert parse_name("This is Lee.") == "Lee"
    assert parse_name("for Tuesday please") is None


# -- the calendar's guarantees on both databases ----------------------------------------------


@pytest.fixture
def core_store(database_url):
    """A store with the core schema only, as any app's."""
    store = open_store(database_url)
    store.migrate()
    yield store
    store.close()


@pytest.fixture
def records(core_store):
    DemoRecords(core_store)
    return DemoRecords(core_store)  # a second start: the seed is idempotent


def test_racing_callers_cannot_double_book_a_slot(records):
    with ThreadPoolExecutor(8) as pool:
        outcomes = list(pool.map(
            lambda i: records.book("friday", "10:00", f"Caller {i}", f"+1555000{i:04d}",
                                   f"whd_{i}")[0],
            range(8)))
    assert sorted(outcomes) == ["booked"] + ["taken"] * 7
    assert len([a for a in records.appointments() if a["day"] == "friday"]) == 1


def test_concurrent_retries_of_one_turn_book_once(records):
    with ThreadPoolExecutor(8) as pool:
        results = list(pool.map(
            lambda slot: records.book("friday", slot, "Jane Doe", JANE, "whd_same"),
            ["11:00"] * 4 + ["14:00"] * 4))
    assert sorted(r[0] for r in results).count("booked") == 1
    assert {r[0] for r in results} <= {"booked", "repeated"}
    assert len({r[1]["id"] for r in results}) == 1
    assert len(records.appointments(phone=JANE)) == 1


def test_cancel_is_idempotent_per_delivery_and_frees_the_slot(records):
    _, appointment = records.book("monday", "14:00", "Jane Doe", JANE, "b1")
    assert records.cancel(appointment["id"], "c1")[0] == "cancelled"
    assert records.cancel(appointment["id"], "c1")[0] == "repeated"
    assert records.cancel(appointment["id"], "c2")[0] == "not_found"
    assert records.book("monday", "14:00", "Sam Patel", None, "b2")[0] == "booked"
    assert records.book("sunday", "10:00", "Sam Patel", None, "b3") == ("no_such_slot", None)


# -- the demo's tables exist only where the demo runs -----------------------------------------


class QuietAgent(Agent):
    def respond(self, turn):
        yield Reply("Hello.")


def tables(store):
    if store.backend == "sqlite":
        rows = store.rows(("name",), "FROM sqlite_master WHERE type = 'table'")
    else:
        rows = store.rows(("tablename",), "FROM pg_tables WHERE schemaname = 'public'")
    return {next(iter(row.values())) for row in rows}


def test_a_custom_agent_gets_no_demo_tables(make_app, database_url):
    names = tables(get_store(make_app(DATABASE_URL=database_url, AGENT_INSTANCE=QuietAgent())))
    assert {"deliveries", "jobs", "agent_sessions", "outbox", "call_records"} <= names
    assert sorted(n for n in names if n.startswith("demo_")) == []
    # The demo agent on the same database adds them.
    store = get_store(make_app(DATABASE_URL=database_url))
    assert {"demo_customers", "demo_orders", "demo_slots", "demo_appointments",
            "demo_schema_version"} <= tables(store)
    assert store.schema_version(schema.VERSION_TABLE) == len(schema.MIGRATIONS)


@pytest.mark.parametrize(("agent", "name", "unused"), [
    ("None", "Receptionist", "openai"),  # the default: the demo, without the LLM client
    ("Agent()", "Agent", "app.demo"),  # another agent: no demo
])
def test_what_the_app_imports(tmp_path, agent, name, unused):
    code = (
        "import sys\n"
        "from app import create_app\n"
        "from app.agent import Agent, get_agent\n"
        "from app.store import get_store\n"
        f"app = create_app({{'WEBHOOK_SECRETS': ('s',), 'AGENT_INSTANCE': {agent}, "
        "'LLM_BASE_URL': None, "
        f"'LLM_API_KEY': None, 'DATABASE_URL': 'sqlite:///{tmp_path}/x.db'}})\n"
        "get_store(app).close()\n"
        "print(type(get_agent(app=app)).__name__)\n"
        "print(sorted(m for m in sys.modules if m.startswith(('app.', 'openai'))))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         check=True, timeout=60)
    created, modules = out.stdout.splitlines()
    assert created == name
    assert "'app.agent'" in modules
    assert f"'{unused}" not in modules


def test_a_0_1_0_database_keeps_its_demo_data(core_store):
    # 0.1.0's core migration 2 made the demo tables and seeded them, with no version of their
    # own; since then Maria's seeded appointment was cancelled.
    core_store.run(lambda cur: [cur.execute(statement) for statement in
                                statements(schema.MIGRATIONS[0], core_store.types)])
    core_store.run(lambda cur: cur.execute("UPDATE demo_appointments SET status = 'cancelled'"))
    records = DemoRecords(core_store)
    assert core_store.schema_version(schema.VERSION_TABLE) == len(schema.MIGRATIONS)
    assert records.appointments() == []  # not booked again by the seed
    assert len(records.appointments(status="cancelled")) == 1
    assert [c["name"] for c in records.customers()] == [
        "Jane Doe", "Lee Chen", "Maria Garcia", "Sam Patel"]
    assert records.open_slots("monday")[0] == {"day": "monday", "slot_time": "09:00"}


def test_demo_tables_wait_for_a_database_that_is_down(tmp_path):
    path = tmp_path / "later.db"
    path.mkdir()  # a directory: the database cannot be opened yet
    store = open_store(f"sqlite:///{path}")
    try:
        with pytest.raises(StoreUnavailable):
            store.migrate()
        store.migrate_on_first_use()
        records = DemoRecords(store)  # the app still starts
        with pytest.raises(StoreUnavailable):
            records.customers()
        path.rmdir()
        assert len(records.customers()) == 4
        assert store.schema_version(schema.VERSION_TABLE) == len(schema.MIGRATIONS)
    finally:
        store.close()
