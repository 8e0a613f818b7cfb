"""Webhook secrets: a blank secret never verifies anything, and the development secret is
never seen half-written."""

import multiprocessing
import threading

import pytest

from app import config, create_app
from app.simulator import payload, signed_request
from app.webhook import signing
from tests.conftest import NOW


@pytest.mark.parametrize("blank", ["", " ", "\t \n"])
def test_blank_secret_verifies_nothing(blank):
    body = b'{"event":"agent.message"}'
    signature = signing.compute(blank, str(NOW), body)
    with pytest.raises(signing.InvalidSignature):
        signing.verify((blank,), signature, str(NOW), body, now=NOW)


def test_blank_secret_beside_a_real_one_verifies_only_the_real_one():
    body = b"{}"
    with pytest.raises(signing.InvalidSignature):
        signing.verify(("", "whsec_real"), signing.compute("", str(NOW), body), str(NOW), body,
                       now=NOW)
    signing.verify(("", "whsec_real"), signing.compute("whsec_real", str(NOW), body),
                   str(NOW), body, now=NOW)


@pytest.mark.parametrize("secrets", [(), ("",), (" ",), ("whsec_ok", "  ")])
def test_app_refuses_to_start_with_a_blank_secret(tmp_path, secrets):
    with pytest.raises(config.ConfigError):
        create_app({"WEBHOOK_SECRETS": secrets, "JOB_RUNNER": False,
                    "DATABASE_URL": f"sqlite:///{tmp_path}/e.db"})


@pytest.mark.parametrize("raw", ["", " , ,", "\t"])
def test_blank_secret_setting_counts_as_no_secret(monkeypatch, tmp_path, raw):
    monkeypatch.setenv("AGENTPHONE_WEBHOOK_SECRET", raw)
    monkeypatch.delenv("AGENTPHONE_DEV", raising=False)
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/e.db")
    monkeypatch.setenv("JOB_RUNNER", "off")
    monkeypatch.chdir(tmp_path)
    assert config.from_env(tmp_path)["WEBHOOK_SECRETS"] == ()
    with pytest.raises(config.ConfigError, match="AGENTPHONE_WEBHOOK_SECRET is not set"):
        create_app()


def test_dev_mode_with_blank_setting_uses_the_generated_secret(monkeypatch, tmp_path):
    monkeypatch.setenv("AGENTPHONE_WEBHOOK_SECRET", " , ")
    monkeypatch.setenv("AGENTPHONE_DEV", "1")
    [secret] = config.from_env(tmp_path)["WEBHOOK_SECRETS"]
    assert secret.startswith("whsec_dev_")


def _read_dev_secret(folder, barrier, results):
    barrier.wait()
    results.put(config.dev_secret(folder))


def test_dev_secret_is_never_read_empty_by_concurrent_processes(tmp_path):
    ctx = multiprocessing.get_context("fork")
    for round_ in range(12):
        folder = tmp_path / f"instance-{round_}"
        barrier, results = ctx.Barrier(12), ctx.Queue()
        procs = [ctx.Process(target=_read_dev_secret, args=(folder, barrier, results))
                 for _ in range(12)]
        for p in procs:
            p.start()
        seen = [results.get(timeout=30) for _ in procs]
        for p in procs:
            p.join(30)
            assert p.exitcode == 0
        assert len(set(seen)) == 1, seen
        assert seen[0].startswith("whsec_dev_") and len(seen[0]) == len("whsec_dev_") + 32
        assert [p.name for p in folder.iterdir()] == ["dev-webhook-secret"]


def test_dev_secret_is_never_read_empty_by_concurrent_threads(tmp_path):
    for round_ in range(20):
        folder = tmp_path / f"instance-{round_}"
        barrier, seen = threading.Barrier(16), []

        def read(folder=folder, barrier=barrier, seen=seen):
            barrier.wait()
            seen.append(config.dev_secret(folder))

        threads = [threading.Thread(target=read) for _ in range(16)]
        for t in threads:
            t.start()
        for t in threads:
            t.join(30)
        assert len(seen) == 16 and len(set(seen)) == 1 and seen[0].startswith("whsec_dev_")


def test_empty_dev_secret_file_is_refused_not_used(tmp_path):
    (tmp_path / "dev-webhook-secret").write_text("")
    with pytest.raises(config.ConfigError, match="empty"):
        config.dev_secret(tmp_path)


def test_generated_dev_secret_verifies_deliveries(monkeypatch, tmp_path):
    monkeypatch.delenv("AGENTPHONE_WEBHOOK_SECRET", raising=False)
    monkeypatch.setenv("AGENTPHONE_DEV", "1")
    monkeypatch.setenv("DATABASE_URL", f"sqlite:///{tmp_path}/e.db")
    monkeypatch.setenv("JOB_RUNNER", "off")
    monkeypatch.chdir(tmp_path)
    app = create_app(clock=lambda: NOW)
    [secret] = app.config["WEBHOOK_SECRETS"]
    raw, headers = signed_request(secret, payload("sms"), timestamp=NOW)
    assert app.test_client().post("/webhook", data=raw, headers=headers).status_code == 200
    raw, headers = signed_request("", payload("sms"), timestamp=NOW)
    assert app.test_client().post("/webhook", data=raw, headers=headers).status_code == 401
