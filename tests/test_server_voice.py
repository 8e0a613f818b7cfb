"""Voice turns through the real gunicorn gevent worker: timing, deadline, disconnect, retries."""

import contextlib
import json
import os
import re
import signal
import socket
import sqlite3
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from app.agent.base import Agent
from app.simulator import payload, signed_request
from app.voice.claims import STALE_SECONDS
from app.voice.streamer import LATE_TEXT
from tests.conftest import SECRET
from tests.servers import post_stream

pytest_plugins = ["tests.postgres"]  # pg_server, pg_url
pytestmark = pytest.mark.slow


@pytest.fixture
def voice_server(gunicorn, effects_agent):
    def start(workers=1, **env):
        return gunicorn(workers=workers, **effects_agent.env, **env)

    return start


@pytest.fixture
def effects(effects_agent):
    return effects_agent.effects


def check_stream(lines):
    """Interim first, interim all along, exactly one final line, and it is the last."""
    objects = [obj for _, obj in lines]
    assert objects[0]["interim"] is True
    assert [("interim" in obj) for obj in objects].count(False) == 1
    assert "interim" not in objects[-1]
    return objects


@contextlib.contextmanager
def turn_after_interim(server, raw, headers):
    """The caller's socket of a voice turn sent by hand, once its interim line has arrived."""
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=5) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Length: {len(raw)}\r\n"
                     f"{head}\r\n".encode() + raw)
        received = b""
        while b'"interim":true' not in received:
            chunk = sock.recv(4096)
            assert chunk, received
            received += chunk
        yield sock


def test_first_line_arrives_while_the_tool_runs(voice_server, effects):
    server = voice_server(TEST_TOOL_SECONDS=1.5)
    raw, headers = signed_request(SECRET, payload("voice", "where is it"))
    response, lines = post_stream(server.webhook, raw, headers)
    assert response.status_code == 200
    assert response.headers["Content-Type"] == "application/x-ndjson"
    objects = check_stream(lines)
    assert objects == [{"text": "Checking.", "interim": True},
                       {"text": "Still here.", "interim": True},
                       {"text": "Tool said done for where is it."}]
    first_at, final_at = lines[0][0], lines[-1][0]
    assert first_at < 1.5 <= final_at  # the caller heard something before the tool returned
    assert effects() == [headers["X-Webhook-ID"]]


def test_hung_tool_gets_the_fallback_before_the_platform_timeout(voice_server, effects):
    server = voice_server(TEST_TOOL_SECONDS=60, VOICE_TIMEOUT=5)
    raw, headers = signed_request(SECRET, payload("voice"))
    _, lines = post_stream(server.webhook, raw, headers)
    objects = check_stream(lines)
    assert objects[-1] == {"text": LATE_TEXT}
    assert 3.9 <= lines[-1][0] < 5
    server.wait_for_log(f"test tool cancelled for {headers['X-Webhook-ID']}")
    assert effects() == []


@pytest.mark.parametrize("pipelined", [b"", b"GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n"],
                         ids=["alone", "after-sending-a-pipelined-request"])
def test_caller_hanging_up_cancels_the_work(voice_server, effects, pipelined):
    server = voice_server(TEST_TOOL_SECONDS=3)
    raw, headers = signed_request(SECRET, payload("voice"))
    with turn_after_interim(server, raw, headers) as sock:
        if pipelined:  # while the tool runs: bytes the server leaves for after the stream
            time.sleep(0.3)
            sock.sendall(pipelined)
            time.sleep(0.5)
    server.wait_for_log(f"voice turn {headers['X-Webhook-ID']}: caller disconnected")
    server.wait_for_log(f"test tool cancelled for {headers['X-Webhook-ID']}")
    time.sleep(3.5)
    assert effects() == []
    assert "test tool finished" not in server.log()


def test_retry_while_running_waits_for_the_first_attempts_answer(voice_server, effects):
    # The tool outlasts the staleness limit: only the live attempt's heartbeat keeps the
    # retry waiting instead of running the turn a second time.
    tool_seconds = STALE_SECONDS + 2
    server = voice_server(workers=2, TEST_TOOL_SECONDS=tool_seconds)
    raw, headers = signed_request(SECRET, payload("voice", "hi"))
    with ThreadPoolExecutor(2) as pool:
        first = pool.submit(post_stream, server.webhook, raw, headers)
        time.sleep(0.3)
        retry = pool.submit(post_stream, server.webhook, raw, headers)
        first_lines, retry_lines = first.result()[1], retry.result()[1]
    assert check_stream(first_lines)[-1] == check_stream(retry_lines)[-1]
    assert first_lines[-1][1] == {"text": "Tool said done for hi."}
    assert retry_lines[0][1]["interim"] is True
    # Finished now: a later retry gets the interim line, then the stored final line at once.
    _, replay = post_stream(server.webhook, raw, headers)
    assert [obj for _, obj in replay] == [{"text": "Checking.", "interim": True},
                                          first_lines[-1][1]]
    assert replay[-1][0] < 1.0
    assert effects() == [headers["X-Webhook-ID"]]


def test_fifty_concurrent_copies_of_one_voice_turn_run_once(voice_server, effects):
    server = voice_server(workers=2, TEST_TOOL_SECONDS=0.5)
    raw, headers = signed_request(SECRET, payload("voice", "once"))
    with ThreadPoolExecutor(50) as pool:
        results = list(pool.map(lambda _: post_stream(server.webhook, raw, headers), range(50)))
    # On a busy machine a copy may arrive after the answer was stored: it gets that alone.
    finals = {json.dumps(lines[0][1] if len(lines) == 1 else check_stream(lines)[-1])
              for _, lines in results}
    assert finals == {json.dumps({"text": "Tool said done for once."})}
    assert effects() == [headers["X-Webhook-ID"]]


def test_long_silence_gets_filler_lines_while_the_tool_runs(voice_server, effects):
    server = voice_server(TEST_TOOL_SECONDS=2.5, VOICE_FILLER_AFTER=1)
    raw, headers = signed_request(SECRET, payload("voice", "slow"))
    response, lines = post_stream(server.webhook, raw, headers)
    assert response.headers["Cache-Control"] == "no-cache, no-transform"
    assert response.headers["X-Accel-Buffering"] == "no"
    assert check_stream(lines) == [{"text": "Checking.", "interim": True},
                                   {"text": "Still here.", "interim": True},
                                   *({"text": text, "interim": True} for text in Agent.fillers),
                                   {"text": "Tool said done for slow."}]
    first_filler_at, final_at = lines[2][0], lines[-1][0]
    assert 0.9 <= first_filler_at < 2.5 <= final_at  # while the tool was still running
    assert effects() == [headers["X-Webhook-ID"]]


def test_filler_lines_reach_an_http_1_0_client(voice_server):
    server = voice_server(TEST_TOOL_SECONDS=1.5, VOICE_FILLER_AFTER=1)
    raw, headers = signed_request(SECRET, payload("voice", "old"))
    port = int(server.url.rsplit(":", 1)[1])
    with socket.create_connection(("127.0.0.1", port), timeout=10) as sock:
        head = "".join(f"{k}: {v}\r\n" for k, v in headers.items())
        sock.sendall(f"POST /webhook HTTP/1.0\r\nContent-Length: {len(raw)}\r\n{head}\r\n"
                     .encode() + raw)
        received = b""
        while chunk := sock.recv(4096):
            received += chunk
    head, _, body = received.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.0 200") and b"chunked" not in head.lower()
    assert [json.loads(line)["text"] for line in body.splitlines()] == [
        "Checking.", "Still here.", Agent.fillers[0], "Tool said done for old."]


def test_filler_after_zero_turns_fillers_off(voice_server):
    server = voice_server(TEST_TOOL_SECONDS=1.5, VOICE_FILLER_AFTER=0)
    raw, headers = signed_request(SECRET, payload("voice", "quiet"))
    _, lines = post_stream(server.webhook, raw, headers)
    assert [obj["text"] for obj in check_stream(lines)] == [
        "Checking.", "Still here.", "Tool said done for quiet."]


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "events.db")
    return request.getfixturevalue("pg_url")


def query(database_url, sql, params):
    if database_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(database_url.removeprefix("sqlite:///"))) as conn:
            return conn.execute(sql.replace("%s", "?"), params).fetchall()
    with psycopg.connect(database_url) as conn:
        return conn.execute(sql, params).fetchall()


def test_retry_after_the_worker_died_mid_turn_runs_the_turn_again(voice_server, effects,
                                                                  database_url):
    server = voice_server(workers=2, TEST_TOOL_SECONDS=1.5, DATABASE_URL=database_url)
    raw, headers = signed_request(SECRET, payload("voice", "hi"))
    delivery = headers["X-Webhook-ID"]
    with turn_after_interim(server, raw, headers) as sock:
        server.wait_for_log(f"test tool started for {delivery}")
        [pid] = re.findall(rf"(\d+) INFO tests.agents: test tool started for {delivery}",
                           server.log())
        os.kill(int(pid), signal.SIGKILL)  # mid-turn, after the interim line
        killed = time.monotonic()
        rest = b"".join(iter(lambda: sock.recv(4096), b""))  # until the line goes dead
        assert b"Tool said" not in rest
    _, lines = post_stream(server.webhook, raw, headers)
    answered = time.monotonic() - killed
    assert check_stream(lines)[-1] == {"text": "Tool said done for hi."}
    assert answered < STALE_SECONDS + 1.5 + 5  # stale, the tool again, and some slack
    assert effects() == [delivery]
    assert server.log().count(f"test tool started for {delivery}") == 2
    stored = query(database_url, "SELECT reply FROM voice_replies WHERE delivery_id = %s",
                   (delivery,))
    assert [json.loads(reply) for reply, in stored] == [{"text": "Tool said done for hi."}]
    assert query(database_url, "SELECT attempt FROM deliveries WHERE id = %s",
                 (delivery,)) == [(1,)]
    # A later retry hears the interim line, then the one stored answer again.
    _, replay = post_stream(server.webhook, raw, headers)
    assert [obj for _, obj in replay] == [{"text": "Checking.", "interim": True},
                                          {"text": "Tool said done for hi."}]
