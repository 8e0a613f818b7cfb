"""The database locked by another process, through real gunicorn gevent workers: held calls
keep streaming, new calls hear their interim line at once and a final line before the
deadline, texts are stored or refused with 503 within 3 s, and nothing acknowledged is lost."""

import contextlib
import sqlite3
import subprocess
import sys
import time
import uuid
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest
import requests

from app.simulator import payload, signed_request
from app.voice.streamer import LATE_TEXT, deadline_for
from tests.conftest import SECRET
from tests.servers import post_stream

pytest_plugins = ["tests.postgres"]  # pg_url
pytestmark = pytest.mark.slow

TEXT_BOUND = 3.0  # seconds within which a text is stored (200) or refused (503)

HOLD_SQLITE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""

HOLD_POSTGRES = """
import sys, time, psycopg
with psycopg.connect(sys.argv[1]) as conn, conn.transaction():
    conn.execute("LOCK TABLE deliveries IN ACCESS EXCLUSIVE MODE")
    print("locked", flush=True)
    time.sleep(float(sys.argv[2]))
"""


@contextlib.contextmanager
def held_lock(script, target, seconds):
    """Another process holds the lock for ``seconds``, from when this block starts."""
    holder = subprocess.Popen([sys.executable, "-c", script, target, str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        yield time.monotonic() + seconds
    finally:
        holder.wait(seconds + 10)
        holder.stdout.close()


def voice_turn(server):
    # Each turn its own call: the same signed bytes twice would be a replay.
    raw, headers = signed_request(SECRET, payload("voice", "where is it",
                                                  callId=f"call_{uuid.uuid4().hex}"))
    response, lines = post_stream(server.webhook, raw, headers, timeout=30)
    assert response.status_code == 200
    return headers["X-Webhook-ID"], lines


def text(server, body="hello"):
    raw, headers = signed_request(SECRET, payload("sms", body,
                                                  messageId=f"msg_{uuid.uuid4().hex}"))
    started = time.monotonic()
    response = requests.post(server.webhook, data=raw, headers=headers, timeout=30)
    return headers["X-Webhook-ID"], response.status_code, time.monotonic() - started, raw, headers


def run_under_lock(server, lock, seconds):
    """Two calls held in their tool when the lock is taken; during it, two new calls and a
    text every 0.5 s. Returns (held, new, texts) once everything has finished."""
    with ThreadPoolExecutor(16) as pool:
        held = [pool.submit(voice_turn, server) for _ in range(2)]
        time.sleep(0.5)  # claimed, and inside the tool
        with lock(seconds) as released:
            new = [pool.submit(voice_turn, server) for _ in range(2)]
            texts = []
            while time.monotonic() < released - 0.5:
                texts.append(pool.submit(text, server, f"during the lock {len(texts)}"))
                time.sleep(0.5)
        return ([f.result() for f in held], [f.result() for f in new],
                [f.result() for f in texts])


def check_texts(server, texts, stored_ids):
    """Each text answered in time with 200 or 503; every 200 stored; a 503 retried later is
    taken."""
    assert len(texts) >= 4
    for _, status, seconds, _, _ in texts:
        assert status in (200, 503)
        assert seconds <= TEXT_BOUND
    acked = {delivery for delivery, status, *_ in texts if status == 200}
    assert acked <= stored_ids()
    for _, status, _, raw, headers in texts:
        if status == 503:
            assert requests.post(server.webhook, data=raw, headers=headers,
                                 timeout=10).status_code == 200
    assert {delivery for delivery, *_ in texts} <= stored_ids()


def objects(lines):
    return [obj for _, obj in lines]


def check_answered_after_the_lock(effects, held, new, released_after, voice_timeout):
    # Held calls finished their 1 s tool on time although the store was locked.
    for _, lines in held:
        assert objects(lines)[-1] == {"text": "Tool said done for where is it."}
        assert lines[-1][0] < 2.5
    # New calls: interim line at once, then the agent's answer once the claim went through.
    for _, lines in new:
        assert objects(lines)[0] == {"text": "Checking.", "interim": True}
        assert lines[0][0] < 1.0
        assert objects(lines)[-1] == {"text": "Tool said done for where is it."}
        assert released_after - 0.5 < lines[-1][0] < deadline_for(voice_timeout)
    ran = effects()
    assert sorted(ran) == sorted(delivery for delivery, _ in held + new)  # once each


def sqlite_lock(server):
    return lambda seconds: held_lock(HOLD_SQLITE, str(server.db_path), seconds)


def sqlite_ids(path):
    def ids():
        with contextlib.closing(sqlite3.connect(path)) as conn:
            return {row[0] for row in conn.execute("SELECT id FROM deliveries")}
    return ids


def test_sqlite_locked_by_another_process(gunicorn, effects_agent, tmp_path):
    server = gunicorn(workers=2, **effects_agent.env, TEST_TOOL_SECONDS=1, VOICE_TIMEOUT=10,
                      JOB_RUNNER="off")
    server.db_path = tmp_path / "events.db"
    held, new, texts = run_under_lock(server, sqlite_lock(server), 4)
    check_answered_after_the_lock(effects_agent.effects, held, new, 4 - 0.5, 10)
    check_texts(server, texts, sqlite_ids(server.db_path))


def test_sqlite_locked_past_the_deadline(gunicorn, effects_agent, tmp_path):
    server = gunicorn(workers=2, **effects_agent.env, TEST_TOOL_SECONDS=6, VOICE_TIMEOUT=5,
                      JOB_RUNNER="off")
    server.db_path = tmp_path / "events.db"
    deadline = deadline_for(5)
    held, new, texts = run_under_lock(server, sqlite_lock(server), 6)
    # The deadline timer of the held calls fired on time while the store was locked.
    for _, lines in held:
        assert objects(lines)[-1] == {"text": LATE_TEXT}
        assert deadline - 0.2 < lines[-1][0] < deadline + 1.0
    # New calls could not be claimed: the caller hears the fallback in time, the agent never
    # ran for them.
    for _, lines in new:
        assert objects(lines)[0] == {"text": "Checking.", "interim": True}
        assert lines[0][0] < 1.0
        assert objects(lines)[-1] == {"text": LATE_TEXT}
        assert lines[-1][0] < deadline + 0.5
    assert effects_agent.effects() == []
    check_texts(server, texts, sqlite_ids(server.db_path))


def test_postgres_table_locked_by_another_session(gunicorn, effects_agent, pg_url):
    # A claim waits up to the pool's 3 s plus the 1.5 s lock_timeout: a longer deadline.
    server = gunicorn(workers=2, **effects_agent.env, TEST_TOOL_SECONDS=1, VOICE_TIMEOUT=12,
                      JOB_RUNNER="off", DATABASE_URL=pg_url)

    def lock(seconds):
        return held_lock(HOLD_POSTGRES, pg_url, seconds)

    def ids():
        with psycopg.connect(pg_url) as conn:
            return {row[0] for row in conn.execute("SELECT id FROM deliveries")}

    held, new, texts = run_under_lock(server, lock, 4)
    check_answered_after_the_lock(effects_agent.effects, held, new, 4 - 0.5, 12)
    check_texts(server, texts, ids)
