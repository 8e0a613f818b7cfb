"""Real servers for tests: gunicorn with the gevent worker on a free loopback port.

The benchmarks (bench/_server.py) start their servers with the same helpers."""

import contextlib
import json
import os
import signal
import socket
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import requests

from app import logs
from app.simulator import iter_ndjson

ROOT = Path(__file__).resolve().parent.parent
GUNICORN = Path(sys.executable).with_name("gunicorn")
# A server's processes write their log lines from a thread, WRITE_SECONDS after logging them.
LOG_SETTLE_SECONDS = 5 * logs.WRITE_SECONDS


def free_port():
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def web_command(port):
    """The Procfile's web command, bound to ``port`` on loopback (gunicorn.conf.py would bind
    0.0.0.0)."""
    return [str(GUNICORN), "-c", "gunicorn.conf.py", "--bind", f"127.0.0.1:{port}", "wsgi:app"]


def stop_process(process, sig=signal.SIGTERM, timeout=10.0):
    """Send ``sig`` to a running ``process`` and wait ``timeout`` seconds, then SIGKILL it."""
    if process.poll() is None:
        process.send_signal(sig)
        try:
            process.wait(timeout)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(5)


@dataclass
class Server:
    url: str
    process: subprocess.Popen
    log_path: Path
    log_file: object = None

    @property
    def webhook(self):
        return self.url + "/webhook"

    def log(self):
        """The server's output so far, once the lines logged before this call are written."""
        time.sleep(LOG_SETTLE_SECONDS)
        return self.log_path.read_text(errors="replace")

    def worker_pids(self):
        out = subprocess.run(["pgrep", "-P", str(self.process.pid)], capture_output=True,
                             text=True, check=False).stdout
        return [int(p) for p in out.split()]

    def wait_for_log(self, text, timeout=15.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if text in self.log_path.read_text(errors="replace"):
                return True
            time.sleep(0.05)
        raise AssertionError(f"{text!r} not in server log:\n{self.log()[-3000:]}")

    def stop(self):
        stop_process(self.process, signal.SIGQUIT)  # quick shutdown: held streams are dropped
        if self.log_file is not None:
            self.log_file.close()


def wait_healthy(url, process, log_path, timeout=20.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(url + "/healthz", timeout=1).status_code == 200:
                return
        time.sleep(0.1)
    raise RuntimeError(f"server did not become healthy:\n{log_path.read_text()[-3000:]}")


def start_gunicorn(tmp_path, env, workers=1, command=None, port=None, output_pipe=False):
    """Start the Procfile's web command (or ``command``) with ``env`` added; returns a running
    Server. Its output goes to its log file, or with ``output_pipe`` to a pipe
    (``server.process.stdout``) that nothing reads until the caller does."""
    port = port or free_port()
    log_path = tmp_path / f"gunicorn-{port}.log"
    full_env = {
        **os.environ,
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "DATABASE_URL": "sqlite:///" + str(tmp_path / "events.db"),
        "PYTHONUNBUFFERED": "1",
        # Each server its own metrics folder: gunicorn empties it at start.
        "PROMETHEUS_MULTIPROC_DIR": str(tmp_path / f"prometheus-{port}"),
        **env,
    }
    if "AGENTPHONE_DEV" not in env:
        full_env.pop("AGENTPHONE_DEV", None)
    cmd = command or web_command(port)
    log_file = log_path.open("w")
    process = subprocess.Popen(cmd, cwd=ROOT, env=full_env,
                               stdout=subprocess.PIPE if output_pipe else log_file,
                               stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    server = Server(url, process, log_path, log_file)
    try:
        wait_healthy(url, process, log_path)
    except Exception:
        process.kill()
        server.stop()
        raise
    return server


def post_stream(url, raw, headers, timeout=60):
    """POST and collect ``(seconds since send, parsed line)`` for each NDJSON line."""
    started = time.monotonic()
    with requests.post(url, data=raw, headers=headers, stream=True, timeout=timeout) as resp:
        lines = [(time.monotonic() - started, json.loads(line)) for line in iter_ndjson(resp)]
        return resp, lines
