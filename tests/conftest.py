import json
import os
import tempfile
from pathlib import Path

import pytest

from app import create_app
from app.simulator import signed_request
from app.store import get_store
from tests.servers import start_gunicorn

# The servers the tests start (gunicorn empties the folder at start) write their metrics
# outside the checkout; set after the imports, so that this process keeps its own.
os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="agentphone-metrics-"))
DATA = Path(__file__).resolve().parent / "data"  # platform facts copied as test data
SECRET = "whsec_test_secret_123"
NOW = 1_736_942_400


@pytest.fixture
def secret():
    return SECRET


@pytest.fixture
def make_app(tmp_path):
    """Build an app on a fresh SQLite file, its clock stopped at NOW; upper-case keyword
    arguments override config, ``clock`` the clock. Every app's store is closed after the
    test."""
    apps = []

    def make(clock=lambda: NOW, **overrides):
        config = {
            "TESTING": True,
            "WEBHOOK_SECRETS": (SECRET,),
            "DATABASE_URL": "sqlite:///" + str(tmp_path / "events.db"),
            "JOB_RUNNER": False,
            "DEMO_TOOL_LATENCY": 0.0,
            "AGENTPHONE_API_KEY": None,
            "AGENTPHONE_API_URL": "http://127.0.0.1:9",
        }
        config.update(overrides)
        apps.append(create_app(config, clock=clock))
        return apps[-1]

    yield make
    for app in apps:
        get_store(app).close()


@pytest.fixture
def app(make_app):
    return make_app()


@pytest.fixture
def client(app):
    return app.test_client()


@pytest.fixture
def post_signed(client):
    """POST a body signed like the platform (at the test clock's NOW)."""

    def post(body, delivery_id=None, secret=SECRET, timestamp=NOW, headers=None):
        raw, signed = signed_request(secret, body, delivery_id, timestamp)
        return client.post("/webhook", data=raw, headers={**signed, **(headers or {})})

    return post


@pytest.fixture
def gunicorn(tmp_path):
    """Start real gunicorn gevent servers: ``gunicorn(workers=1, **env)``; all stopped after."""
    servers = []

    def start(workers=1, **env):
        env.setdefault("AGENTPHONE_WEBHOOK_SECRET", SECRET)
        env.setdefault("LOG_LEVEL", "INFO")
        server = start_gunicorn(tmp_path, {k: str(v) for k, v in env.items()}, workers)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.stop()


@pytest.fixture
def effects_agent(tmp_path):
    """Env for gunicorn to load tests.agents:slow_agent, and the side effects it recorded."""
    path = tmp_path / "effects.txt"
    path.touch()

    class Effects:
        env = {"AGENT": "tests.agents:slow_agent", "TEST_EFFECTS_FILE": str(path)}

        @staticmethod
        def effects():
            return path.read_text().splitlines()

    return Effects


@pytest.fixture(scope="session")
def signature_vectors():
    return json.loads((DATA / "signature-vectors.json").read_text())


@pytest.fixture(scope="session")
def fixtures_dir():
    return DATA / "fixtures"
