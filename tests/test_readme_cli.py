"""Every `agentphone` command line in the README's shell blocks runs as written: the real
script, against the fake API and a real server, so the README and the commands cannot drift."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from app.cli import agentphone
from app.store import open_store
from tests.conftest import SECRET
from tests.fake_agentphone import (  # noqa: F401
    API_KEY,
    fake_api_fixture,
    json_reply,
    offset_list,
    sse_reply,
)
from tests.servers import ROOT

AGENTPHONE = str(Path(sys.executable).with_name("agentphone"))
CALL = {"id": "call_abc123", "status": "completed", "direction": "inbound",
        "fromNumber": "+15559876543", "toNumber": "+15551234567", "durationSeconds": 30}


def readme_commands():
    """Each `agentphone` command of the README's ```sh blocks: (line, env, argv)."""
    readme = (ROOT / "README.md").read_text()
    commands = []
    for block in re.findall(r"^```sh\n(.*?)^```", readme, re.M | re.S):
        for line in block.splitlines():
            lexer = shlex.shlex(line, posix=True, punctuation_chars=";")
            lexer.whitespace_split = True
            words = list(lexer)
            while words:
                command, words = _until(words, ";")
                env = {}
                while command and re.fullmatch(r"[A-Z_]+=.*", command[0]):
                    name, _, value = command.pop(0).partition("=")
                    env[name] = value
                if command and Path(command[0]).name == "agentphone":
                    commands.append((line, env, command[1:]))
    return commands


def _until(words, separator):
    if separator in words:
        at = words.index(separator)
        return words[:at], words[at + 1:]
    return words, []


def test_readme_covers_every_command():
    used = {argv[0] for _, _, argv in readme_commands()}
    assert used == set(agentphone.commands) - {"worker"}  # the worker runs until stopped


@pytest.fixture
def job_42(tmp_path):
    """A database whose job 42 is dead with a reply of unknown fate, for `jobs --dead`,
    `jobs retry 42`, `jobs --unsure` and `jobs resend 42`."""
    url = f"sqlite:///{tmp_path / 'readme.db'}"
    store = open_store(url)
    try:
        store.migrate()
        ids = [store.enqueue("reaction", "{}") for _ in range(42)]
        while (job := store.claim_job("w", 60)) is not None:
            if job.id == 42:
                store.outbox_begin("whd_42", "+15559876543", "It shipped.", job_id=42)
                store.outbox_finish("whd_42", "unknown", error="HTTP 502: bad gateway")
                store.fail_job(job.id, "RuntimeError: upstream said no")
            else:
                store.finish_job(job.id)
    finally:
        store.close()
    assert ids[-1] == 42
    return url


@pytest.mark.slow
def test_readme_commands_run(fake_api, gunicorn, job_42, tmp_path):
    fake_api.on("GET", "/v1/calls", offset_list([CALL]))
    fake_api.on("GET", "/v1/calls/call_abc123/transcript/stream", sse_reply(
        'event: connected\ndata: {"callId":"call_abc123","status":"in-progress"}\n\n',
        'event: turn\ndata: {"role":"user","content":"Hi"}\n\n',
        'event: ended\ndata: {"callId":"call_abc123","status":"completed"}\n\n'))
    fake_api.on("GET", "/v1/webhooks/deliveries", offset_list([], envelope="items"))
    fake_api.on("GET", "/v1/webhooks/deliveries/stats", {"total": 0, "success": 0,
                                                         "failed": 0, "pending": 0})
    fake_api.on("POST", "/v1/webhooks/test", {"success": True, "httpStatus": 200})
    fake_api.on("GET", "/v1/agents", offset_list([{"id": "agt_1", "name": "Front desk"}]))
    fake_api.on("POST", "/v1/messages", {"id": "msg_1", "status": "sent", "channel": "sms"})
    hook = {"id": "wh_1", "url": "https://example.test/webhook", "status": "active",
            "contextLimit": 10, "timeout": 30, "createdAt": "2026-12-01T10:00:00Z"}
    fake_api.on("POST", "/v1/webhooks", {**hook, "secret": "whsec_set_0123456789"},
                {**hook, "secret": "whsec_rotated_0123456789"})
    fake_api.on("GET", "/v1/webhooks", {**hook, "secret": "whsec_set_0123456789"})
    fake_api.on("GET", "/v1/agents/agt_1/webhook", json_reply(None))
    fake_api.on("POST", "/v1/calls", {"id": "call_out", "agentId": "agt_1",
                                      "toNumber": "+14155559999", "fromNumber": "+14155550001",
                                      "status": "in-progress"})
    (tmp_path / "app").symlink_to(ROOT / "app")  # paths in the README are from the checkout
    server = gunicorn(workers=1, DEMO_TOOL_LATENCY=0)
    base = {"PATH": os.environ["PATH"], "AGENTPHONE_API_KEY": API_KEY,
            "AGENTPHONE_API_URL": fake_api.url, "AGENTPHONE_WEBHOOK_SECRET": SECRET,
            "DATABASE_URL": job_42, "PORT": server.url.rsplit(":", 1)[1]}
    outputs = {}
    for line, env, argv in readme_commands():
        result = subprocess.run([AGENTPHONE, *argv], cwd=tmp_path, env={**base, **env},
                                stdin=subprocess.DEVNULL, capture_output=True, text=True,
                                timeout=120, check=False)
        assert result.returncode == 0, f"{line}\n{result.stdout}{result.stderr}"
        outputs[" ".join(argv)] = result.stdout
    assert outputs["transcript call_abc123 --follow"].splitlines()[1] == "user: Hi"
    assert outputs["jobs --dead"].splitlines()[1].split()[:3] == ["42", "reaction", "dead"]
    assert outputs["jobs retry 42"] == "job 42 queued again\n"
    assert outputs["jobs --unsure"].splitlines()[1].split()[:3] == ["42", "unknown",
                                                                    "+15559876543"]
    assert outputs["jobs resend 42"] == "job 42 queued to resend its reply to +15559876543\n"
    assert fake_api.last("POST", "/v1/messages").body == {
        "agent_id": "agt_1", "to_number": "+14155551234", "body": "Hello from the CLI"}
    assert outputs["simulate --sms --text Hi"].rstrip().endswith('{"ok":true}')
    assert "whsec_…6789" in outputs["webhook show"] and "whsec_rotated" not in str(outputs)
    assert "calling +14155559999 from +14155550001: call_out" in outputs[
        "call +14155559999 --agent agt_1 --greeting Hi, this is your reminder"]
    assert "deliveries per minute" in outputs["top --once"]
    assert "0 failed" in outputs["test app/demo/scenarios --junit report.xml"]
    assert (tmp_path / "report.xml").read_text().count("<testcase") >= 14
    assert "Calling local server (Receptionist)" in outputs["call"]
    assert server.log().count('"POST /webhook HTTP/1.1" 200') == 3
