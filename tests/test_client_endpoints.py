import json

import pytest
from flask import Flask
from werkzeug.wrappers import Response

from app.agentphone import (
    DEFAULT_BASE_URL,
    AgentPhoneError,
    MissingAPIKeyError,
    client_from_app,
    from_config,
)
from tests.fake_agentphone import (  # noqa: F401
    CALL,
    SENT,
    SPEC_PATH,
    OpenAPIValidator,
    api_fixture,
    fake_api_fixture,
    json_reply,
    make_api_fixture,
)

ENTRY = CALL["transcripts"][0]
WEBHOOK = {"id": "wh_1", "url": "https://example.test/webhook", "secret": "whsec_abc",
           "status": "active", "contextLimit": 10, "timeout": 30,
           "createdAt": "2025-01-15T12:00:00Z"}


def test_get_call_with_transcripts(fake_api, api):
    fake_api.on("GET", "/v1/calls/call_1", CALL)
    call = api.get_call("call_1")
    assert (call.id, call.from_number, call.duration_seconds, call.is_terminal) == (
        "call_1", "+15559876543", 330, True)
    assert call.transcripts[0].response == "Of course! Let me look that up."
    assert call.raw == CALL


@pytest.mark.parametrize("body", [{"data": [ENTRY]}, {"transcripts": [ENTRY]}, [ENTRY]])
def test_transcript_shapes(fake_api, api, body):
    fake_api.on("GET", "/v1/calls/call_1/transcript", json_reply(body))
    assert [e.transcript for e in api.get_transcript("call_1")] == [ENTRY["transcript"]]


def test_ids_cannot_escape_their_path_segment(fake_api, api):
    fake_api.on("GET", "/v1/calls/a%2Fb", CALL)
    api.get_call("a/b")
    assert fake_api.requests[0].path == "/v1/calls/a%2Fb"


def test_create_and_end_call(fake_api, api):
    live = {**CALL, "status": "in-progress", "endedAt": None, "direction": "outbound"}
    fake_api.on("POST", "/v1/calls", live)
    fake_api.on("POST", "/v1/calls/call_1/end", live)
    call = api.create_call("agt_1", "+14155559999", initial_greeting="Hello!",
                           variables={"name": "Ada"})
    assert call.status == "in-progress" and not call.is_terminal
    assert fake_api.last("POST", "/v1/calls").body == {
        "agentId": "agt_1", "toNumber": "+14155559999", "initialGreeting": "Hello!",
        "variables": {"name": "Ada"}}
    api.end_call("call_1")
    assert fake_api.last("POST", "/v1/calls/call_1/end").body is None


def test_send_message_uses_snake_case(fake_api, api):
    fake_api.on("POST", "/v1/messages", SENT)
    sent = api.send_message(agent_id="agt_1", to_number="+14155552671", body="Thanks!",
                            number_id="num_1", media_urls=["https://x.test/a.png"])
    assert (sent.id, sent.channel, sent.from_number, sent.to_number) == (
        "msg_98765zyxwv", "sms", "+14155550001", "+14155552671")
    assert fake_api.last("POST", "/v1/messages").body == {
        "agent_id": "agt_1", "to_number": "+14155552671", "body": "Thanks!",
        "media_urls": ["https://x.test/a.png"], "number_id": "num_1"}


def test_react(fake_api, api):
    fake_api.on("POST", "/v1/messages/msg_1/reactions",
                {"id": "r1", "reaction_type": "love", "message_id": "msg_1", "channel": "imessage"})
    assert api.react("msg_1", "love").reaction_type == "love"
    assert fake_api.last("POST", "/v1/messages/msg_1/reactions").body == {"reaction": "love"}


def test_conversations(fake_api, api):
    conv = {"id": "conv_1", "agentId": "agt_1", "participant": "+14155552671",
            "messageCount": 2, "metadata": {"step": 1}, "groupName": None,
            "messages": [{"id": "m1", "body": "hi", "fromNumber": "+14155552671",
                          "toNumber": "+15551234567", "receivedAt": "2025-01-15T14:00:00Z"}]}
    fake_api.on("GET", "/v1/conversations", {"data": [conv], "hasMore": False, "total": 1})
    fake_api.on("GET", "/v1/agents/agt_1/conversations", {"data": [conv], "hasMore": False})
    fake_api.on("GET", "/v1/conversations/conv_1", conv)
    fake_api.on("PATCH", "/v1/conversations/conv_1", conv)
    assert api.list_conversations(limit=5).items[0].message_count == 2
    assert api.list_agent_conversations("agt_1").items[0].id == "conv_1"
    detail = api.get_conversation("conv_1", message_limit=10)
    assert detail.messages[0].from_number == "+14155552671"
    assert fake_api.last("GET", "/v1/conversations/conv_1").query == {"message_limit": "10"}
    api.update_conversation("conv_1", metadata={"step": 2})
    api.update_conversation("conv_1", metadata=None)
    api.update_conversation("conv_1", group_name="Team")
    bodies = [r.body for r in fake_api.requests if r.method == "PATCH"]
    assert bodies == [{"metadata": {"step": 2}}, {"metadata": None}, {"group_name": "Team"}]


@pytest.mark.parametrize(("agent_id", "path"), [
    (None, "/v1/webhooks"), ("agt_1", "/v1/agents/agt_1/webhook")])
def test_webhook_configuration(fake_api, api, agent_id, path):
    fake_api.on("GET", path, json_reply(None), WEBHOOK)
    fake_api.on("POST", path, WEBHOOK)
    fake_api.on("DELETE", path, {"message": "Webhook deleted"})
    assert api.get_webhook(agent_id=agent_id) is None
    assert api.get_webhook(agent_id=agent_id).context_limit == 10
    created = api.set_webhook("https://example.test/webhook", context_limit=10,
                              agent_id=agent_id)
    assert created.secret == "whsec_abc"
    assert fake_api.last("POST", path).body == {"url": "https://example.test/webhook",
                                                "contextLimit": 10}
    api.delete_webhook(agent_id=agent_id)


@pytest.mark.parametrize("body", [
    {"success": True, "httpStatus": 200, "errorMessage": None},
    {"success": True, "statusCode": 200, "responseMs": 12, "error": None},
])
def test_webhook_test_response_shapes(fake_api, api, body):
    fake_api.on("POST", "/v1/webhooks/test", body)
    result = api.test_webhook(agent_id="agt_1")
    assert (result.success, result.http_status, result.error_message) == (True, 200, None)
    assert fake_api.last("POST", "/v1/webhooks/test").query == {"agentId": "agt_1"}


def test_agent_webhook_test_and_deliveries(fake_api, api):
    fake_api.on("POST", "/v1/agents/agt_1/webhook/test",
                {"success": False, "httpStatus": 500, "errorMessage": "boom"})
    fake_api.on("GET", "/v1/agents/agt_1/webhook/deliveries",
                json_reply([{"id": "d1", "status": "failed", "httpStatus": 500}]))
    assert api.test_agent_webhook("agt_1").error_message == "boom"
    assert [d.status for d in api.list_agent_deliveries("agt_1", limit=5)] == ["failed"]


def test_delivery_stats(fake_api, api):
    fake_api.on("GET", "/v1/webhooks/deliveries/stats", {
        "total": 10, "success": 8, "failed": 1, "pending": 1, "successRate": 80.0,
        "byEventType": {"agent.message": 10}, "byHour": []})
    stats = api.delivery_stats(hours=24)
    assert (stats.total, stats.failed, stats.success_rate) == (10, 1, 80.0)


def test_agents_numbers_contacts(fake_api, api):
    fake_api.on("GET", "/v1/agents", {"data": [{"id": "agt_1", "name": "Support"}], "total": 1})
    fake_api.on("GET", "/v1/agents/agt_1", {"id": "agt_1", "name": "Support",
                                            "voiceMode": "webhook"})
    fake_api.on("GET", "/v1/numbers", {"data": [{"id": "num_1", "phoneNumber": "+15551234567"}],
                                       "hasMore": False, "total": 1})
    fake_api.on("GET", "/v1/numbers/num_1", {"id": "num_1", "phoneNumber": "+15551234567"})
    fake_api.on("GET", "/v1/contacts", {"data": [{"id": "ct_1", "phoneNumber": "+1"}],
                                        "hasMore": False, "total": 1})
    assert api.list_agents().items[0].name == "Support"
    assert api.get_agent("agt_1").voice_mode == "webhook"
    assert api.list_numbers().items[0].phone_number == "+15551234567"
    assert api.get_number("num_1").id == "num_1"
    assert api.list_contacts(limit=50).items[0].id == "ct_1"


def test_client_from_flask_config(fake_api):
    app = Flask(__name__)
    app.config.update(AGENTPHONE_API_KEY="sk_test", AGENTPHONE_API_URL=fake_api.url + "/")
    fake_api.on("GET", "/v1/calls/call_1", CALL)
    with client_from_app(app) as client:
        assert client.get_call("call_1").id == "call_1"
    assert from_config({"AGENTPHONE_API_KEY": "k"}).base_url == DEFAULT_BASE_URL
    with pytest.raises(MissingAPIKeyError):
        from_config({"AGENTPHONE_API_KEY": None})


def test_validator_rejects_what_the_spec_lacks():
    validator = OpenAPIValidator(json.loads(SPEC_PATH.read_text()))
    assert validator.problems("GET", "/v1/calls", ["limit", "status"], None) == []
    assert validator.problems("GET", "/v1/agents/voices", [], None) == []
    assert validator.problems("GET", "/v1/calls", ["cursor"], None) == [
        "GET /v1/calls: undeclared query parameter 'cursor'"]
    assert validator.problems("PUT", "/v1/calls", [], None) == [
        "PUT /v1/calls: path /v1/calls has no PUT"]
    assert validator.problems("GET", "/v2/calls", [], None) == ["GET /v2/calls: unknown path"]
    assert validator.problems("POST", "/v1/messages", [], {"agentId": "a", "body": ""}) == [
        "POST /v1/messages: unknown body field 'agentId'"]
    assert validator.problems("POST", "/v1/calls", [], {"agentId": "a"}) == [
        "POST /v1/calls: missing required body field 'toNumber'"]
    assert validator.problems("GET", "/v1/calls/c1", [], {"x": 1}) == [
        "GET /v1/calls/{call_id}: sends a JSON body the operation does not take"]


def test_a_2xx_that_is_not_json_is_an_error(fake_api, api):
    fake_api.on("GET", "/v1/calls/call_1", Response("<html>maintenance</html>", 200))
    with pytest.raises(AgentPhoneError, match="not JSON") as info:
        api.get_call("call_1")
    assert info.value.status == 200
