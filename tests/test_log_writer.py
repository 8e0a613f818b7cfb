"""A log reader that stops reading never stops the server: lines wait for a writer thread,
up to a limit, and the ones past it are counted."""

import contextlib
import logging
import os
import re
import select
import signal
import sys
import threading
import time

import pytest
import requests

from app import logs
from app.logs import EscapingStreamHandler
from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.servers import post_stream, start_gunicorn


@pytest.fixture
def background(monkeypatch):
    monkeypatch.setattr(logs, "_background", [True])


@pytest.fixture
def piped_logger():
    """A logger whose handler writes to a pipe that nothing reads until the test does."""
    read_end, write_end = os.pipe()
    stream = open(write_end, "w", encoding="utf-8")  # noqa: SIM115 - closed below
    handler = EscapingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(levelname)s %(message)s"))
    log = logging.getLogger("tests.log_writer")
    log.addHandler(handler)
    log.propagate = False
    log.setLevel(logging.INFO)
    try:
        yield log, read_end
    finally:
        log.removeHandler(handler)
        log.propagate = True
        log.setLevel(logging.NOTSET)
        os.close(read_end)  # first: lines still waiting then fail to write, never wait
        with contextlib.suppress(BrokenPipeError):
            handler.flush()
            stream.close()


def read_lines_until(read_end, done, timeout=20.0):
    """The pipe's lines, read until ``done(lines)``."""
    data, deadline = b"", time.monotonic() + timeout
    while (left := deadline - time.monotonic()) > 0:
        if select.select([read_end], [], [], left)[0]:
            data += os.read(read_end, 65536)
        lines = data.decode().splitlines()
        if done(lines):
            return lines
    raise AssertionError(f"the pipe's lines are not all there: {data[-500:]!r}")


def accounted(lines):
    """How many lines were logged, by the written lines and the warnings of dropped ones;
    asserts that the lines written are whole and in the order logged."""
    count = 0
    for line in lines:
        if line.startswith("WARNING"):
            dropped = re.fullmatch(
                r"WARNING (\d+) log lines dropped: the log output was not being read", line)
            count += int(dropped[1])
        else:
            assert line == f"INFO line {count:05d} {'x' * 90}"
            count += 1
    return count


def test_lines_past_the_limit_are_counted_while_the_reader_stalls(background, piped_logger,
                                                                  monkeypatch):
    log, read_end = piped_logger
    monkeypatch.setattr(logs, "MAX_WAITING_LINES", 2000)
    sent = 10_000  # past the pipe's 64 KiB, the writer's batch in hand and 2000 waiting
    logger = threading.Thread(target=lambda: [log.info("line %05d %s", i, "x" * 90)
                                              for i in range(sent)])
    logger.start()
    logger.join(30)  # a handler that wrote itself would wait forever on the full pipe
    assert not logger.is_alive()

    lines = read_lines_until(read_end, lambda lines: accounted(lines) == sent)
    written = sum(line.startswith("INFO") for line in lines)
    assert 2000 <= written < sent  # 2000 waited, besides any the writer had taken already


def test_a_forked_child_never_writes_the_lines_its_parent_logged(background, piped_logger):
    log, read_end = piped_logger
    log.info("before the fork")  # waits WRITE_SECONDS for the writer thread
    pid = os.fork()
    if pid == 0:  # the child writes what waits in it, then leaves without a cleanup
        log.info("in the child")
        log.handlers[0].flush()
        os._exit(0)
    assert os.waitpid(pid, 0)[1] == 0
    log.info("after the fork")
    log.warning("last")
    lines = read_lines_until(read_end, lambda lines: "WARNING last" in lines)
    assert sorted(lines) == sorted(["INFO before the fork", "INFO in the child",
                                    "INFO after the fork", "WARNING last"])


def test_writes_are_whole_lines_of_at_most_pipe_buf_bytes_per_stream():
    a, b = object(), object()
    line = "x" * 999 + "\n"
    batch = [(a, line)] * 5 + [(b, "é" * 1500 + "\n")] * 2 + [(a, "y" * 5000 + "\n"), (a, line)]
    chunks = list(logs._chunks(batch))
    assert [(stream, len(text)) for stream, text in chunks] == [
        (a, 4000), (a, 1000),  # five lines of 1,000 bytes: four fit in 4,096
        (b, 1501), (b, 1501),  # 3,002 bytes each: two would not fit
        (a, 5001), (a, 1000)]  # a longer line is a write of its own
    assert "".join(text for _, text in chunks) == "".join(text for _, text in batch)


def test_a_child_forked_while_the_writer_waits_on_a_full_pipe_writes_its_own_lines(
        background, piped_logger):
    """The writer holds no lock of the stream's while it waits: a child forked meanwhile
    would inherit that lock held, by a thread it does not have, and never write again."""
    log, read_end = piped_logger
    for i in range(2000):  # 200 KB: the writer then waits on the full pipe
        log.info("line %04d %s", i, "x" * 90)
    time.sleep(logs.WRITE_SECONDS * 4)
    pid = os.fork()
    if pid == 0:
        log.info("in the child")
        log.handlers[0].flush()
        os._exit(0)
    try:
        lines = read_lines_until(read_end, lambda lines: "INFO in the child" in lines
                                 and any(line.startswith("INFO line 1999") for line in lines))
    finally:
        os.kill(pid, signal.SIGKILL)  # when it is stuck; gone already when it is not
        os.waitpid(pid, 0)
    assert [line for line in lines if line != "INFO in the child"] == [
        f"INFO line {i:04d} {'x' * 90}" for i in range(2000)]


def test_the_writer_thread_outlives_a_write_that_fails(background, monkeypatch):
    class FullDisk:  # a stream that has no descriptor and fails once, as stderr does
        written, failures = [], 1

        def write(self, text):
            if self.failures:
                self.failures -= 1
                raise OSError(28, "No space left on device")
            self.written.append(text)

    monkeypatch.setattr(sys, "stderr", FullDisk())  # no report of the failure gets out either
    stream = FullDisk()
    handler = EscapingStreamHandler(stream)
    handler.setFormatter(logging.Formatter("%(message)s"))
    record = logging.makeLogRecord({"msg": "lost"})
    handler.handle(record)
    time.sleep(logs.WRITE_SECONDS * 4)
    handler.handle(logging.makeLogRecord({"msg": "written"}))
    deadline = time.monotonic() + 10
    while not stream.written and time.monotonic() < deadline:
        time.sleep(0.01)
    assert stream.written == ["written\n"]


def test_a_line_logged_while_the_waiting_lines_are_locked_is_kept(background, piped_logger):
    """As a signal handler that logs, run while this thread queues a line."""
    log, read_end = piped_logger

    def log_inside():
        with logs._waiting_lock:
            log.info("inside")

    inside = threading.Thread(target=log_inside)
    inside.start()
    inside.join(10)
    assert not inside.is_alive()
    assert read_lines_until(read_end, lambda lines: lines) == ["INFO inside"]


@pytest.mark.slow
def test_the_server_answers_while_nothing_reads_its_log(tmp_path):
    """Before the writer thread, a worker stopped for good once the pipe held 64 KiB of lines
    (128 texts)."""
    server = start_gunicorn(tmp_path, {"AGENTPHONE_WEBHOOK_SECRET": SECRET, "LOG_LEVEL": "INFO",
                                       "DEMO_TOOL_LATENCY": "0"}, output_pipe=True)
    try:
        ids = []
        with requests.Session() as session:
            for i in range(600):  # some 180 KB of lines, nearly three full pipes
                raw, headers = signed_request(SECRET, payload("sms", f"hello {i}"))
                response = session.post(server.webhook, data=raw, headers=headers, timeout=10)
                assert response.status_code == 200
                ids.append(headers["X-Webhook-ID"])
        raw, headers = signed_request(SECRET, payload("voice", "What are your hours?"))
        _, lines = post_stream(server.webhook, raw, headers, timeout=10)
        assert "interim" not in lines[-1][1] and lines[-1][1]["text"]  # a final line, spoken
        output = []
        reader = threading.Thread(target=lambda: output.append(server.process.stdout.read()))
        reader.start()  # the lines written at exit need a reader too
        server.stop()
        reader.join(10)
        log = output[0].decode()
    finally:
        server.stop()
        server.process.stdout.close()
    texts = re.findall(r'"POST /webhook HTTP/1.1" 200 .* delivery=(whd_\w+)', log)
    assert texts[:600] == ids
    assert "log lines dropped" not in log
    assert "Shutting down: Master" in log  # lines logged at exit are written too
