"""`flask --app wsgi run` serves the same app; the simulator talks to a real server."""

import json
import re
import sys
from pathlib import Path

import pytest

from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.servers import free_port, post_stream, start_gunicorn

pytestmark = pytest.mark.slow
FLASK = str(Path(sys.executable).with_name("flask"))


def test_threaded_dev_server_streams_voice_and_acks_texts(tmp_path, effects_agent):
    port = free_port()
    server = start_gunicorn(
        tmp_path, {"AGENTPHONE_WEBHOOK_SECRET": SECRET, "TEST_TOOL_SECONDS": "0.5",
                   **effects_agent.env},
        command=[FLASK, "--app", "wsgi", "run", "--port", str(port)], port=port)
    try:
        raw, headers = signed_request(SECRET, payload("voice", "dev"))
        response, lines = post_stream(server.webhook, raw, headers)
        assert response.headers["Content-Type"] == "application/x-ndjson"
        assert [obj for _, obj in lines] == [
            {"text": "Checking.", "interim": True}, {"text": "Still here.", "interim": True},
            {"text": "Tool said done for dev."}]
        assert lines[0][0] < 0.5
        raw, headers = signed_request(SECRET, payload("sms"))
        response, lines = post_stream(server.webhook, raw, headers)
        assert [obj for _, obj in lines] == [{"ok": True}]
        server.wait_for_log("(text_message) done")
    finally:
        server.stop()


def test_simulator_prints_each_line_with_its_arrival_time(gunicorn, app):
    server = gunicorn(workers=1, DEMO_TOOL_LATENCY=0.3)
    result = app.test_cli_runner().invoke(args=["agentphone", "simulate", "--url", server.webhook,
                                          "--text", "Where is my order?", "--id", "whd_sim"],
                                catch_exceptions=False)
    assert result.exit_code == 0, result.output
    out = result.output.splitlines()
    assert out[0].startswith("POST " + server.webhook) and "whd_sim" in out[0]
    assert re.match(r"\s*[\d.]+ ms  HTTP 200 application/x-ndjson", out[1])
    lines = [json.loads(line.split("ms  ", 1)[1]) for line in out[2:]]
    assert lines[0]["interim"] is True and "interim" not in lines[-1]


@pytest.mark.parametrize("flag", ["--sms", "--call-ended"])
def test_simulator_sends_texts_and_call_ends(gunicorn, app, flag):
    server = gunicorn(workers=1)
    result = app.test_cli_runner().invoke(args=["agentphone", "simulate", "--url", server.webhook,
                                          flag], catch_exceptions=False)
    assert result.exit_code == 0, result.output
    assert result.output.rstrip().endswith('{"ok":true}')


def test_simulator_reports_rejection_and_unreachable_server(gunicorn, app):
    server = gunicorn(workers=1)
    wrong = app.test_cli_runner().invoke(args=["agentphone", "simulate", "--url", server.webhook,
                                         "--secret", "whsec_wrong"])
    assert wrong.exit_code == 1 and "401" in wrong.output
    gone = app.test_cli_runner().invoke(args=["agentphone", "simulate", "--url",
                                        f"http://127.0.0.1:{free_port()}/webhook"])
    assert gone.exit_code == 1 and "could not reach" in gone.output


def test_simulator_starts_a_new_call_unless_told_which(app, httpserver):
    httpserver.expect_request("/webhook", method="POST").respond_with_data(
        '{"text":"Hi."}\n', content_type="application/x-ndjson")

    def call_ids(*extra):
        result = app.test_cli_runner().invoke(
            args=["agentphone", "simulate", "--url", httpserver.url_for("/webhook"), *extra],
            catch_exceptions=False)
        assert result.exit_code == 0, result.output
        return json.loads(httpserver.log[-1][0].get_data())["data"]["callId"]

    first, second = call_ids(), call_ids()
    assert first != second and first.startswith("call_sim_")
    assert call_ids("--call-id", "call_ongoing") == call_ids("--call-id", "call_ongoing")
    assert call_ids("--call-id", "call_ongoing") == "call_ongoing"
    assert call_ids("--call-ended", "--call-id", "call_ongoing") == "call_ongoing"
