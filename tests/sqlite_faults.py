"""Storage faults for the SQLite store: ``python -m tests.sqlite_faults MODE DIR [gevent]``
prints one JSON object of counts; with ``gevent`` the process is monkey-patched first, as a
gunicorn gevent worker is, so operations take the event loop's connection.

full (in a private mount namespace, ``unshare --mount``, so the mount vanishes with the
process): a tmpfs is filled by another file, then the file is deleted.
readonly (without CAP_DAC_OVERRIDE, so that file modes bind root too): the database file is
made read-only while a worker starts and reads, then writable again.
wal: many small commits; the size of the WAL afterwards (checkpoints keep it bounded).
bulk: which thread quick operations and ``bulk`` ones (many rows) run on: the loop's or another.
"""

import sys

if sys.argv[3:] == ["gevent"]:
    from gevent import monkey

    monkey.patch_all()

import json
import os
import subprocess
import threading
import time

from app.store import StoreUnavailable
from app.store.sqlite import RESTART_PAGES, SQLiteStore, _native_thread_id


def writes(store, count, prefix):
    """How many of ``count`` delivery claims failed."""
    failed = 0
    for i in range(count):
        try:
            store.claim_voice(f"{prefix}-{i}", "agent.message", "faults")
        except StoreUnavailable:
            failed += 1
    return failed


def fill(path):
    with open(path, "wb", buffering=0) as f:
        try:
            while True:
                f.write(b"x" * 4096)
        except OSError:
            pass


def full(folder):
    # Room for the WAL as long as it may grow before it is started over (RESTART_PAGES): on a
    # busy machine the checkpoint thread can lag the writes until then, and a WAL that fills
    # the volume leaves no checkpoint the room to grow the database.
    size = 3 * RESTART_PAGES * 4096 // 2**20
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}m", "tmpfs", folder], check=True)
    store = SQLiteStore(f"sqlite:///{folder}/events.db")
    store.migrate()
    before = writes(store, 50, "before")
    fill(f"{folder}/filler")
    while_full = writes(store, 20, "full")
    subprocess.run(["rm", f"{folder}/filler"], check=True)
    return {"before": before, "while_full": while_full, "after": writes(store, 300, "after")}


def readonly(folder):
    path = f"{folder}/events.db"
    first = SQLiteStore(f"sqlite:///{path}")
    first.migrate()
    first.close()
    os.chmod(path, 0o444)
    store = SQLiteStore(f"sqlite:///{path}")  # a worker starting meanwhile
    readers = threading.Barrier(5)
    threads = [threading.Thread(target=store.run, args=(lambda cur: readers.wait(5), False))
               for _ in range(5)]  # five reads at once: five pooled connections
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    while_readonly = writes(store, 3, "readonly")
    for name in os.listdir(folder):  # the WAL files were created with the database's mode
        os.chmod(f"{folder}/{name}", 0o644)
    return {"while_readonly": while_readonly, "after": writes(store, 20, "after")}


def wal(folder):
    store = SQLiteStore(f"sqlite:///{folder}/events.db")
    store.migrate()
    failed = writes(store, 3000, "wal")
    store.run(lambda cur: None, transaction=False)  # the last checkpoint (if any) has ended
    return {"failed": failed, "wal_bytes": os.path.getsize(f"{folder}/events.db-wal"),
            "rows": store.run(lambda cur: cur.execute(
                "SELECT COUNT(*) FROM deliveries").fetchone()[0], transaction=False)}


def bulk(folder):
    store = SQLiteStore(f"sqlite:///{folder}/events.db")
    store.migrate()
    loop = _native_thread_id()

    def where(cur):
        cur.execute("SELECT 1")
        return _native_thread_id() == loop

    def quick_reaches_loop():
        # The loop's connection is opened by a pool thread after the first operations.
        until = time.monotonic() + 10
        while time.monotonic() < until:
            if store.run(where):
                return True
        return False

    first = quick_reaches_loop()
    return {"quick_on_loop": first,
            "bulk_on_loop": any(store.run(where, bulk=True) for _ in range(20)),
            "quick_again_on_loop": quick_reaches_loop()}


if __name__ == "__main__":
    modes = {"full": full, "readonly": readonly, "wal": wal, "bulk": bulk}
    print(json.dumps(modes[sys.argv[1]](sys.argv[2])))
