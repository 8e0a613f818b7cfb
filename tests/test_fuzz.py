"""Random headers and bodies: never a 5xx, never anything accepted without a valid signature."""

import json

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.simulator import signed_request
from tests.conftest import NOW, SECRET

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
