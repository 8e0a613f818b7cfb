"""Where a gevent worker should run its SQLite operations: measured side by side in one
process (monkey-patched like a gunicorn gevent worker) on a fresh file.

  inline     in the event loop's thread (the old way: every lock wait, commit and checkpoint
             stops all greenlets);
  pool       each transaction in one of a small pool of native threads, one transaction at a
             time per process;
  store      app.store.sqlite as it is: one writer thread per process commits the queued
             transactions as a group (one transaction, a savepoint per operation).

``--greenlets`` greenlets each make text-delivery claims (claim_with_job: a delivery row and
a job row) for ``--seconds``; a ticker greenlet measures how late the event loop runs it
(its lateness is what every held call feels). With ``--contender`` a second process makes the
same claims on the same file (the other gunicorn worker).

    .venv/bin/python bench/sqlite_paths.py --runs 3
"""

import argparse
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from gevent import monkey

monkey.patch_all()

import gevent  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from _server import median, percentile  # noqa: E402

from app.store import sqlite as sqlite_store  # noqa: E402
from app.store.sqlite import SQLiteStore  # noqa: E402

CONTENDER = """
import sys, time
sys.path.insert(0, sys.argv[3])
from app.store.sqlite import SQLiteStore
store = SQLiteStore("sqlite:///" + sys.argv[1])
until, i = time.monotonic() + float(sys.argv[2]), 0
while time.monotonic() < until:
    try:
        store.claim_with_job(f"contender_{i}", "message", "text_message", "{}")
    except Exception:
        pass
    i += 1
"""


class PoolClaims:
    """Each claim transaction in one of the store's pool threads, one transaction at a time
    per process (a native lock), the way before the group writer."""

    def __init__(self, store):
        self.store = store

    def claim_with_job(self, delivery_id, event, kind, payload):
        def claim(cur):
            if not self.store._claim(cur, delivery_id, event):
                return False
            now = time.time()
            cur.execute("INSERT INTO jobs (delivery_id, kind, payload, run_at, created_at, "
                        "updated_at) VALUES (?, ?, ?, ?, ?, ?)",
                        (delivery_id, kind, payload, now, now, now))
            return True

        give_up = time.monotonic() + self.store.lock_wait
        ok, value = self.store._threads().apply(self.store._outcome, (claim, True, give_up))
        if not ok:
            raise value
        return value


def one_run(mode, args, run_index):
    folder = Path(tempfile.mkdtemp(prefix="agentphone-sqlite-paths-"))
    path = folder / "bench.db"
    # Before the store is made: it picks its locks by it.
    sqlite_store.gevent_active = (lambda: False) if mode == "inline" else (lambda: True)
    store = SQLiteStore(f"sqlite:///{path}")
    store.migrate()
    claimer = PoolClaims(store) if mode == "pool" else store
    contender = None
    if args.contender:
        contender = subprocess.Popen([sys.executable, "-c", CONTENDER, str(path),
                                      str(args.seconds + 1), str(ROOT)])
        time.sleep(0.5)
    latencies, errors, lateness = [], [0], []
    until = time.monotonic() + args.seconds

    def claims(g):
        i = 0
        while time.monotonic() < until:
            t0 = time.perf_counter()
            try:
                claimer.claim_with_job(f"{mode}_{run_index}_{g}_{i}", "message", "text_message",
                                       "{}")
                latencies.append(time.perf_counter() - t0)
            except Exception:
                errors[0] += 1
            i += 1
            gevent.sleep(0)  # a request's own network I/O yields between claims

    def ticker():
        while time.monotonic() < until:
            t0 = time.perf_counter()
            gevent.sleep(0.005)
            lateness.append(time.perf_counter() - t0 - 0.005)

    started = time.perf_counter()
    gevent.joinall([gevent.spawn(ticker)]
                   + [gevent.spawn(claims, g) for g in range(args.greenlets)])
    elapsed = time.perf_counter() - started
    if contender is not None:
        contender.wait(30)
    latencies.sort()
    lateness.sort()
    for suffix in ("", "-wal", "-shm"):
        (folder / f"bench.db{suffix}").unlink(missing_ok=True)
    folder.rmdir()
    return {"mode": mode, "run": run_index, "claims_per_s": len(latencies) / elapsed,
            "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
            "errors": errors[0], "loop_late_p99_ms": percentile(lateness, 99) * 1000,
            "loop_late_max_ms": lateness[-1] * 1000}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--modes", nargs="+", default=["inline", "pool", "store"],
                        choices=["inline", "pool", "store"])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--greenlets", type=int, default=64)
    parser.add_argument("--contender", action="store_true",
                        help="a second process makes claims on the same file meanwhile")
    args = parser.parse_args()
    if args.seconds > 60:
        parser.error("--seconds is bounded to 60")
    rows = []
    for run_index in range(1, args.runs + 1):
        for mode in args.modes:  # interleaved: the machine's load drifts
            row = one_run(mode, args, run_index)
            rows.append(row)
            print(f"{mode:>7} run {run_index}: {row['claims_per_s']:7.0f} claims/s, p50 "
                  f"{row['p50_ms']:6.2f} ms, p99 {row['p99_ms']:7.2f} ms, errors {row['errors']}, "
                  f"loop late p99 {row['loop_late_p99_ms']:6.2f} ms, max "
                  f"{row['loop_late_max_ms']:6.1f} ms", flush=True)
    print("\nmedian over runs:")
    for mode in args.modes:
        group = [r for r in rows if r["mode"] == mode]
        print(f"{mode:>7}: " + ", ".join(
            f"{key} {median([r[key] for r in group]):.2f}"
            for key in ("claims_per_s", "p50_ms", "p99_ms", "loop_late_p99_ms",
                        "loop_late_max_ms")))
    return 0


if __name__ == "__main__":
    os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "0")
    sys.exit(main())
