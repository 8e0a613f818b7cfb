"""X-Webhook-ID as the idempotency key: distinct ids never collide, however long or odd."""

import contextlib
import sqlite3

import pytest

from app.simulator import payload
from app.webhook.events import MAX_ID_LENGTH, delivery_id


def _job_ids(app):
    path = app.config["DATABASE_URL"][len("sqlite:///"):]
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return [r[0] for r in conn.execute("SELECT delivery_id FROM jobs ORDER BY id")]


def test_long_ids_sharing_a_prefix_are_two_deliveries(app, post_signed):
    prefix = "whd_" + "x" * 300
    for suffix in ("a", "b"):
        response = post_signed(payload("sms", message=suffix), delivery_id=prefix + suffix)
        assert response.status_code == 200
    ids = _job_ids(app)
    assert len(ids) == 2 and len(set(ids)) == 2
    assert all(len(i) <= MAX_ID_LENGTH for i in ids)


def test_long_id_retried_is_still_one_delivery(app, post_signed):
    long_id = "whd_" + "y" * 5000
    for _ in range(3):
        assert post_signed(payload("sms"), delivery_id=long_id).status_code == 200
    assert len(_job_ids(app)) == 1


@pytest.mark.parametrize("value", ["whd_abc", "x" * MAX_ID_LENGTH, " whd_padded "])
def test_short_printable_ids_are_kept_verbatim(value):
    assert delivery_id(value, b"{}") == value.strip()


@pytest.mark.parametrize("value", [
    "x" * (MAX_ID_LENGTH + 1), "whd_\x00nul", "whd_\x1b[31m", "whd_caf\u00e9",
    "sha256:" + "0" * 64, "sha256:id:" + "0" * 64,
])
def test_other_ids_are_hashed_whole(value):
    key = delivery_id(value, b"{}")
    assert key.startswith("sha256:id:") and len(key) == len("sha256:id:") + 64
    assert key != delivery_id(value + "z", b"{}")


def test_an_id_shaped_like_a_body_hash_never_meets_that_body_hash():
    body = b'{"event":"agent.message"}'
    from_body = delivery_id(None, body)
    assert delivery_id(from_body, b"other") != from_body
