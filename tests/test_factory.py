"""The application factory: a config mapping replaces the environment, the clock is the one
given, every service has its accessor, and every default is the settings table's."""

import os
import re
from pathlib import Path

import pytest

from app import config, create_app
from app.agent import get_agent
from app.agent.llm import LLMAgent
from app.agentphone import DEFAULT_BASE_URL
from app.console.journal import get_journal
from app.demo import Receptionist
from app.jobs import get_job_runner
from app.simulator import payload, signed_request
from app.store import get_store
from app.voice.claims import get_voice_claims
from app.webhook.secrets import get_webhook_secrets
from tests.conftest import NOW, SECRET

APP = Path(__file__).resolve().parent.parent / "app"
# A developer's shell or .env, set up for something else entirely.
HOSTILE = {
    "LLM_API_KEY": "sk-hostile", "LLM_BASE_URL": "http://127.0.0.1:9/v1",
    "AGENT": "no_such_module:create_agent", "AGENTS": "agt_x=no_such_module:create_agent",
    "DATABASE_URL": "postgresql://hostile.invalid/db", "DATABASE_POOL_MAX": "0",
    "AGENTPHONE_WEBHOOK_SECRET": "whsec_hostile", "AGENTPHONE_DEV": "1",
    "AGENTPHONE_API_KEY": "sk_hostile", "VOICE_TIMEOUT": "999", "LOG_LEVEL": "NOPE",
    "JOB_GRACE": "x", "CONSOLE_PASSWORD": "hostile", "SECRET_GRACE": "-1",
}


def test_a_config_mapping_ignores_the_environment_and_dotenv(monkeypatch, tmp_path):
    for name, value in HOSTILE.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setenv("METRICS_TOKEN", "")  # recorded, so a value read from .env is removed
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".env").write_text("METRICS_TOKEN=from-dotenv\n")
    given = {"WEBHOOK_SECRETS": (SECRET,), "DATABASE_URL": f"sqlite:///{tmp_path}/m.db"}
    app = create_app(given)
    try:
        assert isinstance(get_agent(app=app), Receptionist)  # neither AGENT nor the LLM agent
        assert app.config["WEBHOOK_SECRETS"] == (SECRET,)
        assert get_store(app).backend == "sqlite"
        assert app.config["AGENT_FACTORIES"] == {}
        for key in config.READERS.keys() - given.keys():
            assert app.config[key] == config.default(key), key
        assert os.environ["METRICS_TOKEN"] == ""  # .env was not read either
    finally:
        get_store(app).close()


def test_without_a_mapping_the_environment_is_read(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AGENTPHONE_WEBHOOK_SECRET", SECRET)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/e.db")
    monkeypatch.setenv("LLM_API_KEY", "sk-from-env")
    monkeypatch.setenv("JOB_GRACE", "7")
    app = create_app()
    try:
        assert isinstance(get_agent(app=app), LLMAgent)
        assert get_job_runner(app).grace == 7
    finally:
        get_store(app).close()


@pytest.mark.parametrize(("key", "value", "message"), [
    ("VOICE_TIMEOUT", 4, "VOICE_TIMEOUT=4 is out of range"),
    ("JOB_CONCURRENCY", "many", "JOB_CONCURRENCY='many' is not a number"),
    ("LOG_FORMAT", "xml", "LOG_FORMAT='xml' is not one of text, json"),
    ("LLM_EXTRA_BODY", "[1]", "LLM_EXTRA_BODY must be a JSON object"),
    ("WEBHOOK_SECRETS", (" ",), "empty or blank"),
])
def test_a_config_mapping_is_validated_like_the_environment(make_app, key, value, message):
    with pytest.raises(config.ConfigError, match=re.escape(message)):
        make_app(**{key: value})


def test_a_config_mapping_takes_the_environments_text_too(make_app):
    app = make_app(VOICE_TIMEOUT="12", JOB_RUNNER="off", LOG_LEVEL="warning")
    assert (app.config["VOICE_TIMEOUT"], app.config["JOB_RUNNER"]) == (12.0, False)
    assert app.config["LOG_LEVEL"] == "WARNING"


@pytest.mark.parametrize(("name", "key"), [
    ("AGENT", "AGENT_FACTORY"), ("AGENTS", "AGENT_FACTORIES"),
    ("AGENTPHONE_WEBHOOK_SECRET", "WEBHOOK_SECRETS")])
def test_an_environment_name_is_not_taken_for_a_config_key(make_app, name, key):
    with pytest.raises(config.ConfigError, match=rf"{name} \(config key {key}\)"):
        make_app(**{name: "x:y"})


def test_the_clock_given_dates_deliveries_and_the_store(make_app):
    raw, headers = signed_request(SECRET, payload("sms"), timestamp=NOW)
    assert make_app().test_client().post("/webhook", data=raw, headers=headers).status_code == 200
    hour_later = make_app(clock=lambda: NOW + 3600)
    response = hour_later.test_client().post("/webhook", data=raw, headers=headers)
    assert response.status_code == 401  # signed an hour before the app's now
    assert get_store(hour_later).clock() == NOW + 3600


def test_each_service_has_its_accessor(app):
    store = get_store(app)
    with app.app_context():
        assert get_store() is store
        assert get_job_runner() is get_job_runner(app)
        assert get_voice_claims().store is store
        assert get_journal().store is store
        assert get_webhook_secrets().static == (SECRET,)
        assert get_agent() is get_agent("agt_unknown") is get_agent(app=app)


def test_only_the_owning_modules_touch_app_extensions():
    owners = {"store/__init__.py", "agent/__init__.py", "jobs/__init__.py", "jobs/runner.py",
              "webhook/__init__.py", "webhook/secrets.py", "voice/claims.py",
              "console/__init__.py", "console/journal.py"}
    found = {str(path.relative_to(APP)) for path in APP.rglob("*.py")
             if "extensions[" in path.read_text()}
    assert found == owners


def test_no_production_module_reads_a_clock_from_the_config():
    assert [path for path in APP.rglob("*.py") if "CLOCK" in path.read_text()] == []


def test_every_default_comes_from_the_settings_table(app):
    runner = get_job_runner(app)
    assert runner.grace == config.default("JOB_GRACE") == float(config.SETTINGS["JOB_GRACE"][0])
    direct, from_empty = LLMAgent(), LLMAgent.from_config({})
    for attribute, key in [("model", "LLM_MODEL"), ("max_rounds", "LLM_MAX_ROUNDS"),
                           ("timeout", "LLM_TIMEOUT"), ("tool_timeout", "LLM_TOOL_TIMEOUT"),
                           ("max_tokens", "LLM_MAX_TOKENS"), ("stream_tools", "LLM_STREAM_TOOLS"),
                           ("tool_choice", "LLM_TOOL_CHOICE")]:
        assert getattr(direct, attribute) == getattr(from_empty, attribute) == (
            config.default(key)), attribute
    assert config.SETTINGS["AGENTPHONE_API_URL"][0] == DEFAULT_BASE_URL
    assert app.config["DATABASE_POOL_MAX"] == config.default("DATABASE_POOL_MAX")


def test_a_local_server_takes_its_agent_from_the_environment(monkeypatch, tmp_path):
    from app.testing import LocalServer

    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("LLM_BASE_URL", "http://127.0.0.1:9/v1")  # as `agentphone test` documents
    monkeypatch.setenv("DATABASE_URL", "postgresql://hostile.invalid/db")
    with LocalServer() as server:
        assert isinstance(server.agent, LLMAgent)
        assert server.store.backend == "sqlite"  # its own database, whatever the environment's


def test_every_setting_is_read_by_the_app_or_by_gunicorn():
    read_by_app = {config.SETTING_OF.get(key, key) for key in config.READERS}
    others = {"AGENTS", "AGENTS_FILE",  # AGENT_FACTORIES
              "PORT", "WEB_CONCURRENCY", "WORKER_CONNECTIONS", "PROMETHEUS_MULTIPROC_DIR"}
    assert read_by_app | others == set(config.SETTINGS)
    assert not read_by_app & others
