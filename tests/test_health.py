"""GET /healthz and 503 bodies: a store that cannot write is unhealthy, and no driver text
reaches a response."""

import contextlib
import logging
import os
import tempfile
from pathlib import Path

import pytest

from app.simulator import payload, signed_request
from app.store import get_store
from tests.conftest import NOW, SECRET

NOBODY = 65534


@contextlib.contextmanager
def as_nobody():
    """Run the block with the file permissions of an unprivileged user (tests run as root)."""
    os.seteuid(NOBODY)
    try:
        yield
    finally:
        os.seteuid(0)


@pytest.fixture
def read_only_app(make_app):
    """An app whose SQLite file can be read but not written (its folder stays writable, so
    the journal files can be opened)."""
    folder = Path(tempfile.mkdtemp(prefix="agentphone-ro-"))
    folder.chmod(0o777)
    db = folder / "events.db"
    app = make_app(DATABASE_URL=f"sqlite:///{db}")
    get_store(app).close()
    db.chmod(0o644)
    yield app
    get_store(app).close()
    for path in folder.iterdir():
        path.unlink()
    folder.rmdir()


def test_healthz_is_503_when_the_store_can_read_but_not_write(read_only_app, caplog):
    caplog.set_level(logging.ERROR, logger="app.health")
    store = get_store(read_only_app)
    with as_nobody():
        assert store.schema_version() >= 1  # reads still work
        response = read_only_app.test_client().get("/healthz")
    assert response.status_code == 503
    assert response.get_json() == {"ok": False, "store": "unavailable", "webhook_secret": "ok"}
    assert "readonly database" in caplog.text  # the detail is logged, not answered


def test_healthz_is_200_when_the_store_can_write(client):
    response = client.get("/healthz")
    assert response.status_code == 200
    assert response.get_json() == {"ok": True, "store": "sqlite", "webhook_secret": "ok"}


def test_store_failure_503_body_names_no_driver_text(read_only_app):
    raw, headers = signed_request(SECRET, payload("sms"), timestamp=NOW)
    with as_nobody():
        response = read_only_app.test_client().post("/webhook", data=raw, headers=headers)
    assert response.status_code == 503
    assert response.get_json() == {"error": {
        "code": "STORE_UNAVAILABLE", "message": "Event store unavailable, retry later"}}
