"""The ``phone`` fixture that the package's pytest plugin (entry point ``agentphone``) gives
every project's tests."""

from tests.scenario_agents import Weather


def test_phone_fixture_is_registered_by_the_entry_point(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("agentphone")


def test_a_call_to_an_agent_instance(phone):
    call = phone.call(agent=Weather())
    reply = call.say("What's the weather tomorrow?")
    assert [line.text for line in reply.lines] == [
        "Let me look.", "Checking the forecast.", "Tomorrow it is sunny in Paris."]
    assert reply.lines[0].interim and not reply.lines[-1].interim
    assert reply.final == {"text": "Tomorrow it is sunny in Paris."}
    assert 0 < reply.first_line_ms <= reply.final_ms
    assert [(t.name, t.arguments, t.value) for t in reply.tool_calls] == [
        ("forecast", {"city": "Paris"}, "sunny in Paris")]
    digits = call.say("press digits")
    assert digits.action == "digits" and digits.digits == "1" and digits.tool_calls == []


def test_the_demo_by_voice_keeps_the_call_and_its_side_effects(phone):
    call = phone.call(config={"DEMO_TOOL_LATENCY": 0}, caller="+15550009999")
    assert "Which day" in call.say("I'd like an appointment").text
    reply = call.say("Tuesday at 11 under Kim Lo")
    assert "booked for Tuesday at 11 AM, Kim Lo" in reply.text
    assert reply.tool_calls[-1].name == "book_appointment"
    booked = call.server.store.demo_appointments(phone="+15550009999")
    assert [(a["day"], a["slot_time"]) for a in booked] == [("tuesday", "11:00")]
    assert call.retry().text == reply.text  # the platform's retry: same answer, no new booking
    assert len(call.server.store.demo_appointments(phone="+15550009999")) == 1
    assert call.say("bye").action == "hangup"
    assert call.end() == 200


def test_a_text_conversation_returns_the_reply_that_was_sent(phone):
    chat = phone.text(config={"DEMO_TOOL_LATENCY": 0}, caller="+15550001111")
    reply = chat.say("When are you open?")
    assert reply.status == 200 and "Monday to Friday" in reply.text
    assert chat.history[-1]["direction"] == "outbound"
