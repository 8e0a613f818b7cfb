"""Signing secrets from the store: `agentphone webhook set|rotate|show`, the per-process
cache, and a rotation while a real gunicorn takes deliveries."""

import os
import subprocess
import threading
import time

import pytest
import requests

from app import config, console, create_app
from app.simulator import payload, signed_request
from app.store import StoreUnavailable, get_store, open_store
from app.store.secrets import StoredSecret
from app.webhook import secrets as secrets_module
from app.webhook.secrets import SecretSource
from tests.fake_agentphone import API_KEY, fake_api_fixture, json_reply  # noqa: F401
from tests.servers import GUNICORN

HOOK = {"id": "wh_1", "url": "https://example.test/webhook", "status": "active",
        "contextLimit": 10, "timeout": 30, "createdAt": "2026-12-01T10:00:00Z"}


def stored(secret, expires_at=None):
    return StoredSecret(secret, "account", None, None, 0.0, expires_at)


class Clock:
    now = 1000.0

    def __call__(self):
        return self.now


def test_secret_source_refreshes_on_its_interval_and_expires_on_time():
    clock, loads, rows = Clock(), [], [stored("whsec_a")]

    def load():
        loads.append(clock.now)
        return list(rows)

    source = SecretSource(("whsec_env",), load, refresh=2.0, clock=clock)
    assert source.current()[0] == "whsec_env"  # the configured secret serves at once
    settled(source)
    assert source.current() == ("whsec_env", "whsec_a")
    rows[:] = [stored("whsec_a", expires_at=1003.5), stored("whsec_b")]
    clock.now += 1
    assert source.current() == ("whsec_env", "whsec_a")  # cached: no round trip
    clock.now += 1.5
    source.current()  # due: read in the background
    settled(source)
    assert source.current() == ("whsec_env", "whsec_a", "whsec_b")
    clock.now += 1.0  # past the expiry, before the next refresh
    assert source.current() == ("whsec_env", "whsec_b")
    assert loads == [1000.0, 1002.5]


def settled(source):
    """Wait for a background refresh to finish."""
    with source._lock:
        pass


def test_a_miss_reloads_at_once_but_not_more_than_twice_a_second():
    clock, rows = Clock(), []
    source = SecretSource((), lambda: list(rows), refresh=60.0, clock=clock)
    with pytest.raises(StoreUnavailable):
        SecretSource((), _failing, clock=clock).current()
    assert source.current() == ()
    rows.append(stored("whsec_new"))
    assert source.reload_after_miss() is True
    assert source.current() == ("whsec_new",)
    rows.append(stored("whsec_newer"))
    assert source.reload_after_miss() is False  # a flood of forgeries costs one read at most
    clock.now += secrets_module.MISS_RELOAD_SECONDS
    assert source.reload_after_miss() is True


def test_a_failed_refresh_keeps_the_known_secrets():
    clock, state = Clock(), {"fail": False}

    def load():
        if state["fail"]:
            raise StoreUnavailable("down")
        return [stored("whsec_a")]

    source = SecretSource((), load, refresh=1.0, clock=clock)
    assert source.current() == ("whsec_a",)  # nothing configured: the first read waits
    state["fail"] = True
    clock.now += 5
    assert source.current() == ("whsec_a",)
    settled(source)
    assert source.current() == ("whsec_a",)


def test_the_state_never_waits_on_the_store():
    clock, rows, reads = Clock(), [], []
    release = threading.Event()

    def load():
        reads.append(clock.now)
        release.wait(10)  # a store that takes its time
        return list(rows)

    source = SecretSource((), load, refresh=60.0, clock=clock)
    assert source.state() == "unknown"  # nothing read yet: a read starts, nobody waits on it
    release.set()
    settled(source)
    assert source.state() == "none" and reads == [1000.0]
    rows.append(stored("whsec_a"))
    clock.now += 60
    source.state()  # the refresh, in the background
    settled(source)
    assert source.state() == "ok"
    assert SecretSource(("whsec_env",), _failing, clock=clock).state() == "ok"


def _failing():
    raise StoreUnavailable("down")


@pytest.fixture
def env(monkeypatch, tmp_path):
    for name in config.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    url = "sqlite:///" + str(tmp_path / "s.db")
    monkeypatch.setenv("DATABASE_URL", url)
    return url


def test_the_server_starts_on_a_stored_secret_alone(env):
    with pytest.raises(config.ConfigError, match="agentphone webhook set"):
        create_app()
    store = open_store(env)
    store.migrate()
    store.add_webhook_secret("account", "whsec_stored", grace=60)
    store.close()
    app = create_app()
    raw, headers = signed_request("whsec_stored", payload("sms", "hi"))
    assert app.test_client().post("/webhook", data=raw, headers=headers).status_code == 200
    raw, headers = signed_request("whsec_other", payload("sms", "hi"))
    assert app.test_client().post("/webhook", data=raw, headers=headers).status_code == 401
    get_store(app).close()


def test_with_an_api_key_the_server_starts_before_the_secret_is_stored(env, monkeypatch, caplog):
    """The first deploy: the server starts with an API key alone and refuses every delivery
    until `agentphone webhook set` stores a secret, which it then accepts without a restart."""
    monkeypatch.setenv("AGENTPHONE_API_KEY", API_KEY)
    monkeypatch.setenv("AGENTPHONE_API_URL", "http://127.0.0.1:9")  # nothing answers there
    monkeypatch.setenv("JOB_RUNNER", "off")  # the text's reply job would call the real API
    monkeypatch.setenv("CONSOLE_PASSWORD", "console-password")
    monkeypatch.setattr(console, "_api_cache", {})  # its failing API is not cached for others
    app = create_app()
    assert "no webhook secret yet" in caplog.text
    client = app.test_client()
    raw, headers = signed_request("whsec_stored", payload("sms", "hi"))
    assert client.post("/webhook", data=raw, headers=headers).status_code == 401
    # Healthy (the deploy's health check passes), and saying why nothing is accepted.
    health = client.get("/healthz")
    assert health.status_code == 200 and health.get_json()["webhook_secret"] == "none"
    now = client.get("/console/now/live", auth=("ops", "console-password"))
    assert now.status_code == 200
    assert '<div class="value bad" id="secret">none</div>' in now.text
    assert "every delivery is refused with 401 until" in now.text
    store = open_store(env)
    store.add_webhook_secret("account", "whsec_stored", grace=60)
    store.close()
    deadline = time.monotonic() + 10
    while (status := client.post("/webhook", data=raw, headers=headers).status_code) == 401:
        assert time.monotonic() < deadline, "the stored secret was never picked up"
        time.sleep(0.1)
    assert status == 200
    assert client.get("/healthz").get_json()["webhook_secret"] == "ok"
    now = client.get("/console/now/live", auth=("ops", "console-password")).text
    assert '<div class="value ok" id="secret">ok</div>' in now
    assert "refused with 401" not in now
    raw, headers = signed_request("whsec_other", payload("sms", "hi"))
    assert client.post("/webhook", data=raw, headers=headers).status_code == 401
    get_store(app).close()


@pytest.fixture
def cli(fake_api, env, monkeypatch):
    monkeypatch.setenv("AGENTPHONE_API_KEY", API_KEY)
    monkeypatch.setenv("AGENTPHONE_API_URL", fake_api.url)
    monkeypatch.setenv("AGENTPHONE_WEBHOOK_SECRET", "whsec_env_only")
    monkeypatch.setenv("SECRET_GRACE", "120")
    apps = []

    def run(*args):
        apps.append(create_app())
        return apps[-1].test_cli_runner().invoke(args=["agentphone", *args])

    yield run
    for app in apps:
        get_store(app).close()


def test_webhook_set_stores_the_secret_and_never_prints_it(fake_api, cli, env):
    fake_api.on("POST", "/v1/webhooks", {**HOOK, "secret": "whsec_first_0123456789"})
    fake_api.on("POST", "/v1/agents/agt_7/webhook",
                {**HOOK, "id": "wh_7", "secret": "whsec_agent7_0123456789"})
    result = cli("webhook", "set", "https://example.test/webhook", "--timeout", "30")
    assert result.exit_code == 0, result.output + result.stderr
    assert "whsec_first_0123456789" not in result.output + result.stderr
    assert "whsec_…6789" in result.output
    assert fake_api.last("POST", "/v1/webhooks").body == {
        "url": "https://example.test/webhook", "timeout": 30}
    assert cli("webhook", "set", "https://example.test/a7", "--agent", "agt_7").exit_code == 0
    store = open_store(env)
    assert {(s.scope, s.secret) for s in store.webhook_secrets()} == {
        ("account", "whsec_first_0123456789"), ("agt_7", "whsec_agent7_0123456789")}
    store.close()


def test_webhook_rotate_keeps_the_old_secret_for_the_grace_period(fake_api, cli, env):
    fake_api.on("POST", "/v1/webhooks", {**HOOK, "secret": "whsec_first_0123456789"},
                {**HOOK, "secret": "whsec_second_012345678"})
    fake_api.on("GET", "/v1/webhooks", {**HOOK, "secret": "whsec_first_0123456789"})
    assert cli("webhook", "set", HOOK["url"]).exit_code == 0
    result = cli("webhook", "rotate")
    assert result.exit_code == 0, result.output + result.stderr
    assert "previous one stays valid for 120 s" in result.output
    assert fake_api.last("POST", "/v1/webhooks").body == {
        "url": HOOK["url"], "contextLimit": 10, "timeout": 30}
    store = open_store(env)
    secrets = {s.secret: s.expires_at for s in store.webhook_secrets()}
    store.close()
    assert secrets["whsec_second_012345678"] is None
    assert 100 < secrets["whsec_first_0123456789"] - time.time() <= 120


def test_webhook_show_masks_every_secret(fake_api, cli):
    fake_api.on("POST", "/v1/webhooks", {**HOOK, "secret": "whsec_first_0123456789"})
    fake_api.on("GET", "/v1/webhooks", {**HOOK, "secret": "whsec_first_0123456789"})
    fake_api.on("GET", "/v1/agents", json_reply({"data": [{"id": "agt_1", "name": "Front desk"}],
                                                 "hasMore": False, "total": 1}))
    fake_api.on("GET", "/v1/agents/agt_1/webhook", json_reply(None))
    assert cli("webhook", "set", HOOK["url"]).exit_code == 0
    result = cli("webhook", "show")
    assert result.exit_code == 0, result.output + result.stderr
    assert "whsec_first_0123456789" not in result.output and "whsec_env_only" not in result.output
    assert "whsec_…6789" in result.output and "until rotated" in result.output
    assert "environment" in result.output


def test_rotation_under_load_refuses_nothing_in_the_grace_period(gunicorn, fake_api, tmp_path,
                                                                 monkeypatch):
    db = "sqlite:///" + str(tmp_path / "events.db")
    for name in config.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)
    grace = 4.0
    for name, value in {"DATABASE_URL": db, "AGENTPHONE_API_KEY": API_KEY,
                        "AGENTPHONE_API_URL": fake_api.url, "SECRET_GRACE": str(grace)}.items():
        monkeypatch.setenv(name, value)
    old, new = "whsec_old_0123456789abcdef", "whsec_new_0123456789abcdef"
    fake_api.on("POST", "/v1/webhooks", {**HOOK, "secret": old}, {**HOOK, "secret": new})
    fake_api.on("GET", "/v1/webhooks", {**HOOK, "secret": old})
    agentphone = [str(GUNICORN.with_name("agentphone")), "webhook"]

    def command(*args):
        done = subprocess.run([*agentphone, *args], cwd=tmp_path, env=dict(os.environ),
                              capture_output=True, text=True, timeout=60, check=False)
        assert done.returncode == 0, done.stdout + done.stderr
        return done

    command("set", HOOK["url"])  # no secret anywhere yet: this stores the first
    server = gunicorn(workers=2, AGENTPHONE_WEBHOOK_SECRET="", DATABASE_URL=db,
                      JOB_RUNNER="off")
    results, stop = {old: [], new: []}, threading.Event()

    def send(secret):
        with requests.Session() as session:
            while not stop.is_set():
                raw, headers = signed_request(secret, payload("sms", "hi"))
                status = session.post(server.webhook, data=raw, headers=headers,
                                      timeout=10).status_code
                results[secret].append((time.time(), status))
                time.sleep(0.02)

    sender = threading.Thread(target=send, args=(old,))
    sender.start()
    try:
        time.sleep(1.0)
        command("rotate")
        store = open_store(db)
        rotated = next(s.created_at for s in store.webhook_secrets() if s.secret == new)
        store.close()
        new_sender = threading.Thread(target=send, args=(new,))
        new_sender.start()
        time.sleep(grace + 3.0)
    finally:
        stop.set()
        sender.join(15)
        new_sender.join(15)
    before_expiry = [s for t, s in results[old] if t < rotated + grace - 0.5]
    after_expiry = [s for t, s in results[old] if t > rotated + grace + 0.5]
    assert before_expiry and set(before_expiry) == {200}
    assert after_expiry and set(after_expiry) == {401}
    assert results[new] and {s for _, s in results[new]} == {200}
