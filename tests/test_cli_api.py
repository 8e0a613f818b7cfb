import json

import pytest

from app import create_app
from app.cli.api import format_table
from app.cli.output import terminal_safe
from tests.fake_agentphone import (  # noqa: F401
    fake_api_fixture,
    json_reply,
    offset_list,
    sse_reply,
)

CALLS = [{"id": f"call_{n}", "agentId": "agt_1", "fromNumber": "+15559876543",
          "toNumber": "+15551234567", "direction": "inbound", "status": "completed",
          "startedAt": f"2025-01-15T14:0{n}:00Z", "endedAt": "2025-01-15T14:09:00Z",
          "durationSeconds": 30 + n} for n in range(5)]
DELIVERIES = [
    {"id": "d1", "messageId": "msg_1", "eventType": "agent.message", "channel": "sms",
     "status": "delivered", "httpStatus": 200, "errorMessage": None, "responseBody": "OK",
     "attemptCount": 1, "lastAttemptAt": "2025-01-15T12:00:01Z", "nextRetryAt": None,
     "createdAt": "2025-01-15T12:00:00Z"},
    {"id": "d2", "messageId": "msg_2", "eventType": "agent.call_ended", "channel": "voice",
     "status": "failed", "httpStatus": 500, "errorMessage": "Internal Server Error",
     "responseBody": "", "attemptCount": 3, "lastAttemptAt": "2025-01-15T12:10:00Z",
     "nextRetryAt": "2025-01-15T13:10:00Z", "createdAt": "2025-01-15T12:00:00Z"},
]
STATS = {"total": 2, "success": 1, "failed": 1, "pending": 0, "successRate": 50.0,
         "byEventType": {}, "byHour": []}


@pytest.fixture
def run(fake_api, tmp_path):
    """Invoke `flask --app wsgi agentphone ...` against the fake; returns click's Result."""
    app = create_app({
        "TESTING": True, "WEBHOOK_SECRETS": ("whsec_test",),
        "DATABASE_URL": "sqlite:///" + str(tmp_path / "t.db"), "AGENTPHONE_API_KEY": "sk_test",
        "AGENTPHONE_API_URL": fake_api.url, "JOB_RUNNER": False,
    })
    runner = app.test_cli_runner()
    return lambda *args: runner.invoke(args=["agentphone", *args])


def test_calls_table(fake_api, run):
    fake_api.on("GET", "/v1/calls", offset_list(CALLS))
    result = run("calls", "--status", "completed", "--limit", "3")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split() == ["ID", "STATUS", "DIRECTION", "FROM", "TO", "STARTED", "SECONDS"]
    assert lines[1].split() == ["call_0", "completed", "inbound", "+15559876543",
                                "+15551234567", "2025-01-15T14:00:00Z", "30"]
    assert lines[-1] == "3 call(s)"
    assert fake_api.last("GET", "/v1/calls").query == {"status": "completed", "limit": "3"}


def test_calls_json(fake_api, run):
    fake_api.on("GET", "/v1/calls", offset_list(CALLS))
    result = run("calls", "--json")
    assert json.loads(result.output) == CALLS


def test_api_error_goes_to_stderr_with_field_details(fake_api, run):
    fake_api.on("GET", "/v1/calls", json_reply({"detail": [
        {"loc": ["query", "status"], "msg": "unknown status", "type": "value_error"}]}, 422))
    result = run("calls")
    assert result.exit_code == 1
    assert result.stdout == ""
    assert result.stderr == "Error: HTTP 422: unknown status\n  - status: unknown status\n"


def test_missing_api_key_is_reported(fake_api, tmp_path):
    app = create_app({"TESTING": True, "WEBHOOK_SECRETS": ("whsec_test",),
                      "DATABASE_URL": "sqlite:///" + str(tmp_path / "t.db"),
                      "AGENTPHONE_API_KEY": None, "JOB_RUNNER": False})
    result = app.test_cli_runner().invoke(args=["agentphone", "calls"])
    assert result.exit_code == 1
    assert "AGENTPHONE_API_KEY" in result.stderr
    assert fake_api.requests == []


def test_transcript(fake_api, run):
    fake_api.on("GET", "/v1/calls/call_1/transcript", {"data": [
        {"id": "t1", "transcript": "Where is my order?", "response": "Let me check.",
         "confidence": 0.9, "createdAt": "2025-01-15T14:00:15Z"}]})
    result = run("transcript", "call_1")
    assert result.output == "user: Where is my order?\nagent: Let me check.\n"


def test_transcript_follow(fake_api, run):
    fake_api.on("GET", "/v1/calls/call_1/transcript/stream", sse_reply(
        'event: connected\ndata: {"callId":"call_1","status":"in-progress",'
        '"direction":"inbound","fromNumber":"+15559876543","toNumber":"+15551234567"}\n\n',
        ": heartbeat\n\n",
        'event: turn\ndata: {"role":"agent","content":"Hello!","createdAt":"t1"}\n\n',
        'event: ended\ndata: {"callId":"call_1","status":"completed","durationSeconds":5}\n\n'))
    result = run("transcript", "call_1", "--follow")
    assert result.exit_code == 0, result.output
    assert result.output.splitlines() == [
        "# call call_1 (in-progress, inbound) +15559876543 -> +15551234567",
        "agent: Hello!",
        "# ended: completed, 5 s",
    ]
    lines = run("transcript", "call_1", "-f", "--json").output.splitlines()
    assert [json.loads(line)["event"] for line in lines] == ["connected", "turn", "ended"]


def test_deliveries_table_and_stats(fake_api, run):
    fake_api.on("GET", "/v1/webhooks/deliveries", offset_list(DELIVERIES, envelope="items"))
    fake_api.on("GET", "/v1/webhooks/deliveries/stats", STATS)
    result = run("deliveries", "--failed", "--hours", "24")
    assert result.exit_code == 0, result.output
    lines = result.output.splitlines()
    assert lines[0].split()[:6] == ["ID", "EVENT", "CHANNEL", "STATUS", "HTTP", "ATTEMPTS"]
    assert lines[1].split() == ["d2", "agent.call_ended", "voice", "failed", "500", "3",
                                "2025-01-15T13:10:00Z", "Internal", "Server", "Error"]
    assert len(lines) == 4
    assert lines[-1] == ("last 24 h: 2 total, 1 delivered, 1 failed, 0 pending; "
                         "success rate 50%")
    assert fake_api.last("GET", "/v1/webhooks/deliveries/stats").query == {"hours": "24"}


def test_deliveries_json(fake_api, run):
    fake_api.on("GET", "/v1/webhooks/deliveries", offset_list(DELIVERIES, envelope="items"))
    fake_api.on("GET", "/v1/webhooks/deliveries/stats", STATS)
    assert json.loads(run("deliveries", "--json").output) == {"deliveries": DELIVERIES,
                                                              "stats": STATS}


def test_webhook_test(fake_api, run):
    fake_api.on("POST", "/v1/webhooks/test",
                {"success": True, "httpStatus": 200, "errorMessage": None},
                {"success": False, "statusCode": 401, "error": "Invalid signature"})
    ok = run("webhook", "test", "--agent-id", "agt_1")
    assert (ok.exit_code, ok.output) == (0, "webhook test delivered: HTTP 200\n")
    assert fake_api.last("POST", "/v1/webhooks/test").query == {"agentId": "agt_1"}
    failed = run("webhook", "test")
    assert failed.exit_code == 1
    assert failed.stderr == "Error: webhook test failed: HTTP 401: Invalid signature\n"


def test_send(fake_api, run):
    fake_api.on("POST", "/v1/messages", {"id": "msg_9", "status": "sent", "channel": "sms",
                                         "from_number": "+14155550001",
                                         "to_number": "+14155552671", "media_urls": []})
    result = run("send", "+14155552671", "On my way", "--agent-id", "agt_1")
    assert (result.exit_code, result.output) == (
        0, "sent: msg_9 via sms +14155550001 -> +14155552671\n")
    assert fake_api.last("POST", "/v1/messages").body == {
        "agent_id": "agt_1", "to_number": "+14155552671", "body": "On my way"}
    assert json.loads(run("send", "+1", "x", "--number-id", "num_1", "--json").output)["id"] == (
        "msg_9")


def agent(agent_id):
    return {"id": agent_id, "name": "Front desk", "description": None, "voiceMode": "webhook",
            "createdAt": "2025-01-15T12:00:00Z"}


def test_send_from_the_accounts_only_agent(fake_api, run):
    fake_api.on("GET", "/v1/agents", offset_list([agent("agt_only")]))
    fake_api.on("POST", "/v1/messages", {"id": "msg_9", "status": "sent", "channel": "sms",
                                         "from_number": "+14155550001",
                                         "to_number": "+14155552671"})
    result = run("send", "+14155552671", "hi")
    assert result.exit_code == 0, result.output
    assert fake_api.last("POST", "/v1/messages").body == {
        "agent_id": "agt_only", "to_number": "+14155552671", "body": "hi"}


@pytest.mark.parametrize(("agents", "said"), [
    (["agt_a", "agt_b"], "this account has 2 agents (agt_a, agt_b): give --agent-id"),
    ([f"agt_{n}" for n in range(12)], "this account has 12 agents (agt_0, agt_1, "),
    ([], "this account has no agent to send from"),
])
def test_send_without_a_sender_asks_for_one(fake_api, run, agents, said):
    fake_api.on("GET", "/v1/agents", offset_list([agent(a) for a in agents]))
    result = run("send", "+14155552671", "hi")
    assert result.exit_code == 2
    assert said in result.stderr
    assert fake_api.count("POST", "/v1/messages") == 0


def test_send_validation_error_lists_fields(fake_api, run):
    fake_api.on("POST", "/v1/messages", json_reply({"error": {
        "message": "Validation error", "code": "VALIDATION_ERROR", "type": "validation_error",
        "details": [{"field": "to_number", "message": "Invalid phone number",
                     "type": "value_error"}]}}, 400))
    result = run("send", "12", "hi", "--agent-id", "agt_1")
    assert result.exit_code == 1
    assert "to_number: Invalid phone number" in result.stderr
    assert fake_api.count("POST", "/v1/messages") == 1


def test_format_table():
    assert format_table(["A", "LONG"], [["xyz", None], ["1", 2]]) == (
        "A    LONG\nxyz  -\n1    2")
    assert format_table(["A"], []) == "A"


HOSTILE = ("\x1b]0;owned\x07\x1b]8;;http://evil.example\x1b\\link\x1b]8;;\x1b\\"
           "\x1b[2J\x1b[31mred\x1b[0m\rover\x08\x00\x9b31m\x7fend\ttab")


@pytest.mark.parametrize(("raw", "shown"), [
    (HOSTILE, "linkredover31mend\ttab"),
    ("line one\nline two", "line one\nline two"),
    ("caf\u00e9 \u2713", "caf\u00e9 \u2713"),
    ("\x1b]52;c;cGF3bmVk", ""),  # an unterminated OSC (clipboard write) swallows the rest
    ("a\x1bcb\x1b(Bc", "abc"),  # reset-terminal and charset escapes
])
def test_terminal_safe_strips_escape_sequences_and_control_characters(raw, shown):
    assert terminal_safe(raw) == shown


def test_cli_strips_control_characters_from_api_text_even_when_piped(fake_api, run):
    hostile_call = {**CALLS[0], "id": "call_\x1b]0;owned\x07x", "status": "\x1b[31mdone"}
    fake_api.on("GET", "/v1/calls", offset_list([hostile_call]))
    fake_api.on("GET", "/v1/calls/call_1/transcript", {"data": [
        {"id": "t1", "transcript": "hi\x1b[2J\x1b[H", "response": "ok\x9b1m\x07",
         "createdAt": "2025-01-15T14:00:15Z"}]})
    fake_api.on("GET", "/v1/webhooks/deliveries/stats", json_reply(
        {"error": {"message": "nope\x1b]0;title\x07", "code": "BAD\x1b[5m"}}, 400))
    fake_api.on("GET", "/v1/webhooks/deliveries", offset_list([], envelope="items"))

    table = run("calls")
    transcript = run("transcript", "call_1")
    error = run("deliveries")
    as_json = run("calls", "--json")

    assert table.exit_code == 0, table.output
    assert table.output.splitlines()[1].split()[:2] == ["call_x", "done"]
    assert transcript.output == "user: hi\nagent: ok1m\n"
    assert error.exit_code == 1
    assert error.stderr == "Error: HTTP 400 BAD: nope\n"
    for result in (table, transcript, error, as_json):
        assert not any(ch in result.output for ch in "\x1b\x07\x9b\r")
    assert json.loads(as_json.output)[0]["id"] == "call_\x1b]0;owned\x07x"  # escaped, not lost
