"""The `agentphone` console script: each command needs only what it uses, data goes to stdout
and logs to stderr, and the development banner comes from the web servers alone."""

import json
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import click
import pytest
from click.testing import CliRunner

from app import config
from app.cli import COMMANDS, agentphone
from app.cli import api as cli_api
from app.cli import jobs as cli_jobs
from app.cli import simulate as cli_simulate
from app.cli import testing as cli_testing
from app.cli import top as cli_top
from app.store import open_store
from tests.conftest import DATA, SECRET
from tests.fake_agentphone import API_KEY, fake_api_fixture, offset_list  # noqa: F401
from tests.servers import ROOT, free_port, start_gunicorn

BIN = Path(sys.executable).parent
AGENTPHONE = str(BIN / "agentphone")
FLASK = str(BIN / "flask")
CALLS = [{"id": "call_1", "status": "completed", "direction": "inbound",
          "fromNumber": "+15559876543", "toNumber": "+15551234567"}]
BANNER = "development mode: webhook URL"


def command_paths(group, prefix=()):
    """Every command and subcommand of a group, as argument lists."""
    for name, command in group.commands.items():
        yield [*prefix, name]
        if isinstance(command, click.Group):
            yield from command_paths(command, (*prefix, name))


def files_under(path):
    return sorted(path.rglob("*")) if path.exists() else []


@pytest.fixture
def clean_env(monkeypatch, tmp_path):
    """No setting in the environment and an empty working directory, as on a fresh machine."""
    for name in config.SETTINGS:
        monkeypatch.setenv(name, "")  # recorded, so a value read from .env is removed after
        monkeypatch.delenv(name)
    monkeypatch.chdir(tmp_path)
    return monkeypatch


def invoke(*args, **env):
    return CliRunner().invoke(agentphone, list(args), env=env)


def test_help_needs_no_configuration_and_creates_nothing(tmp_path):
    instance = files_under(ROOT / "instance")
    for path in [[], *command_paths(agentphone)]:
        result = subprocess.run([AGENTPHONE, *path, "--help"], cwd=tmp_path, env={},
                                capture_output=True, text=True, timeout=60, check=False)
        assert (result.returncode, result.stderr) == (0, ""), path
        assert result.stdout.startswith(" ".join(["Usage: agentphone", *path, "[OPTIONS]"]))
    assert list(tmp_path.iterdir()) == []
    assert files_under(ROOT / "instance") == instance


def listed_commands(help_text):
    """The command names a group's --help lists."""
    return set(re.findall(r"^  (\S+)", help_text.split("Commands:\n", 1)[1], re.MULTILINE))


@pytest.mark.parametrize("command", [[AGENTPHONE], [FLASK, "--app", "wsgi", "agentphone"]])
def test_help_lists_every_command_defined(tmp_path, command):
    modules = [cli_api, cli_jobs, cli_simulate, cli_testing, cli_top]
    defined = [obj for module in modules for obj in vars(module).values()
               if isinstance(obj, click.Command)]
    subcommands = {id(sub) for group in defined if isinstance(group, click.Group)
                   for sub in group.commands.values()}
    top_level = {c.name for c in defined if id(c) not in subcommands}
    env = {"AGENTPHONE_WEBHOOK_SECRET": SECRET, "DATABASE_URL": f"sqlite:///{tmp_path}/h.db"}
    result = subprocess.run([*command, "--help"], cwd=ROOT, env=env, capture_output=True,
                            text=True, timeout=60, check=True)
    assert listed_commands(result.stdout) == top_level == {c.name for c in COMMANDS} == {
        "call", "calls", "deliveries", "jobs", "send", "simulate", "test", "top",
        "transcript", "webhook", "worker"}


def test_api_commands_need_only_the_api_key(clean_env, fake_api, tmp_path):
    fake_api.on("GET", "/v1/calls", offset_list(CALLS))
    fake_api.on("GET", "/v1/calls/call_1/transcript", {"data": []})
    fake_api.on("GET", "/v1/webhooks/deliveries", offset_list([], envelope="items"))
    fake_api.on("GET", "/v1/webhooks/deliveries/stats", {"total": 0, "success": 0, "failed": 0,
                                                         "pending": 0, "successRate": None})
    fake_api.on("POST", "/v1/webhooks/test", {"success": True, "httpStatus": 200})
    fake_api.on("GET", "/v1/agents", offset_list([{"id": "agt_1", "name": "Desk"}]))
    fake_api.on("POST", "/v1/messages", {"id": "msg_1", "status": "sent"})
    db = tmp_path / "never.db"
    instance = files_under(ROOT / "instance")
    env = {"AGENTPHONE_API_KEY": API_KEY, "AGENTPHONE_API_URL": fake_api.url,
           "DATABASE_URL": f"sqlite:///{db}", "AGENTPHONE_DEV": "1"}
    for args in (["calls", "--json"], ["transcript", "call_1"], ["deliveries"],
                 ["webhook", "test"], ["send", "+14155552671", "hi"]):
        result = invoke(*args, **env)
        assert result.exit_code == 0, (args, result.output)
    assert json.loads(invoke("calls", "--json", **env).stdout) == CALLS
    assert not db.exists()
    assert list(tmp_path.iterdir()) == []
    assert files_under(ROOT / "instance") == instance  # no development secret either


def test_only_store_commands_open_the_store(clean_env, tmp_path):
    db = tmp_path / "jobs.db"
    env = {"DATABASE_URL": f"sqlite:///{db}"}
    assert invoke("calls", "--help", **env).exit_code == 0
    assert not db.exists()
    result = invoke("jobs", **env)
    assert (result.exit_code, result.stdout.splitlines()[-1]) == (0, "totals: none")
    assert db.exists()
    result = invoke("jobs", "retry", "7", **env)
    assert (result.exit_code, result.stderr) == (1, "Error: no job 7\n")
    result = invoke("calls", "--local", **env)
    assert (result.exit_code, result.stdout) == (0, "ID  STATUS  FROM  TO  ENDED  SECONDS  "
                                                    "SENTIMENT  SUCCESS  SUMMARY\n"
                                                    "0 stored call(s)\n")


@pytest.mark.parametrize(("args", "env", "said"), [
    (["calls"], {}, "No AgentPhone API key: set AGENTPHONE_API_KEY"),
    (["simulate"], {}, "no webhook secret: set AGENTPHONE_WEBHOOK_SECRET"),
    (["jobs"], {"DATABASE_URL": "mysql://db/x"}, "DATABASE_URL must start with sqlite:///"),
    (["jobs"], {"DATABASE_POOL_MAX": "many"}, "DATABASE_POOL_MAX='many' is not a number"),
    (["worker"], {"VOICE_TIMEOUT": "400"}, "VOICE_TIMEOUT=400 is out of range"),
    (["deliveries"], {"LOG_LEVEL": "loud"}, "LOG_LEVEL='loud' is not a logging level"),
])
def test_missing_or_bad_config_is_one_line(clean_env, args, env, said):
    result = invoke(*args, **env)
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)  # no traceback
    assert result.stdout == ""
    assert result.stderr.startswith("Error: ") and said in result.stderr
    assert result.stderr.count("\n") == 1


@pytest.mark.parametrize("command", [[AGENTPHONE], [FLASK, "--app", "wsgi", "agentphone"]])
def test_logs_go_to_stderr_and_json_to_stdout(fake_api, tmp_path, command):
    fake_api.on("GET", "/v1/calls", offset_list(CALLS))
    env = {"AGENTPHONE_API_KEY": API_KEY, "AGENTPHONE_API_URL": fake_api.url,
           "AGENTPHONE_DEV": "1", "AGENTPHONE_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "DEBUG",
           "DATABASE_URL": f"sqlite:///{tmp_path / 'x.db'}"}
    result = subprocess.run([*command, "calls", "--json"], cwd=ROOT, env=env,
                            capture_output=True, text=True, timeout=60, check=False)
    assert result.returncode == 0, result.stderr
    assert json.loads(result.stdout) == CALLS
    assert "DEBUG urllib3.connectionpool: Starting new HTTP connection" in result.stderr
    assert BANNER not in result.stdout + result.stderr  # not a web server


@pytest.mark.slow
def test_simulate_posts_to_the_port_in_dotenv(clean_env, tmp_path):
    port = free_port()
    server = start_gunicorn(tmp_path, {"AGENTPHONE_WEBHOOK_SECRET": SECRET}, port=port)
    try:
        (tmp_path / ".env").write_text(f"PORT={port}\nAGENTPHONE_WEBHOOK_SECRET={SECRET}\n")
        result = invoke("simulate", "--sms")
    finally:
        server.stop()
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith(f"POST http://127.0.0.1:{port}/webhook  sms")
    assert result.stdout.rstrip().endswith('{"ok":true}')
    assert "http://127.0.0.1:$PORT/webhook" in invoke("simulate", "--help").stdout


@pytest.mark.slow
def test_gunicorn_banner_shows_the_bound_address_once(tmp_path):
    port = free_port()
    server = start_gunicorn(tmp_path, {"AGENTPHONE_DEV": "1", "AGENTPHONE_WEBHOOK_SECRET": SECRET,
                                       "PORT": str(free_port())}, workers=2, port=port)
    try:
        server.wait_for_log(f"{BANNER} http://127.0.0.1:{port}/webhook, secret {SECRET}")
        deadline = time.monotonic() + 10
        while server.log().count("job runner") < 2 and time.monotonic() < deadline:
            time.sleep(0.05)
        time.sleep(0.5)  # the second worker's post_worker_init has run
        assert server.log().count(BANNER) == 1
    finally:
        server.stop()


@pytest.mark.slow
def test_flask_run_banner_shows_its_port(tmp_path):
    port = free_port()
    server = start_gunicorn(
        tmp_path, {"AGENTPHONE_DEV": "1", "AGENTPHONE_WEBHOOK_SECRET": SECRET,
                   "PORT": str(free_port())},
        command=[FLASK, "--app", "wsgi", "run", "--port", str(port)], port=port)
    try:
        server.wait_for_log(f"{BANNER} http://127.0.0.1:{port}/webhook, secret {SECRET}")
    finally:
        server.stop()


@pytest.mark.slow
@pytest.mark.parametrize("command", [[AGENTPHONE], [FLASK, "--app", "wsgi", "agentphone"]])
def test_worker_runs_jobs_needs_no_secret_and_prints_no_banner(tmp_path, command):
    env = {"AGENTPHONE_DEV": "1", "DATABASE_URL": f"sqlite:///{tmp_path / 'w.db'}",
           "PYTHONUNBUFFERED": "1"}
    if command[0] == FLASK:  # the wsgi module builds the web app, which needs its secret
        env["AGENTPHONE_WEBHOOK_SECRET"] = SECRET
    store = open_store(env["DATABASE_URL"])
    try:
        store.migrate()
        job_id = store.enqueue("reaction", (DATA / "fixtures" / "reaction-imessage.json")
                               .read_text(), delivery_id="whd_worker")
    finally:
        store.close()
    instance = files_under(ROOT / "instance")
    log = tmp_path / "worker.log"
    with log.open("w") as out:
        process = subprocess.Popen([*command, "worker"], cwd=ROOT, env=env, stdout=out,
                                   stderr=subprocess.STDOUT)
        try:
            deadline = time.monotonic() + 20
            while (f"job {job_id} (reaction) done" not in log.read_text()
                   and time.monotonic() < deadline):
                assert process.poll() is None, log.read_text()
                time.sleep(0.05)
            process.send_signal(signal.SIGTERM)
            assert process.wait(15) == 0
        finally:
            if process.poll() is None:
                process.kill()
                process.wait(5)
    output = log.read_text()
    assert f"job {job_id} (reaction) done" in output
    assert BANNER not in output and "webhook" not in output
    assert files_under(ROOT / "instance") == instance
