"""The event-loop watch in a real gunicorn gevent worker: a block is logged with its stack and
counted."""

import re

import pytest

from app.loopwatch import blocked_count, start
from app.simulator import payload, signed_request
from tests.conftest import SECRET
from tests.servers import post_stream

pytestmark = pytest.mark.slow


def test_cpu_bound_agent_is_reported_with_its_stack(gunicorn):
    server = gunicorn(AGENT="tests.agents:busy_agent", TEST_BUSY_SECONDS=0.6,
                      LOOP_BLOCK_THRESHOLD=0.1)
    for expected in (1, 2):
        raw, headers = signed_request(SECRET, payload("voice", callId=f"call_{expected}"))
        response, lines = post_stream(server.webhook, raw, headers)
        assert response.status_code == 200
        assert lines[-1][1]["text"].startswith("Counted to")
        server.wait_for_log(f"block #{expected} in this process")
    report = server.log()[server.log().index("block #1 in this process"):]
    blocked = [float(s) for s in re.findall(r"event loop blocked for at least ([\d.]+)s",
                                             server.log())]
    assert len(blocked) == 2  # one line per block, however long
    assert all(0.1 <= seconds < 1.5 for seconds in blocked)
    assert "in spin_without_yielding" in report  # the stack that blocked


def test_quiet_worker_reports_nothing(gunicorn):
    server = gunicorn(LOOP_BLOCK_THRESHOLD=0.1)
    raw, headers = signed_request(SECRET, payload("voice"))
    response, _ = post_stream(server.webhook, raw, headers)
    assert response.status_code == 200
    assert "event loop blocked" not in server.log()


def test_threshold_zero_turns_the_watch_off():
    assert start(0) is False
    assert blocked_count() == 0
