"""Configuration: fail closed without a secret, development secret, validated settings."""

import os
import re
import subprocess
import time

import pytest

from app import __version__, config, create_app
from app.store import get_store
from app.store.sqlite import path_from_url
from tests.servers import GUNICORN, ROOT, Server, free_port, wait_healthy

pytest_plugins = ["tests.postgres"]  # pg_server, pg_url


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    for name in config.SETTINGS:
        monkeypatch.delenv(name, raising=False)
    monkeypatch.chdir(tmp_path)  # no stray .env
    monkeypatch.setenv("DATABASE_URL", "sqlite:///" + str(tmp_path / "c.db"))
    return monkeypatch


def test_no_secret_refuses_to_start(clean_env):
    with pytest.raises(config.ConfigError, match="AGENTPHONE_WEBHOOK_SECRET is not set"):
        create_app()


def test_gunicorn_refuses_to_boot_without_a_secret(clean_env, tmp_path):
    env = {"PATH": "/usr/bin:/bin", "DATABASE_URL": "sqlite:///" + str(tmp_path / "x.db"),
           "PORT": str(free_port())}
    result = subprocess.run([str(GUNICORN), "-c", "gunicorn.conf.py", "wsgi:app"], cwd=ROOT,
                            env=env, capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode != 0
    assert "AGENTPHONE_WEBHOOK_SECRET is not set" in result.stdout + result.stderr


def test_dev_mode_generates_one_secret_and_keeps_it(clean_env, tmp_path):
    clean_env.setenv("AGENTPHONE_DEV", "1")
    first = config.from_env(tmp_path / "instance")["WEBHOOK_SECRETS"]
    again = config.from_env(tmp_path / "instance")["WEBHOOK_SECRETS"]
    assert first == again
    assert first[0].startswith("whsec_dev_") and len(first[0]) > 20


def test_comma_separated_secrets(clean_env, tmp_path):
    clean_env.setenv("AGENTPHONE_WEBHOOK_SECRET", " whsec_a, whsec_b ,,")
    assert config.from_env(tmp_path)["WEBHOOK_SECRETS"] == ("whsec_a", "whsec_b")


def test_dotenv_is_read_but_environment_wins(clean_env, tmp_path):
    (tmp_path / ".env").write_text("AGENTPHONE_WEBHOOK_SECRET=whsec_dotenv\nVOICE_TIMEOUT=12\n")
    clean_env.setenv("VOICE_TIMEOUT", "20")
    app = create_app()
    get_store(app).close()
    assert app.config["WEBHOOK_SECRETS"] == ("whsec_dotenv",)
    assert app.config["VOICE_TIMEOUT"] == 20


@pytest.mark.parametrize(("name", "value"), [("VOICE_TIMEOUT", "4"), ("VOICE_TIMEOUT", "121"),
                                             ("VOICE_TIMEOUT", "soon"), ("JOB_CONCURRENCY", "0")])
def test_out_of_range_settings_are_refused(clean_env, tmp_path, name, value):
    clean_env.setenv("AGENTPHONE_WEBHOOK_SECRET", "whsec_x")
    clean_env.setenv(name, value)
    with pytest.raises(config.ConfigError, match=name):
        config.from_env(tmp_path)


@pytest.mark.parametrize(("url", "path"), [("sqlite:///relative.db", "relative.db"),
                                           ("sqlite:////abs/path.db", "/abs/path.db")])
def test_sqlite_urls(url, path):
    assert path_from_url(url) == path


def test_unknown_database_url_is_refused(make_app):
    with pytest.raises(ValueError, match="DATABASE_URL"):
        make_app(DATABASE_URL="mysql://x")


def test_readme_table_is_the_settings_table():
    readme = (ROOT / "README.md").read_text()
    rows = re.findall(r"^\| `([A-Z_]+)` \| (?:`([^`]*)`|—) \|", readme, re.MULTILINE)
    assert rows == [(name, default or "") for name, (default, _) in config.SETTINGS.items()]


def test_env_example_is_the_settings_table():
    text = (ROOT / ".env.example").read_text()
    entries = re.findall(r"^# (.+)\n([A-Z_]+)=(.*)$", text, re.MULTILINE)
    assert entries == [(meaning, name, default or "")
                       for name, (default, meaning) in config.SETTINGS.items()]


def test_one_version_number():
    assert "\nversion = attr: app.__version__\n" in (ROOT / "setup.cfg").read_text()
    assert re.search(rf"^## \[{re.escape(__version__)}\]", (ROOT / "CHANGELOG.md").read_text(),
                     re.MULTILINE)


def test_pool_limit_reaches_the_postgres_pool(make_app, pg_url):
    app = make_app(DATABASE_URL=pg_url, DATABASE_POOL_MAX=3)
    store = get_store(app)
    assert store.max_size == 3
    with app.test_client() as client:
        assert client.get("/healthz").get_json() == {"ok": True, "store": "postgresql",
                                                     "webhook_secret": "ok"}


@pytest.mark.slow
def test_gunicorn_takes_port_and_workers_from_dotenv(tmp_path):
    port = free_port()
    (tmp_path / ".env").write_text(
        f"PORT={port}\nWEB_CONCURRENCY=3\nAGENTPHONE_WEBHOOK_SECRET=whsec_dotenv\n"
        f"DATABASE_URL=sqlite:///{tmp_path / 'dotenv.db'}\n")
    env = {k: v for k, v in os.environ.items() if k not in config.SETTINGS}
    log_path = tmp_path / "gunicorn.log"
    log_file = log_path.open("w")
    # Started from the folder holding .env, as a VM's service or a Procfile runs it.
    process = subprocess.Popen([str(GUNICORN), "-c", str(ROOT / "gunicorn.conf.py"),
                                "--pythonpath", str(ROOT), "wsgi:app"], cwd=tmp_path, env=env,
                               stdout=log_file, stderr=subprocess.STDOUT)
    server = Server(f"http://127.0.0.1:{port}", process, log_path, log_file)
    try:
        wait_healthy(server.url, process, log_path)
        deadline = time.monotonic() + 20
        while len(server.worker_pids()) < 3 and time.monotonic() < deadline:
            time.sleep(0.1)
        assert len(server.worker_pids()) == 3
        assert f"Listening at: http://0.0.0.0:{port}" in server.log()
    finally:
        server.stop()
