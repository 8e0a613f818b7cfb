"""Several agents behind one server (AGENTS): each delivery's agentId picks the agent, and
their per-call memory is kept apart."""

import pytest

from app import config
from app.store import get_store
from app.testing.call import Call
from tests.fake_agentphone import fake_api_fixture  # noqa: F401

pytestmark = pytest.mark.slow


def test_two_agents_answer_their_own_calls_and_texts(gunicorn, fake_api, secret, tmp_path):
    fake_api.on("POST", "/v1/messages", {"id": "msg_1", "status": "sent", "channel": "sms"})
    agents_file = tmp_path / "agents.toml"
    agents_file.write_text('[agents]\nagt_support = "tests.scenario_agents:memo_support"\n')
    server = gunicorn(workers=2, AGENTS="agt_sales=tests.scenario_agents:memo_sales",
                      AGENTS_FILE=str(agents_file), AGENTPHONE_API_KEY="sk_test",
                      AGENTPHONE_API_URL=fake_api.url, DEMO_TOOL_LATENCY=0)
    sales = Call(server.webhook, secret, agent_id="agt_sales", call_id="call_same_caller")
    support = Call(server.webhook, secret, agent_id="agt_support", call_id="call_same_caller")
    other = Call(server.webhook, secret, agent_id="agt_unlisted")
    with sales, support, other:
        assert sales.say("I want a quote").text == "Sales here; last time you said nothing."
        assert support.say("My order broke").text == "Support here; last time you said nothing."
        assert sales.say("and delivery?").text == (
            "Sales here; last time you said I want a quote.")
        assert support.say("still broken").text == (
            "Support here; last time you said My order broke.")
        assert "Bright Smile Studio" in other.say("hello").text  # the default agent
        text = Call(server.webhook, secret, agent_id="agt_support", channel="sms",
                    caller="+15550004444")
        with text:
            assert text.say("hi by text").status == 200
    sent = _wait_for_sent(fake_api)
    assert sent["agent_id"] == "agt_support"
    assert sent["body"] == "Support here; last time you said nothing."
    assert sent["to_number"] == "+15550004444"


def _wait_for_sent(fake_api, timeout=20.0):
    import time

    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if fake_api.count("POST", "/v1/messages"):
            return fake_api.last("POST", "/v1/messages").body
        time.sleep(0.05)
    raise AssertionError("no text reply was sent")


@pytest.mark.parametrize(("pairs", "message"), [
    ("agt_1", "is not agent_id=module:callable"),
    ("agt_1=nocolon", "is not agent_id=module:callable"),
])
def test_bad_agents_setting_is_refused(pairs, message):
    with pytest.raises(config.ConfigError, match=message):
        config.agent_factories(pairs, None)


def test_agents_file_may_be_json(tmp_path):
    path = tmp_path / "agents.json"
    path.write_text('{"agt_a": "pkg.mod:make"}')
    assert config.agent_factories("agt_b=pkg.other:make", str(path)) == {
        "agt_a": "pkg.mod:make", "agt_b": "pkg.other:make"}
    path.write_text('{"agt_a": 3}')
    with pytest.raises(config.ConfigError, match="AGENTS_FILE"):
        config.agent_factories(None, str(path))


CALL = {"id": "call_out_1", "agentId": "agt_1", "phoneNumberId": "num_1",
        "fromNumber": "+14155550001", "toNumber": "+14155559999", "direction": "outbound",
        "status": "in-progress", "startedAt": "2026-12-01T10:00:00Z"}


def test_outbound_call_from_the_cli_is_retried_only_when_nothing_was_done(fake_api, tmp_path):
    from app import create_app
    from tests.fake_agentphone import json_reply

    app = create_app({
        "TESTING": True, "WEBHOOK_SECRETS": ("whsec_test",),
        "DATABASE_URL": "sqlite:///" + str(tmp_path / "t.db"), "AGENTPHONE_API_KEY": "sk_test",
        "AGENTPHONE_API_URL": fake_api.url, "JOB_RUNNER": False,
    })
    runner = app.test_cli_runner()
    fake_api.on("POST", "/v1/calls",
                json_reply({"error": {"message": "busy", "code": "UNAVAILABLE"}}, 503),
                CALL)
    result = runner.invoke(args=["agentphone", "call", "+14155559999", "--agent", "agt_1",
                                 "--greeting", "Hi, this is your reminder."])
    assert result.exit_code == 0, result.output
    assert "calling +14155559999 from +14155550001: call_out_1 (in-progress)" in result.output
    assert fake_api.count("POST", "/v1/calls") == 2  # 503: nothing was done, so retried
    assert fake_api.last("POST", "/v1/calls").body == {
        "agentId": "agt_1", "toNumber": "+14155559999",
        "initialGreeting": "Hi, this is your reminder."}
    fake_api.on("POST", "/v1/calls", json_reply({"detail": "boom"}, 500))
    result = runner.invoke(args=["agentphone", "call", "+14155559999", "--agent", "agt_1"])
    assert result.exit_code == 1 and "boom" in result.output
    assert fake_api.count("POST", "/v1/calls") == 3  # a 500 may have placed it: not retried
    get_store(app).close()
