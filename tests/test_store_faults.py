"""The SQLite store recovers by itself from storage faults: a full disk and a read-only
database file, each fixed while the process runs; with threads, and under gevent, where
operations run on the event loop's connection first."""

import contextlib
import json
import queue
import sqlite3
import subprocess
import sys
import threading
import time

import pytest

from app.store import SignedBytes, StoreUnavailable
from app.store.sqlite import LOCK_WAIT_SECONDS, RESTART_PAGES, WAL_PAGES, SQLiteStore
from tests.servers import ROOT

# A private mount namespace for the tmpfs; file modes that bind root for the read-only file.
CONFINE = {"full": ["unshare", "--mount"],
           "readonly": ["setpriv", "--bounding-set=-dac_override,-dac_read_search"], "wal": [],
           "bulk": []}
RUNTIMES = pytest.mark.parametrize("runtime", ["threads", "gevent"])


def run_fault(mode, folder, runtime="threads"):
    result = subprocess.run([*CONFINE[mode], sys.executable, "-m", "tests.sqlite_faults", mode,
                             str(folder), *(["gevent"] if runtime == "gevent" else [])],
                            cwd=ROOT, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stderr
    return json.loads(result.stdout.splitlines()[-1])


@RUNTIMES
def test_sqlite_store_writes_again_as_soon_as_the_full_disk_has_space(tmp_path, runtime):
    counts = run_fault("full", tmp_path, runtime)
    assert counts["before"] == 0
    assert counts["while_full"] == 20  # the disk really was full
    assert counts["after"] == 0


def test_sqlite_store_writes_again_as_soon_as_the_files_are_writable(tmp_path):
    counts = run_fault("readonly", tmp_path)
    assert counts["while_readonly"] == 3
    assert counts["after"] == 0


@RUNTIMES
def test_sqlite_checkpoints_keep_the_wal_small(tmp_path, runtime):
    counts = run_fault("wal", tmp_path, runtime)
    assert counts["failed"] == 0
    assert counts["rows"] == 3000
    # 3,000 commits of a page or more each: without checkpoints the WAL would hold them all.
    pages = RESTART_PAGES if runtime == "gevent" else WAL_PAGES
    assert counts["wal_bytes"] <= 2 * pages * 4096


def test_bulk_operations_never_hold_the_event_loop(tmp_path):
    # The delivery log's flush and the prune: many rows, run by the writer thread.
    assert run_fault("bulk", tmp_path, "gevent") == {
        "quick_on_loop": True, "bulk_on_loop": False, "quick_again_on_loop": True}


def test_the_checkpoint_thread_outlives_a_failed_checkpoint(tmp_path, caplog):
    store = SQLiteStore(f"sqlite:///{tmp_path}/events.db")
    done, outcomes = threading.Event(), iter([RuntimeError("unexpected"), True])

    def checkpoint():
        outcome = next(outcomes)
        store._checkpointing = True  # as a checkpoint that reached its RESTART
        if isinstance(outcome, Exception):
            raise outcome
        done.set()
        return outcome

    store._checkpoint = checkpoint
    requests = queue.SimpleQueue()
    threading.Thread(target=store._checkpoint_forever, args=(requests,), daemon=True).start()
    requests.put(None)
    requests.put(None)
    assert done.wait(10)  # the second checkpoint ran
    assert "checkpoint failed" in caplog.text
    deadline = time.monotonic() + 10
    while store._checkpointing and time.monotonic() < deadline:  # the thread's finally runs
        time.sleep(0.01)
    assert not store._checkpointing and not store._checkpoint_due
    store.close()


def test_a_thread_cancelled_just_after_begin_leaves_no_transaction_open(tmp_path, monkeypatch):
    """A job's thread cancelled at its time limit (an exception raised in it) between BEGIN
    and the block that rolls back returned its connection to the pool holding the lock."""
    from app.runtime import Cancelled
    from app.store import sqlite as sqlite_store

    def cancelled_after_begin(cur):
        cur.execute("BEGIN IMMEDIATE")
        raise Cancelled
        yield cur  # a generator, as the real one

    path = tmp_path / "events.db"
    store = SQLiteStore(f"sqlite:///{path}")
    store.migrate()
    assert store.claim_with_job("whd_1", "agent.message", "text_message", "{}")
    monkeypatch.setattr(sqlite_store, "_transaction", cancelled_after_begin)
    with pytest.raises(Cancelled):
        store.claim_with_job("whd_2", "agent.message", "text_message", "{}")
    other = sqlite3.connect(path, timeout=0)
    try:
        other.execute("BEGIN IMMEDIATE")  # "database is locked" while the transaction is open
        other.execute("ROLLBACK")
    finally:
        other.close()
        store.close()


# Another process that holds the write lock 10 ms at a time, lets it go for 0.2 ms, and takes
# it back the moment it is free, as a worker's writer thread committing group after group at
# saturation does.
HOG = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=0)
conn.execute("CREATE TABLE IF NOT EXISTS hog (n INTEGER)")
print("ready", flush=True)
deadline = time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        conn.execute("BEGIN IMMEDIATE")
    except sqlite3.OperationalError:
        continue
    conn.execute("INSERT INTO hog VALUES (1)")
    time.sleep(0.01)
    conn.execute("COMMIT")
    time.sleep(0.0002)
"""


CLAIMS = {
    # A text's claim and job: one transaction, as every ack takes.
    "transaction": lambda store, i: store.claim_with_job(
        f"hogged-{i}", "agent.message", "text_message", "{}",
        SignedBytes(f"digest-{i}", time.time() + 600)),
    # One statement on its own, as the job runner's updates are.
    "statement": lambda store, i: store.claim_voice(f"hogged-{i}", "agent.message", "test"),
}


def hog_rows(path):
    with contextlib.closing(sqlite3.connect(path)) as conn:
        return conn.execute("SELECT count(*) FROM hog").fetchone()[0]


@pytest.mark.parametrize("kind", CLAIMS)
def test_a_write_gets_the_lock_from_a_process_that_takes_it_back_at_once(tmp_path, kind):
    # SQLite's own wait tries every 100 ms at most and finds the lock free about one try in
    # fifty: claims gave up after the whole budget.
    store = SQLiteStore(f"sqlite:///{tmp_path}/events.db")
    store.migrate()
    hog = subprocess.Popen([sys.executable, "-c", HOG, str(tmp_path / "events.db"), "60"],
                           stdout=subprocess.PIPE, text=True)
    failed, slowest = 0, 0.0
    try:
        assert hog.stdout.readline().strip() == "ready"
        deadline = time.monotonic() + 10
        while hog_rows(tmp_path / "events.db") < 3:  # the other process takes turns already
            assert time.monotonic() < deadline, "the other process never wrote"
            time.sleep(0.01)
        for i in range(8):
            started = time.monotonic()
            try:
                CLAIMS[kind](store, i)
            except StoreUnavailable:
                failed += 1
            slowest = max(slowest, time.monotonic() - started)
        assert hog.poll() is None  # and went on writing throughout
    finally:
        hog.kill()
        hog.wait()
        hog.stdout.close()
        store.close()
    assert failed == 0
    assert slowest < LOCK_WAIT_SECONDS
