"""Connection hygiene through the real gunicorn gevent worker: slow and partial requests are
dropped after REQUEST_READ_TIMEOUT, connections past WORKER_CONNECTIONS get 503 at once, and
the descriptor table has room for them all from the start."""

import contextlib
import http.client
import io
import re
import signal
import socket
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest
import requests

from app.gunicorn_worker import OTHER_DESCRIPTORS, REFUSAL_SLOTS, DeadlineSocket
from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.servers import post_stream

pytestmark = pytest.mark.slow

PARTIAL_BODY = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: 100000\r\n\r\n{")
DRIPPED_HEADERS = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 200


def connect(server):
    address = urlsplit(server.url)
    return socket.create_connection((address.hostname, address.port), timeout=5)


def deliver(server):
    """POST one signed SMS delivery; (status, seconds)."""
    raw, headers = signed_request(SECRET, payload("sms", "hello"))
    started = time.monotonic()
    response = requests.post(server.webhook, data=raw, headers=headers, timeout=10)
    return response.status_code, time.monotonic() - started


def closed_by_server(sock, timeout):
    """True when the server closed the connection within ``timeout`` seconds."""
    sock.settimeout(timeout)
    try:
        while sock.recv(4096):
            pass
    except TimeoutError:
        return False
    except OSError:
        pass
    return True


def drip(socks, stop, interval=0.25):
    """Send one more header byte on each socket every ``interval`` until ``stop`` is set."""
    sent = 0
    while not stop.wait(interval) and sent < len(DRIPPED_HEADERS):
        for sock in socks:
            with contextlib.suppress(OSError):  # dropped by the server: what we want
                sock.send(DRIPPED_HEADERS[sent:sent + 1])
        sent += 1


def test_slow_and_partial_requests_are_dropped_while_deliveries_are_served(gunicorn):
    server = gunicorn(workers=1, REQUEST_READ_TIMEOUT=2)
    partial, dripping = [], []
    for _ in range(100):
        sock = connect(server)
        sock.sendall(PARTIAL_BODY)
        partial.append(sock)
        dripping.append(connect(server))
    opened = time.monotonic()
    stop = threading.Event()
    dripper = threading.Thread(target=drip, args=(dripping, stop), daemon=True)
    dripper.start()
    try:
        timings = []
        while time.monotonic() - opened < 4:  # before, during and after the drop
            timings.append(deliver(server))
            time.sleep(0.2)
        assert all(status == 200 for status, _ in timings), timings
        assert max(seconds for _, seconds in timings) < 1.0, timings
        # The deadline is 2 s; 6 s from opening leaves room for a busy machine.
        left = max(0.1, 6 - (time.monotonic() - opened))
        still_open = [s for s in partial + dripping if not closed_by_server(s, left)]
        assert still_open == []
    finally:
        stop.set()
        dripper.join(5)
        for sock in partial + dripping:
            sock.close()
    assert "request not received within 2 s" in server.log()


def test_a_connection_past_the_cap_is_answered_503_at_once(gunicorn):
    server = gunicorn(workers=1, WORKER_CONNECTIONS=20, REQUEST_READ_TIMEOUT=3)
    idle = [connect(server) for _ in range(20)]
    try:
        time.sleep(0.3)  # accepted: every slot is held
        raw, headers = signed_request(SECRET, payload("sms", "hello"))
        started = time.monotonic()
        busy = requests.post(server.webhook, data=raw, headers=headers, timeout=5)
        assert (busy.status_code, busy.headers["Retry-After"]) == (503, "1")
        assert busy.json()["error"]["code"] == "SERVER_BUSY"
        assert time.monotonic() - started < 1.0
        # Once the idle connections have used up their read deadline, slots are free again.
        assert all(closed_by_server(sock, 6) for sock in idle)
        assert deliver(server)[0] == 200
    finally:
        for sock in idle:
            sock.close()


def test_a_voice_stream_outlasting_the_read_deadline_is_not_cut(gunicorn, effects_agent):
    server = gunicorn(workers=1, REQUEST_READ_TIMEOUT=1, TEST_TOOL_SECONDS=2.5,
                      **effects_agent.env)
    raw, headers = signed_request(SECRET, payload("voice", "where is it"))
    response, lines = post_stream(server.webhook, raw, headers)
    assert response.status_code == 200
    assert lines[-1][1] == {"text": "Tool said done for where is it."}
    assert lines[-1][0] > 2.5


def worker_fd_table(pid):
    """(descriptor table size, soft open-files limit) of a process, from /proc."""
    status = Path(f"/proc/{pid}/status").read_text()
    size = int(re.search(r"^FDSize:\s+(\d+)", status, re.M).group(1))
    limits = Path(f"/proc/{pid}/limits").read_text()
    soft = re.search(r"^Max open files\s+(\S+)", limits, re.M).group(1)
    return size, (float("inf") if soft == "unlimited" else int(soft))


def test_a_worker_sizes_its_descriptor_table_at_boot(gunicorn):
    # Growing it under load stops the worker for an RCU grace period at each power of two.
    server = gunicorn(workers=1, WORKER_CONNECTIONS=3000)
    (pid,) = server.worker_pids()
    size, soft = worker_fd_table(pid)
    assert size >= min(3000 + REFUSAL_SLOTS + OTHER_DESCRIPTORS, soft)
    held = [connect(server) for _ in range(300)]
    try:
        assert deliver(server)[0] == 200
        assert worker_fd_table(pid)[0] == size  # 300 more connections: never grown again
    finally:
        for sock in held:
            sock.close()


class Recording:
    """A socket that records what is sent."""

    def __init__(self):
        self.sent = []

    def gettimeout(self):
        return None

    def sendall(self, data):
        self.sent.append(bytes(data))

    def sendfile(self, file, offset=0, count=None):
        self.sent.append(file.read())


def test_a_response_head_goes_out_with_the_first_body_bytes():
    conn = Recording()
    sock = DeadlineSocket(conn, 10, ("127.0.0.1", 1))
    sock.hold_head()
    sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    assert conn.sent == []
    sock.sendall(memoryview(b'{"text": "one"}\n'))
    sock.sendall(b'{"text": "two"}\n')
    sock.request_done()
    assert conn.sent == [b'HTTP/1.1 200 OK\r\n\r\n{"text": "one"}\n', b'{"text": "two"}\n']
    # A response with no body: the head goes out when the request is done.
    sock.hold_head()
    sock.sendall(b"HTTP/1.1 204 No Content\r\n\r\n")
    sock.request_done()
    assert conn.sent[-1] == b"HTTP/1.1 204 No Content\r\n\r\n"
    sock.request_done()  # nothing held: nothing sent
    assert len(conn.sent) == 3
    # A file sent by the kernel (gunicorn's sendfile) goes after the head, not before it.
    sock.hold_head()
    sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    sock.sendfile(io.BytesIO(b"static bytes"))
    assert conn.sent[-2:] == [b"HTTP/1.1 200 OK\r\n\r\n", b"static bytes"]
    # An informational head goes at once; a failed response's held head is dropped.
    sock.hold_head()
    sock.sendall(b"HTTP/1.1 103 Early Hints\r\n\r\n")
    assert conn.sent[-1] == b"HTTP/1.1 103 Early Hints\r\n\r\n"
    sock.sendall(b"HTTP/1.1 200 OK\r\n\r\n")
    sock.drop_head()
    sock.request_done()
    assert conn.sent[-1] == b"HTTP/1.1 103 Early Hints\r\n\r\n"


def test_a_stopping_worker_ends_kept_alive_connections_waiting_between_requests(gunicorn):
    """A client's idle kept-alive connection (the platform keeps them) held a graceful stop
    (SIGTERM: a deploy) for all of graceful_timeout, 30 s, and the worker's running jobs were
    not handed back before a platform that kills 30 s after SIGTERM did; so did a connection
    that had sent nothing yet, for up to REQUEST_READ_TIMEOUT."""
    server = gunicorn(REQUEST_READ_TIMEOUT=60)
    address = urlsplit(server.url)
    conn = http.client.HTTPConnection(address.hostname, address.port, timeout=5)
    conn.request("GET", "/healthz")
    assert conn.getresponse().read()
    silent = socket.create_connection((address.hostname, address.port), timeout=25)
    time.sleep(0.3)  # accepted, its first read waiting
    server.process.send_signal(signal.SIGTERM)
    assert server.process.wait(20) == 0
    assert conn.sock.recv(1) == b""  # ended by the server, cleanly
    assert silent.recv(1) == b""
    conn.close()
    silent.close()
    log = server.log()
    assert "Worker graceful timeout" not in log
    assert " ERROR " not in log  # ended as a client's close, not as a socket error
