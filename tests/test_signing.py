"""Known-answer vectors (contract 1.5), the official SDK as a cross-check, every negative case."""

import pytest
from agentphone.webhook import WebhookVerificationError, verify_webhook

from app.webhook import signing

SECRET = "whsec_test_secret_123"
TS = "1736942400"
BODY = (
    b'{"event":"agent.message","channel":"sms","timestamp":"2025-01-15T12:00:00Z",'
    b'"agentId":"agt_abc123","data":{"conversationId":"conv_def456","numberId":"num_xyz789",'
    b'"from":"+15559876543","to":"+15551234567","message":"Hi, I need help with my order",'
    b'"mediaUrl":null,"direction":"inbound","receivedAt":"2025-01-15T12:00:00Z"},'
    b'"conversationState":null,"recentHistory":[]}'
)
GOOD = "sha256=ef3b3fb39606696f3fdfcb09ece786caeea97f9163f24f93f161dbd0de62b183"


def test_spec_worked_example():
    assert len(BODY) == 365
    assert signing.compute(SECRET, TS, BODY) == GOOD


def test_valid_vectors(signature_vectors):
    for vector in signature_vectors["valid"]:
        body = vector["body"].encode("utf-8")
        assert signing.compute(vector["secret"], vector["timestamp"], body) == vector["signature"]
        signing.verify([vector["secret"]], vector["signature"], vector["timestamp"], body,
                       now=int(vector["timestamp"]))


def test_non_ascii_body_is_signed_as_raw_utf8(signature_vectors):
    vector = next(v for v in signature_vectors["valid"] if "non-ascii" in v["name"])
    body = vector["body"].encode("utf-8")
    assert len(body) == 347
    assert signing.compute(vector["secret"], vector["timestamp"], body) == (
        "sha256=adea845a827ce71fa4e650f6969eff240991fb713e93d4a4a9f83a550066bf42")


def test_invalid_vectors(signature_vectors):
    for vector in signature_vectors["invalid"]:
        body = vector["body"].encode("utf-8")
        with pytest.raises(signing.SignatureError):
            signing.verify([vector["secret"]], vector["signature"], vector["timestamp"], body,
                           now=int(vector["timestamp"]))


def _accepts(verify, *args, error, **kwargs):
    try:
        verify(*args, **kwargs)
    except error:
        return False
    return True


def test_agrees_with_official_sdk(signature_vectors):
    cases = [(v, True) for v in signature_vectors["valid"]]
    cases += [(v, False) for v in signature_vectors["invalid"]]
    for vector, expected in cases:
        body, sig, ts = vector["body"].encode("utf-8"), vector["signature"], vector["timestamp"]
        sdk = _accepts(verify_webhook, body, sig, vector["secret"], timestamp=ts,
                       tolerance=None, error=WebhookVerificationError)
        ours = _accepts(signing.verify, [vector["secret"]], sig, ts, body, now=int(ts),
                        error=signing.SignatureError)
        assert sdk == ours == expected, vector["name"]


def test_any_configured_secret_is_accepted():
    signing.verify(["whsec_old", SECRET, "whsec_agent"], GOOD, TS, BODY, now=int(TS))


def test_uppercase_hex_is_accepted():
    signing.verify([SECRET], "sha256=" + GOOD[7:].upper(), TS, BODY, now=int(TS))


BODY_ONLY = "sha256=988142244e944906edadf25592e68dbb4f59ccdb80a4c8c0ad64d2ba5a8e5b42"
REDUMPED = "sha256=389758fe8ac5ca56af7b1e1f09f496a9fbc677a1fbade2586bf8a71e87bd6fb2"


@pytest.mark.parametrize(
    ("signature", "timestamp", "body", "now", "secrets", "error"),
    [
        (None, TS, BODY, int(TS), [SECRET], signing.MissingSignature),
        ("", TS, BODY, int(TS), [SECRET], signing.MissingSignature),
        (GOOD, None, BODY, int(TS), [SECRET], signing.MissingSignature),
        (GOOD, "", BODY, int(TS), [SECRET], signing.MissingSignature),
        # contract D5: the sha256= prefix is required, exactly.
        (GOOD[7:], TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        ("SHA256=" + GOOD[7:], TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        ("sha1=" + GOOD[7:], TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        (GOOD + " ", TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        (GOOD[:-1], TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        ("sha256=ä" + GOOD[8:], TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        # contract D6: an HMAC of the body alone, or of a re-serialized body, never passes.
        (BODY_ONLY, TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        (REDUMPED, TS, BODY, int(TS), [SECRET], signing.InvalidSignature),
        (GOOD, TS, BODY + b" ", int(TS), [SECRET], signing.InvalidSignature),
        (GOOD, TS, BODY, int(TS), ["whsec_other"], signing.InvalidSignature),
        (GOOD, TS, BODY, int(TS), [], signing.InvalidSignature),
        # contract D9: the whsec_ prefix is part of the key.
        (GOOD, TS, BODY, int(TS), ["test_secret_123"], signing.InvalidSignature),
        # contract D7: unix seconds in ASCII digits only.
        (GOOD, "+1736942400", BODY, int(TS), [SECRET], signing.InvalidTimestamp),
        (GOOD, "-1736942400", BODY, int(TS), [SECRET], signing.InvalidTimestamp),
        (GOOD, "1736942400.0", BODY, int(TS), [SECRET], signing.InvalidTimestamp),
        (GOOD, " 1736942400", BODY, int(TS), [SECRET], signing.InvalidTimestamp),
        (GOOD, "2025-01-15T12:00:00Z", BODY, int(TS), [SECRET], signing.InvalidTimestamp),
        (GOOD, "١٧٣٦٩٤٢٤٠٠", BODY, int(TS), [SECRET], signing.InvalidTimestamp),
        (GOOD, "9" * 40, BODY, int(TS), [SECRET], signing.InvalidTimestamp),
        # contract D38: 300 s is the edge, both directions.
        (GOOD, TS, BODY, int(TS) + 301, [SECRET], signing.InvalidTimestamp),
        (GOOD, TS, BODY, int(TS) - 301, [SECRET], signing.InvalidTimestamp),
    ],
)
def test_rejections(signature, timestamp, body, now, secrets, error):
    with pytest.raises(error) as raised:
        signing.verify(secrets, signature, timestamp, body, now=now)
    # The webhook answers 401 with the refusal's code and message (tests/test_webhook.py).
    assert isinstance(raised.value, signing.SignatureError)
    assert (raised.value.code, str(raised.value)) == (error.code, error.message)


@pytest.mark.parametrize("skew", [-300, 0, 300])
def test_window_edges_are_inclusive(skew):
    signing.verify([SECRET], GOOD, TS, BODY, now=int(TS) + skew)
