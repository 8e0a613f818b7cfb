"""Console page render times with a full store: 10,000 call records and 100,000 delivery-log rows.

Starts the Procfile's web command (1 worker, CONSOLE_PASSWORD set, job runner off) on a fresh
SQLite file, seeds the tables directly with SQL (the log rows spread over the last
``--spread`` seconds, so the "Now" page's 5-minute window holds its share), then times each
page with sequential GETs over loopback (HTTP Basic auth): median and p99 per page.
"""

import argparse
import json
import random
import sqlite3
import time
import uuid

import requests
from _server import (
    add_common_options,
    describe_source,
    gunicorn,
    median,
    percentile,
    server_env,
    source_tree,
    write_results,
)

PASSWORD = "bench-console"
PAGES = ("/console/", "/console/now/live", "/console/calls", "/console/calls/{call}",
         "/console/messages", "/console/jobs", "/console/deliveries")
LINES = ["Hi, I'd like to book a cleaning.", "Where is order 4521?", "What are your hours?",
         "Can I move my appointment to Friday?", "Thanks, bye."]


def seed(path, calls, log_rows, spread, seed_value=7):
    """Fill the store the way months of traffic would: call records, the delivery log (voice
    turns with timings, texts with their reply outbox rows, call ends, a few failures), jobs."""
    rnd = random.Random(seed_value)
    now = time.time()
    db = sqlite3.connect(path)
    transcript = json.dumps([{"role": r, "content": c} for r, c in
                             zip(["agent", "user"] * 3, ["Hello", *LINES], strict=True)])
    db.executemany(
        "INSERT INTO call_records (call_id, agent_id, from_number, to_number, direction, status,"
        " started_at, ended_at, duration_seconds, disconnection_reason, transcript, summary,"
        " sentiment, successful, delivery_id, created_at) VALUES"
        " (?, 'agt_demo', '+15559876543', '+15551234567', 'inbound', 'completed',"
        " '2026-12-01T10:00:00Z', '2026-12-01T10:03:00Z', 180, 'user_hangup', ?,"
        " 'Caller asked about an order.', 'Neutral', 1, ?, ?)",
        [(f"call_{n:06d}", transcript, f"whd_end_{n}", now - spread * n / calls)
         for n in range(calls)])
    log, outbox, jobs = [], [], []
    for n in range(log_rows):
        at = now - spread * rnd.random()
        kind = rnd.random()
        delivery = f"whd_{n:07d}"
        call = f"call_{rnd.randrange(calls):06d}"
        if kind < 0.6:
            first = rnd.uniform(0.5, 30)
            outcome = "deadline" if rnd.random() < 0.002 else "answered"
            log.append((uuid.uuid4().hex, delivery, "agent.message", "voice", "agt_demo", call,
                        None, outcome, 200, rnd.choice(LINES), "Let me check that for you.",
                        at, first, first + rnd.uniform(50, 2500)))
        elif kind < 0.65:
            log.append((uuid.uuid4().hex, delivery, "agent.call_ended", "voice", "agt_demo",
                        call, None, "accepted", 200, None, None, at, None, None))
        else:
            status = 400 if rnd.random() < 0.001 else 200
            log.append((uuid.uuid4().hex, delivery, "agent.message", "sms", "agt_demo", None,
                        f"conv_{rnd.randrange(5000)}", "accepted" if status == 200 else "400",
                        status, rnd.choice(LINES), None, at, None, None))
            outbox.append((delivery, "sent", "+15559876543", "We're open 9 to 5.", f"msg_{n}",
                           None, at, at + 1))
            state = "dead" if rnd.random() < 0.01 else "done"
            jobs.append((delivery, "text_message", "{}", state, 1 if state == "done" else 5,
                         at, None if state == "done" else "HTTP 400: to_number is invalid",
                         at, at))
    for n in range(50):  # turns being answered right now
        log.append((uuid.uuid4().hex, f"whd_live_{n}", "agent.message", "voice", "agt_demo",
                    f"call_live_{n}", None, "in-flight", 200, "Are you there?", None,
                    now - rnd.uniform(0, 5), None, None))
    db.executemany(f"INSERT INTO delivery_log VALUES ({', '.join('?' * 14)})", log)
    db.executemany(
        "INSERT INTO outbox (delivery_id, status, to_number, body, message_id, error,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?)", outbox)
    db.executemany(
        "INSERT INTO jobs (delivery_id, kind, payload, status, attempts, run_at, last_error,"
        " created_at, updated_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)", jobs)
    db.commit()
    db.execute("ANALYZE")
    db.close()
    return len(log), len(outbox), len(jobs)


def time_pages(url, requests_per_page, warmup):
    """Sequential GETs of every page; per page the sorted latencies in ms."""
    session = requests.Session()
    session.auth = ("ops", PASSWORD)
    results = {}
    for page in PAGES:
        target = url + page.format(call="call_000010")
        for _ in range(warmup):
            session.get(target, timeout=30).raise_for_status()
        times = []
        for _ in range(requests_per_page):
            started = time.perf_counter()
            response = session.get(target, timeout=30)
            times.append((time.perf_counter() - started) * 1000)
            response.raise_for_status()
        results[page] = sorted(times)
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--calls", type=int, default=10_000)
    parser.add_argument("--log-rows", type=int, default=100_000)
    parser.add_argument("--spread", type=float, default=3600.0,
                        help="seconds back over which the log rows are spread")
    parser.add_argument("--requests", type=int, default=50, help="timed GETs per page")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--runs", type=int, default=3, help="fresh server and store each")
    add_common_options(parser)
    args = parser.parse_args()

    rows, per_page = [], {page: [] for page in PAGES}
    with source_tree(args.rev) as cwd:
        source = describe_source(args.rev)
        for run in range(args.runs):
            env = server_env(args, CONSOLE_PASSWORD=PASSWORD, JOB_RUNNER="off",
                             AGENTPHONE_API_KEY="")
            with gunicorn(1, env, cwd=cwd) as server:
                seeded = seed(server.database_url.removeprefix("sqlite:///"), args.calls,
                              args.log_rows, args.spread)
                timings = time_pages(f"http://127.0.0.1:{server.port}", args.requests,
                                     args.warmup)
            for page, times in timings.items():
                p50, p99 = median(times), percentile(times, 99)
                per_page[page].append((p50, p99))
                rows.append({"run": run + 1, "page": page, "p50_ms": p50, "p99_ms": p99})
            print(f"run {run + 1}: seeded {seeded[0]} log rows, {seeded[1]} outbox rows, "
                  f"{seeded[2]} jobs, {args.calls} call records", flush=True)
    summary = {}
    print(f"\nsource {source}; {args.requests} GETs per page per run, {args.runs} runs "
          "(median of the runs' p50 / p99)")
    print(f"{'page':<26} {'p50 ms':>8} {'p99 ms':>8}")
    for page, figures in per_page.items():
        p50 = median([f[0] for f in figures])
        p99 = median([f[1] for f in figures])
        summary[page] = {"p50_ms": p50, "p99_ms": p99,
                         "p99_range": [min(f[1] for f in figures), max(f[1] for f in figures)]}
        print(f"{page:<26} {p50:8.1f} {p99:8.1f}")
    write_results(args, source, rows, summary)


if __name__ == "__main__":
    main()
