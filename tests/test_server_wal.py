"""SQLite's WAL stays bounded while two real gunicorn gevent workers write without a pause:
a checkpoint that only copies (PASSIVE) never catches up with writes from another process,
and a WAL that is never started over grows by every commit until the disk is full."""

import http.client
import os
import threading
import time
from urllib.parse import urlsplit

import pytest

from app.simulator import payload, signed_request
from tests.conftest import SECRET

pytestmark = pytest.mark.slow

TEXTS = 4000
CONNECTIONS = 16
SECONDS = 30  # the most the load may take
WAL_BOUND = 32 * 1024 * 1024  # unchecked, ~3,000 acks of 10-12 pages each fill 140 MiB


def send(url, requests, statuses):
    """Send ``requests`` over one kept-alive connection, recording each status."""
    parts = urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    stop = time.monotonic() + SECONDS
    try:
        for raw, headers in requests:
            if time.monotonic() > stop:
                break
            conn.request("POST", "/webhook", raw, headers)
            response = conn.getresponse()
            response.read()
            statuses.append(response.status)
    finally:
        conn.close()


def test_the_wal_is_started_over_while_two_workers_write(gunicorn, tmp_path):
    server = gunicorn(workers=2, LOG_LEVEL="WARNING", GUNICORN_ACCESS_LOG="", JOB_RUNNER="off")
    wal = tmp_path / "events.db-wal"
    requests = [signed_request(SECRET, payload("sms", f"text {i}", messageId=f"msg_{i}"))
                for i in range(TEXTS)]
    statuses, largest, sent = [], [0], threading.Event()

    def watch():
        while not sent.wait(0.01):
            if wal.exists():
                largest[0] = max(largest[0], os.path.getsize(wal))

    watcher = threading.Thread(target=watch)
    watcher.start()
    senders = [threading.Thread(target=send, args=(server.url, requests[i::CONNECTIONS],
                                                   statuses)) for i in range(CONNECTIONS)]
    try:
        for sender in senders:
            sender.start()
        for sender in senders:
            sender.join()
    finally:
        sent.set()
        watcher.join()
    assert len(statuses) >= TEXTS // 2
    assert set(statuses) == {200}
    assert 0 < largest[0] <= WAL_BOUND
