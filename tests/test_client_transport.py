import time

import pytest

from app.agentphone import APIConnectionError, APITimeoutError, RateLimitError, ServerError
from app.agentphone.transport import AgentPhoneRetry, backoff_delay, build_retry
from tests.fake_agentphone import (  # noqa: F401
    CALL,
    SENT,
    api_fixture,
    fake_api_fixture,
    json_reply,
    make_api_fixture,
    slow,
    trickle,
)

RATE_LIMITED = {"error": {"message": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED",
                          "type": "rate_limit_error"}}


def rate_limited(retry_after="1"):
    return json_reply(RATE_LIMITED, 429, {"Retry-After": retry_after})


def test_sends_bearer_key_and_json_accept(fake_api, api):
    fake_api.on("GET", "/v1/calls/call_1", CALL)
    api.get_call("call_1")
    headers = fake_api.last("GET", "/v1/calls/call_1").headers
    assert headers["Authorization"] == "Bearer sk_test"
    assert headers["Accept"] == "application/json"


def test_429_waits_for_retry_after_then_succeeds(fake_api, api):
    fake_api.on("GET", "/v1/calls/call_1", rate_limited("1"), CALL)
    started = time.monotonic()
    assert api.get_call("call_1").id == "call_1"
    assert time.monotonic() - started >= 0.9
    first, second = [r.at for r in fake_api.requests]
    assert second - first >= 0.9


def test_retry_after_is_capped_by_max_wait(fake_api, make_api):
    fake_api.on("GET", "/v1/calls/call_1", rate_limited("3600"), CALL)
    started = time.monotonic()
    make_api(max_wait=0.2).get_call("call_1")
    assert time.monotonic() - started < 2


def test_retry_after_as_http_date(fake_api, api):
    soon = time.strftime("%a, %d %b %Y %H:%M:%S GMT", time.gmtime(time.time() + 2))
    fake_api.on("GET", "/v1/calls/call_1", rate_limited(soon), CALL)
    started = time.monotonic()
    api.get_call("call_1")
    assert time.monotonic() - started >= 0.5  # the date has 1 s resolution


@pytest.mark.parametrize("status", [408, 500, 502, 503, 504])
def test_get_retries_transient_statuses(fake_api, api, status):
    fake_api.on("GET", "/v1/calls/call_1", json_reply({"detail": "busy"}, status), CALL)
    assert api.get_call("call_1").status == "completed"
    assert fake_api.count("GET", "/v1/calls/call_1") == 2


def test_delete_retries_503(fake_api, api):
    fake_api.on("DELETE", "/v1/webhooks", json_reply({"detail": "busy"}, 503), {"ok": True})
    api.delete_webhook()
    assert fake_api.count("DELETE", "/v1/webhooks") == 2


def test_get_gives_up_after_max_retries(fake_api, make_api):
    fake_api.on("GET", "/v1/calls/call_1", json_reply({"detail": "down"}, 503))
    with pytest.raises(ServerError, match="HTTP 503: down"):
        make_api(max_retries=2).get_call("call_1")
    assert fake_api.count("GET", "/v1/calls/call_1") == 3


def test_get_does_not_retry_client_errors(fake_api, api):
    fake_api.on("GET", "/v1/calls/call_1", json_reply({"detail": "Call not found"}, 404))
    with pytest.raises(Exception, match="Call not found"):
        api.get_call("call_1")
    assert fake_api.count("GET", "/v1/calls/call_1") == 1


@pytest.mark.parametrize("status", [500, 502, 504, 408])
def test_post_is_not_retried_on_server_errors(fake_api, api, status):
    fake_api.on("POST", "/v1/messages", json_reply({"detail": "boom"}, status), SENT)
    with pytest.raises(Exception, match="boom"):
        api.send_message("agt_1", "+14155552671", "hello")
    assert fake_api.count("POST", "/v1/messages") == 1


@pytest.mark.parametrize("first", [rate_limited("0"), json_reply({"detail": "busy"}, 503)])
def test_post_is_retried_on_429_and_503(fake_api, api, first):
    fake_api.on("POST", "/v1/messages", first, SENT)
    assert api.send_message("agt_1", "+14155552671", "hello").id == SENT["id"]
    assert fake_api.count("POST", "/v1/messages") == 2


def test_post_is_not_retried_after_a_read_timeout(fake_api, make_api):
    fake_api.on("POST", "/v1/messages", slow(1.0, SENT))
    with pytest.raises(APIConnectionError, match="POST /v1/messages failed"):
        make_api(timeout=(2.0, 0.3)).send_message("agt_1", "+14155552671", "hello")
    time.sleep(0.8)  # let a (wrong) retry reach the fake before counting
    assert fake_api.count("POST", "/v1/messages") == 1


def test_get_is_retried_after_a_read_timeout(fake_api, make_api):
    fake_api.on("GET", "/v1/calls/call_1", slow(1.0, CALL), CALL)
    assert make_api(timeout=(2.0, 0.3)).get_call("call_1").id == "call_1"
    assert fake_api.count("GET", "/v1/calls/call_1") == 2


def test_connection_refused_is_retried_then_reported(make_api, fake_api):
    client = make_api(max_retries=1)
    client.base_url = "http://127.0.0.1:9"  # discard port: nothing listens
    with pytest.raises(APIConnectionError, match="GET /v1/calls/call_1 failed"):
        client.get_call("call_1")


def test_budget_stops_retries_and_returns_the_last_error(fake_api, make_api):
    fake_api.on("GET", "/v1/calls/call_1", rate_limited("1"))
    started = time.monotonic()
    with pytest.raises(RateLimitError):
        make_api(max_retries=5, budget=0.5).get_call("call_1")
    assert time.monotonic() - started < 0.9
    assert fake_api.count("GET", "/v1/calls/call_1") == 1


@pytest.mark.parametrize("method", ["GET", "POST"])
def test_a_trickling_body_cannot_hold_a_call_past_its_budget(fake_api, make_api, method):
    # One byte every 0.3 s: no single read ever waits long enough for the read timeout.
    path = "/v1/calls/call_1" if method == "GET" else "/v1/messages"
    fake_api.on(method, path, trickle(0.3, CALL if method == "GET" else SENT))
    client = make_api(timeout=(2.0, 2.0), budget=1.5)
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match="not complete within the deadline"):
        if method == "GET":
            client.get_call("call_1")
        else:
            client.send_message("agt_1", "+14155552671", "hello")
    assert time.monotonic() - started < 2.5
    assert fake_api.count(method, path) == 1  # a body cut short is not sent again


def test_a_slow_answer_is_cut_at_the_budget_not_the_read_timeout(fake_api, make_api):
    fake_api.on("POST", "/v1/messages", slow(3.0, SENT))
    started = time.monotonic()
    with pytest.raises(APITimeoutError, match="POST /v1/messages failed"):
        make_api(timeout=(2.0, 10.0), budget=0.8).send_message("agt_1", "+14155552671", "hi")
    assert time.monotonic() - started < 1.8


def test_a_retry_gets_only_what_is_left_of_the_budget(fake_api, make_api):
    fake_api.on("GET", "/v1/calls/call_1", slow(1.0, json_reply({"detail": "busy"}, 503)),
                slow(3.0, CALL))
    started = time.monotonic()
    with pytest.raises(APITimeoutError):
        make_api(timeout=(2.0, 10.0), budget=1.5).get_call("call_1")
    assert time.monotonic() - started < 2.2  # not 1.0 + the 1.5 s the first attempt had
    assert fake_api.count("GET", "/v1/calls/call_1") == 2


def test_a_body_that_keeps_coming_within_the_budget_is_read_whole(fake_api, make_api):
    fake_api.on("GET", "/v1/calls/call_1", trickle(0.001, CALL))
    assert make_api(budget=10).get_call("call_1").transcripts[0].id == "tr_001"


def test_backoff_delay_grows_and_is_capped():
    assert backoff_delay(0, 1.0, 60, 0) == 0
    assert [backoff_delay(n, 1.0, 60, 0) for n in (1, 2, 3, 8)] == [1, 2, 4, 60]
    assert 1.0 <= backoff_delay(1, 1.0, 60, 0.1) <= 1.1


def test_retry_policy_per_method():
    retry = build_retry(max_retries=2)
    assert isinstance(retry, AgentPhoneRetry)
    assert all(retry.is_retry("GET", s) for s in (408, 429, 500, 502, 503, 504))
    assert not any(retry.is_retry("GET", s) for s in (400, 401, 404, 409, 422))
    assert [s for s in (408, 429, 500, 502, 503, 504) if retry.is_retry("POST", s)] == [429, 503]
    assert not build_retry(max_retries=0).is_retry("GET", 503)
