"""Random headers and bodies: never a 5xx, never anything accepted without a valid signature."""

import http.client
import json
import socket

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.simulator import signed_request
from tests.conftest import NOW, SECRET
from tests.servers import start_gunicorn

header_text = st.text(st.characters(min_codepoint=32, max_codepoint=255), max_size=80)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=20),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=10), inner,
                                                                 max_size=4),
    max_leaves=12,
)
envelopes = st.fixed_dictionaries(
    {"event": st.sampled_from(["agent.message", "agent.reaction", "agent.call_ended", "x.y"])
     | json_values},
    optional={"channel": st.sampled_from(["sms", "voice", "imessage", "mms"]) | json_values,
              "data": json_values, "conversationState": json_values,
              "recentHistory": json_values, "agentId": json_values, "test": json_values},
)
bodies = st.binary(max_size=300) | envelopes.map(lambda d: json.dumps(d).encode())
settings_ = settings(max_examples=150, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])


@settings_
@given(body=bodies, signature=st.none() | header_text, timestamp=st.none() | header_text,
       delivery_id=st.none() | header_text)
def test_unsigned_garbage_is_always_401(client, body, signature, timestamp, delivery_id):
    headers = {k: v for k, v in {"X-Webhook-Signature": signature,
                                 "X-Webhook-Timestamp": timestamp,
                                 "X-Webhook-ID": delivery_id}.items() if v is not None}
    response = client.post("/webhook", data=body, headers=headers)
    assert response.status_code == 401
    assert "error" in response.get_json()


@settings_
@given(body=bodies, delivery_id=header_text)
def test_signed_anything_is_never_a_server_error(client, body, delivery_id):
    raw, headers = signed_request(SECRET, body, timestamp=NOW)
    headers["X-Webhook-ID"] = delivery_id
    response = client.post("/webhook", data=raw, headers=headers)
    assert response.status_code in (200, 400)
    if response.mimetype == "application/x-ndjson":
        lines = response.get_data(as_text=True).splitlines()
        assert all(json.loads(line) for line in lines)
        assert [("interim" in json.loads(line)) for line in lines][-1] is False
    else:
        assert isinstance(response.get_json(), dict)


# -- raw bytes against the real server: framing garbage the app sees ----------------------

def raw_exchange(server, request):
    """Send ``request`` on a fresh connection, close our side, return (status, type, body)."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        sock.sendall(request)
        sock.shutdown(socket.SHUT_WR)
        response = http.client.HTTPResponse(sock)
        response.begin()
        return response.status, response.getheader("Content-Type"), response.read()


def chunked(head, body_bytes):
    return (b"POST /webhook HTTP/1.1\r\nHost: 127.0.0.1\r\n" + head
            + b"Transfer-Encoding: chunked\r\n\r\n" + body_bytes)


def signed_head(raw):
    _, headers = signed_request(SECRET, raw)
    return b"".join(f"{k}: {v}\r\n".encode() for k, v in headers.items())


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """One real gunicorn gevent server for the module; its log must show no traceback."""
    srv = start_gunicorn(tmp_path_factory.mktemp("fuzz"),
                         {"AGENTPHONE_WEBHOOK_SECRET": SECRET, "JOB_RUNNER": "off"})
    yield srv
    srv.stop()
    log = srv.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize("framing", [
    b"zz\r\nab\r\n0\r\n\r\n",  # not hex
    b"-1\r\nab\r\n0\r\n\r\n",  # negative
    b"0x2\r\nab\r\n0\r\n\r\n",  # a prefix HTTP does not allow
    b"ffffffffffffffffffffffff\r\nab\r\n0\r\n\r\n",  # absurdly large
    b"2\r\nabXX0\r\n\r\n",  # chunk without its CRLF
    b"10\r\nab",  # cut short
    b"2\r\n{}\r\n0\r\nX-Bad Trailer\r\n\r\n",  # malformed trailer
    b"",  # no chunk at all
])
@pytest.mark.parametrize("signed", [False, True])
def test_malformed_chunked_body_is_a_json_400_never_500(server, framing, signed):
    head = signed_head(b"{}") if signed else b""
    status, content_type, body = raw_exchange(server, chunked(head, framing))
    assert status == 400
    assert content_type == "application/json"
    assert "error" in json.loads(body)


@pytest.mark.slow
def test_well_formed_chunked_delivery_is_accepted(server):
    raw = json.dumps({"event": "x.unknown", "channel": "sms", "data": {}}).encode()
    framing = b"".join(b"%x\r\n%s\r\n" % (len(raw[i:i + 7]), raw[i:i + 7])
                       for i in range(0, len(raw), 7)) + b"0\r\n\r\n"
    status, _, body = raw_exchange(server, chunked(signed_head(raw), framing))
    assert (status, json.loads(body)) == (200, {"ok": True})


size_tokens = (st.integers(0, 40).map(lambda n: b"%x" % n)
               | st.sampled_from([b"", b"-1", b"zz", b" 3", b"3 ", b"0x3", b"3;x=y", b"+3",
                                  b"f" * 30, b"\xff"])
               | st.binary(max_size=6))
line_ends = st.sampled_from([b"\r\n", b"\n", b"", b"\r", b"XX"])
framings = st.lists(st.tuples(size_tokens, line_ends, st.binary(max_size=50), line_ends),
                    max_size=5).map(lambda parts: b"".join(s + e1 + d + e2
                                                           for s, e1, d, e2 in parts))


@pytest.mark.slow
@settings(max_examples=120, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(framing=framings, ending=st.sampled_from([b"0\r\n\r\n", b"", b"0\r\n"]),
       signed=st.booleans())
def test_random_chunked_framing_is_never_a_5xx_nor_accepted(server, framing, ending, signed):
    head = signed_head(b"{}") if signed else b""
    status, content_type, body = raw_exchange(server, chunked(head, framing + ending))
    assert 400 <= status < 500
    assert content_type == "application/json"
    assert "error" in json.loads(body)
