import socket
import time

import pytest

from app.agentphone import (
    AgentPhoneClient,
    AgentPhoneError,
    APIConnectionError,
    APITimeoutError,
    AuthenticationError,
    BadRequestError,
    MissingAPIKeyError,
    NotFoundError,
    RateLimitError,
    ServerError,
)
from app.agentphone.errors import ErrorInfo, parse_error_body, parse_retry_after
from tests.fake_agentphone import (  # noqa: F401
    SENT,
    cut_short,
    fake_api_fixture,
    json_reply,
    make_api_fixture,
    slow,
    trickle,
)
from tests.servers import free_port

ENVELOPE = (
    '{"error": {"message": "Validation error", "code": "VALIDATION_ERROR",'
    ' "type": "validation_error", "details": [{"field": "country",'
    ' "message": "Country must be a 2-letter ISO code", "type": "value_error"}]}}'
)
FASTAPI_LIST = (
    '{"detail": [{"loc": ["body", "to_number"], "msg": "field required", "type": "missing"},'
    ' {"loc": ["query", "limit"], "msg": "must be <= 100", "type": "less_than_equal"},'
    ' {"loc": ["body", "media_urls", 0], "msg": "not https", "type": "value_error"}]}'
)


@pytest.mark.parametrize(("text", "expected"), [
    (ENVELOPE, ErrorInfo("Validation error", "VALIDATION_ERROR", "validation_error",
                         [{"field": "country", "message": "Country must be a 2-letter ISO code",
                           "type": "value_error"}])),
    ('{"error": {"message": "Rate limit exceeded. Limit: 5 requests per 3600s",'
     ' "code": "RATE_LIMIT_EXCEEDED", "type": "rate_limit_error"}}',
     ErrorInfo("Rate limit exceeded. Limit: 5 requests per 3600s", "RATE_LIMIT_EXCEEDED",
               "rate_limit_error")),
    ('{"error": {"code": "CARRIER_ERROR"}}', ErrorInfo("CARRIER_ERROR", "CARRIER_ERROR")),
    ('{"error": "Agent not found"}', ErrorInfo("Agent not found")),
    ('{"detail": "Description of what went wrong"}',
     ErrorInfo("Description of what went wrong")),
    (FASTAPI_LIST, ErrorInfo("field required", None, "validation_error", [
        {"field": "to_number", "message": "field required", "type": "missing"},
        {"field": "limit", "message": "must be <= 100", "type": "less_than_equal"},
        {"field": "media_urls.0", "message": "not https", "type": "value_error"},
    ])),
    ('{"message": "Insufficient balance", "code": "INSUFFICIENT_BALANCE"}',
     ErrorInfo("Insufficient balance", "INSUFFICIENT_BALANCE")),
    ("<html>502 Bad Gateway</html>", ErrorInfo("<html>502 Bad Gateway</html>")),
    ('{"unexpected": true}', ErrorInfo('{"unexpected": true}')),
    ("[1, 2]", ErrorInfo("[1, 2]")),
    ("", ErrorInfo("Service Unavailable")),
    ("x" * 400, ErrorInfo("x" * 300 + "...")),
])
def test_parse_error_body(text, expected):
    assert parse_error_body(503, text, "Service Unavailable") == expected


def test_parse_error_body_without_reason_names_the_status():
    assert parse_error_body(500, "").message == "HTTP 500"


@pytest.mark.parametrize(("value", "seconds"), [
    ("1", 1.0),
    (" 30 ", 30.0),
    ("Thu, 01 Jan 1970 00:01:40 GMT", 60.0),  # 100 s after epoch, "now" is 40
    ("Thu, 01 Jan 1970 00:00:10 GMT", 0.0),   # in the past: no wait
    ("soon", None),
    ("-5", None),
    (None, None),
])
def test_parse_retry_after(value, seconds):
    assert parse_retry_after(value, now=40) == seconds


def test_str_lists_field_details():
    err = AgentPhoneError("Validation error", status=422, code="VALIDATION_ERROR",
                          details=[{"field": "to_number", "message": "field required"},
                                   {"field": None, "message": "bad body"}])
    assert str(err) == ("HTTP 422 VALIDATION_ERROR: Validation error\n"
                        "  - to_number: field required\n  - bad body")


def test_missing_key_raises_before_any_request(fake_api):
    with pytest.raises(MissingAPIKeyError, match="AGENTPHONE_API_KEY"):
        AgentPhoneClient("", base_url=fake_api.url)
    assert fake_api.requests == []


@pytest.mark.parametrize(("status", "body", "cls", "code"), [
    (400, {"error": {"message": "Bad", "code": "VALIDATION_ERROR"}}, BadRequestError,
     "VALIDATION_ERROR"),
    (402, {"error": {"message": "Insufficient balance", "code": "INSUFFICIENT_BALANCE"}},
     AgentPhoneError, "INSUFFICIENT_BALANCE"),
    (404, {"detail": "Call not found"}, NotFoundError, None),
    (422, {"detail": [{"loc": ["path", "call_id"], "msg": "bad id", "type": "value_error"}]},
     BadRequestError, None),
    (502, {"error": {"message": "Carrier", "code": "CARRIER_ERROR"}}, ServerError,
     "CARRIER_ERROR"),
])
def test_http_errors_raise_typed_exceptions(fake_api, make_api, status, body, cls, code):
    fake_api.on("GET", "/v1/calls/c1", json_reply(body, status))
    with pytest.raises(cls) as info:
        make_api(max_retries=0).get_call("c1")
    assert (info.value.status, info.value.code) == (status, code)
    assert type(info.value) is cls


def test_wrong_key_is_an_authentication_error(fake_api):
    with AgentPhoneClient("sk_wrong", base_url=fake_api.url) as client, \
            pytest.raises(AuthenticationError, match="HTTP 401 UNAUTHORIZED: Invalid API key"):
        client.list_calls()


def test_rate_limit_error_keeps_retry_after(fake_api, make_api):
    fake_api.on("POST", "/v1/messages", lambda r: json_reply(
        {"error": {"message": "Rate limit exceeded", "code": "RATE_LIMIT_EXCEEDED",
                   "type": "rate_limit_error"}}, 429, {"Retry-After": "7"}))
    with pytest.raises(RateLimitError) as info:
        make_api(max_retries=0).send_message("agt_1", "+14155551234", "hi")
    assert info.value.retry_after == 7.0
    assert "retry after 7 s" in str(info.value)


# -- whether a failed request may have reached the server ----------------------------------


def test_a_refused_connection_was_not_sent(make_api):
    client = make_api(max_retries=1)
    client.base_url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(APIConnectionError) as info:
        client.send_message("agt_1", "+14155551234", "hi")
    assert info.value.request_sent is False


def test_a_connect_timeout_was_not_sent(make_api):
    # A listener that never accepts, its one-place queue taken: the next SYN goes unanswered.
    with socket.socket() as listener, socket.socket() as first:
        listener.bind(("127.0.0.1", 0))
        listener.listen(0)
        first.connect(listener.getsockname())
        client = make_api(max_retries=0, timeout=(0.3, 5.0))
        client.base_url = "http://{}:{}".format(*listener.getsockname())
        started = time.monotonic()
        with pytest.raises(APITimeoutError) as info:
            client.send_message("agt_1", "+14155551234", "hi")
    assert time.monotonic() - started < 3
    assert info.value.request_sent is False


def test_a_read_timeout_may_have_been_sent(fake_api, make_api):
    fake_api.on("POST", "/v1/messages", slow(1.0, SENT))
    with pytest.raises(APITimeoutError) as info:
        make_api(timeout=(2.0, 0.3)).send_message("agt_1", "+14155551234", "hi")
    assert info.value.request_sent is True
    assert fake_api.count("POST", "/v1/messages") == 1


def test_an_answer_cut_short_may_have_been_sent(fake_api, make_api):
    fake_api.on("POST", "/v1/messages", cut_short(SENT))
    with pytest.raises(APIConnectionError) as info:
        make_api().send_message("agt_1", "+14155551234", "hi")
    assert not isinstance(info.value, APITimeoutError)
    assert info.value.request_sent is True
    assert fake_api.count("POST", "/v1/messages") == 1


def test_a_body_past_the_budget_may_have_been_sent(fake_api, make_api):
    fake_api.on("POST", "/v1/messages", trickle(0.2, SENT))
    with pytest.raises(APITimeoutError) as info:
        make_api(budget=0.5).send_message("agt_1", "+14155551234", "hi")
    assert info.value.request_sent is True


def test_an_http_error_was_sent_and_no_key_was_not(fake_api, make_api):
    fake_api.on("POST", "/v1/messages", json_reply({"detail": "boom"}, 500))
    with pytest.raises(ServerError) as info:
        make_api().send_message("agt_1", "+14155551234", "hi")
    assert info.value.request_sent is True
    with pytest.raises(MissingAPIKeyError) as info:
        AgentPhoneClient("", base_url=fake_api.url)
    assert info.value.request_sent is False
