"""Request limits over real HTTP: bodies over 1 MiB are 413 however they are framed."""

import pytest
import requests

from app.simulator import signed_request
from tests.conftest import SECRET

pytestmark = pytest.mark.slow
BIG = b'{"event":"agent.message","pad":"' + b"x" * (1024 * 1024) + b'"}'


def chunks(data, size=65536):
    for i in range(0, len(data), size):
        yield data[i:i + size]


@pytest.mark.parametrize("framing", ["content-length", "chunked"])
def test_oversized_signed_body_is_413(gunicorn, framing):
    server = gunicorn(workers=1)
    raw, headers = signed_request(SECRET, BIG)
    data = raw if framing == "content-length" else chunks(raw)
    response = requests.post(server.webhook, data=data, headers=headers, timeout=10)
    assert response.status_code == 413
    assert response.json()["error"]["code"] == "PAYLOAD_TOO_LARGE"


def test_chunked_body_under_the_limit_is_accepted(gunicorn):
    server = gunicorn(workers=1)
    raw, headers = signed_request(SECRET, {"event": "agent.typing", "pad": "x" * 500_000})
    response = requests.post(server.webhook, data=chunks(raw), headers=headers, timeout=10)
    assert response.status_code == 200
