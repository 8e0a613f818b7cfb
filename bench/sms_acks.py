"""SMS-ack benchmark: signed SMS deliveries against 2 gunicorn gevent workers -> acks/s, latency.

Needs ``wrk`` on PATH (Debian/Ubuntu: ``apt-get install -y wrk``); without it, or with
``--client python``, a slower asyncio load generator is used instead (on 2 shared cores it is
likely to be the bottleneck, so its figures are a lower bound). This script installs nothing.

For each job-runner mode (``--job-runner on off``) and each run, a fresh server is started
with the Procfile command (2 workers, a signing secret, a fresh SQLite file or
``--database-url``). Every request is a distinct signed SMS delivery (own X-Webhook-ID, own
message text) generated with app.simulator's signer just before the run, so each ack is a real
claim + job insert, and the signatures are fresh (timestamps well within the 300 s tolerance).
Enough requests are generated for ``--max-rate`` acks/s over the run; if wrk still runs out it
starts over and the repeats are reported (they would be duplicates).

One run: a ``--warmup`` s warm-up with its own requests, then ``--duration`` s of wrk with
``--connections`` keep-alive connections (closed loop: each connection sends its next request
when the previous ack arrived). Reported: acks/s (200 + {"ok":true}), wrk's p50/p99 latency
(send to full response), errors (non-200, socket errors, timeouts), the CPU seconds the two
workers and the client used, and (SQLite) the rows really written.

With JOB_RUNNER=on (the default configuration) each web worker also runs background jobs while
acking: it claims due jobs (up to JOB_CONCURRENCY=4 at a time), runs the demo agent on each
text (which sleeps DEMO_TOOL_LATENCY, 0.5 s by default, in a greenlet) and marks it done, so about
8 jobs/s per worker: two extra short SQLite write transactions per job taking the same write
lock as the acks. With JOB_RUNNER=off nothing but acks runs in the web workers.

    .venv/bin/python bench/sms_acks.py                          # runner on and off, 3 runs each
    .venv/bin/python bench/sms_acks.py --job-runner off --runs 5 --json bench/results/sms.json
"""

import argparse
import asyncio
import json
import resource
import shutil
import sqlite3
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _server import (
    SECRET,
    add_common_options,
    announce_source,
    cpu_seconds,
    fmt,
    gunicorn,
    percentile,
    py_spy,
    range_cell,
    server_env,
    source_tree,
    summarize_by,
    write_results,
)

from app.simulator import payload, signed_request

HERE = Path(__file__).resolve().parent
LUA = HERE / "sms_acks.lua"
FRESHNESS = 300  # seconds a signature's timestamp is accepted (app.webhook.signing.TOLERANCE)


def raw_requests(port, count, tag):
    """``count`` distinct signed SMS deliveries as raw HTTP/1.1 keep-alive requests."""
    out = []
    for i in range(count):
        body = payload("sms", f"Where is my order? (bench {i})",
                       conversationId=f"conv_bench_{tag}_{i % 1000}")
        raw, headers = signed_request(SECRET, body, delivery_id=f"whd_sms_{tag}_{i}")
        head = ["POST /webhook HTTP/1.1", f"Host: 127.0.0.1:{port}"]
        head += [f"{k}: {v}" for k, v in headers.items()]
        head += [f"Content-Length: {len(raw)}", "", ""]
        out.append("\r\n".join(head).encode() + raw)
    return out


def write_thread_files(requests, threads, prefix):
    for t in range(threads):
        with open(f"{prefix}{t}.bin", "wb") as f:
            for req in requests[t::threads]:
                f.write(req + b"\0")


def children_cpu():
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


# -- wrk ------------------------------------------------------------------------------------


def run_wrk(url, prefix, threads, connections, duration):
    cmd = ["wrk", "-t", str(threads), "-c", str(connections), "-d", f"{duration}s",
           "--timeout", "5s", "-s", str(LUA), url + "/webhook", "--", prefix]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=duration + 60,
                         check=False)
    for row in out.stdout.splitlines():
        if row.startswith("WRKJSON "):
            r = json.loads(row[len("WRKJSON "):])
            return {
                "seconds": r["duration_us"] / 1e6, "ok": r["ok"], "sent": r["sent"],
                "errors": r["bad"] + r["connect_errors"] + r["read_errors"]
                + r["write_errors"] + r["timeouts"],
                "error_detail": {k: r[k] for k in ("bad", "connect_errors", "read_errors",
                                                   "write_errors", "timeouts")},
                "wraps": r["wraps"],
                "p50_ms": r["lat_p50_us"] / 1000, "p99_ms": r["lat_p99_us"] / 1000,
                "max_ms": r["lat_max_us"] / 1000,
            }
    raise RuntimeError(f"wrk failed ({out.returncode}):\n{out.stdout}\n{out.stderr}")


# -- Python fallback ---------------------------------------------------------------------------


async def _python_load(port, requests, connections, duration):
    latencies, errors, state = [], [], {"next": 0, "ok": 0}
    end = time.perf_counter() + duration

    async def connection():
        reader = writer = None
        while time.perf_counter() < end and state["next"] < len(requests):
            req = requests[state["next"]]
            state["next"] += 1
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", port)
                t0 = time.perf_counter()
                writer.write(req)
                head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 5)
                length = 0
                for h in head.split(b"\r\n"):
                    if h.lower().startswith(b"content-length:"):
                        length = int(h.split(b":", 1)[1])
                body = await asyncio.wait_for(reader.readexactly(length), 5)
                latencies.append(time.perf_counter() - t0)
                if head.split()[1] == b"200" and b'"ok":true' in body:
                    state["ok"] += 1
                else:
                    errors.append(head.split(b"\r\n")[0].decode(errors="replace"))
            except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
                errors.append(type(exc).__name__)
                if writer is not None:
                    writer.close()
                reader = writer = None
        if writer is not None:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*(connection() for _ in range(connections)))
    seconds = time.perf_counter() - t0
    latencies.sort()
    return {
        "seconds": seconds, "ok": state["ok"], "sent": state["next"], "errors": len(errors),
        "error_detail": {e: errors.count(e) for e in set(errors)}, "wraps": 0,
        "p50_ms": percentile(latencies, 50) * 1000, "p99_ms": percentile(latencies, 99) * 1000,
        "max_ms": latencies[-1] * 1000,
    }


def run_python(port, requests, connections, duration):
    return asyncio.run(_python_load(port, requests, connections, duration))


# -- one run ---------------------------------------------------------------------------------


def db_counts(database_url):
    if not database_url.startswith("sqlite:///"):
        return None
    conn = sqlite3.connect(database_url[len("sqlite:///"):])
    try:
        deliveries = conn.execute("SELECT COUNT(*) FROM deliveries").fetchone()[0]
        jobs = dict(conn.execute("SELECT status, COUNT(*) FROM jobs GROUP BY status").fetchall())
    finally:
        conn.close()
    return {"deliveries": deliveries, "jobs": jobs}


def one_run(args, runner, run_index, client):
    tag = f"{int(time.time() * 1000)}_{runner}_{run_index}"
    env = server_env(args, JOB_RUNNER=runner, DEMO_TOOL_LATENCY=args.tool_latency)
    tmp = Path(tempfile.mkdtemp(prefix="agentphone-sms-"))
    server = None
    try:
        with gunicorn(2, env, args.database_url, keep_dir=True, cwd=args.tree) as server:
            warm_n = int(args.max_rate * args.warmup)
            main_n = int(args.max_rate * args.duration)
            generated = time.time()
            warm = raw_requests(server.port, warm_n, tag + "_w")
            reqs = raw_requests(server.port, main_n, tag)
            if time.time() - generated + args.warmup + args.duration > FRESHNESS - 30:
                raise RuntimeError("run too long for fresh signatures: lower --duration")
            if client == "wrk":
                write_thread_files(warm, args.threads, str(tmp / "warm-"))
                write_thread_files(reqs, args.threads, str(tmp / "main-"))
                run_wrk(server.url, str(tmp / "warm-"), args.threads, args.connections,
                        args.warmup)
            else:
                run_python(server.port, warm, args.connections, args.warmup)
            before_db = db_counts(server.database_url)
            workers_cpu0 = sum(cpu_seconds(p) for p in server.workers)
            client_cpu0 = children_cpu()
            proc_cpu0 = time.process_time()
            with py_spy(server.workers, args.profile, f"sms-{runner}-{run_index}", idle=True):
                if client == "wrk":
                    result = run_wrk(server.url, str(tmp / "main-"), args.threads,
                                     args.connections, args.duration)
                    client_cpu = children_cpu() - client_cpu0
                else:
                    result = run_python(server.port, reqs, args.connections, args.duration)
                    client_cpu = time.process_time() - proc_cpu0
            workers_cpu = sum(cpu_seconds(p) for p in server.workers) - workers_cpu0
            after_db = db_counts(server.database_url)
        final_db = db_counts(server.database_url)  # after the workers stopped
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
        if server is not None:
            shutil.rmtree(server.workdir, ignore_errors=True)
    row = {
        "job_runner": runner, "run": run_index, "client": client,
        "connections": args.connections, "seconds": round(result["seconds"], 3),
        "acks": result["ok"], "acks_per_s": result["ok"] / result["seconds"],
        "p50_ms": result["p50_ms"], "p99_ms": result["p99_ms"], "max_ms": result["max_ms"],
        "errors": result["errors"], "error_detail": result["error_detail"],
        "duplicates_sent": result["wraps"],
        "workers_cpu_s": round(workers_cpu, 2), "client_cpu_s": round(client_cpu, 2),
        "worker_cpu_us_per_ack": workers_cpu / max(result["ok"], 1) * 1e6,
    }
    if before_db and after_db:
        row["new_deliveries"] = after_db["deliveries"] - before_db["deliveries"]
        row["jobs_done_total"] = final_db["jobs"].get("done", 0)
        row["jobs_total"] = sum(final_db["jobs"].values())
    return row


def print_header():
    print(f"{'runner':>6} {'run':>3} {'acks/s':>8} {'p50 ms':>7} {'p99 ms':>7} {'max ms':>7} "
          f"{'errors':>6} {'dups':>5} {'rows':>7} {'wrk CPU':>7} {'srv CPU':>7} "
          f"{'us/ack':>6} {'jobs done':>9}")


def print_row(r):
    print(f"{r['job_runner']:>6} {r['run']:>3} {r['acks_per_s']:>8.0f} {r['p50_ms']:>7.2f} "
          f"{r['p99_ms']:>7.2f} {r['max_ms']:>7.1f} {r['errors']:>6} {r['duplicates_sent']:>5} "
          f"{fmt(r.get('new_deliveries'), 'd'):>7} {r['client_cpu_s']:>7.1f} "
          f"{r['workers_cpu_s']:>7.1f} {r['worker_cpu_us_per_ack']:>6.0f} "
          f"{fmt(r.get('jobs_done_total'), 'd'):>9}")
    if r["errors"]:
        print(f"       errors: {r['error_detail']}")


def print_summary(summary):
    print("\nmedian over runs [min-max]:")
    print(f"{'runner':>6} {'runs':>4}  {'acks/s':>20}  {'p50 ms':>18}  {'p99 ms':>18}  "
          f"{'errors':>6}")
    for s in summary:
        def cell(key, spec, s=s):
            return range_cell(s[key], spec)
        print(f"{s['job_runner']:>6} {s['runs']:>4}  {cell('acks_per_s', '.0f'):>20}  "
              f"{cell('p50_ms', '.2f'):>18}  {cell('p99_ms', '.2f'):>18}  "
              f"{s['errors']['max']:>6}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--job-runner", nargs="+", default=["on", "off"], choices=["on", "off"])
    parser.add_argument("--runs", type=int, default=3, help="runs per mode, fresh server each")
    parser.add_argument("--duration", type=int, default=10, help="measured seconds per run")
    parser.add_argument("--warmup", type=int, default=2, help="warm-up seconds per run")
    parser.add_argument("--connections", type=int, default=64, help="keep-alive connections")
    parser.add_argument("--threads", type=int, default=1, help="wrk threads")
    parser.add_argument("--max-rate", type=int, default=8000,
                        help="acks/s the pre-generated requests are sized for")
    parser.add_argument("--client", choices=["wrk", "python"],
                        help="load generator (default: wrk when installed)")
    parser.add_argument("--tool-latency", type=float, default=0.5, help="DEMO_TOOL_LATENCY")
    add_common_options(parser)
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record both workers with py-spy during the measured seconds, "
                             "waits included (collapsed stacks in DIR; sampling costs CPU)")
    args = parser.parse_args(argv)
    client = args.client or ("wrk" if shutil.which("wrk") else "python")
    if client == "python" and not args.client:
        print("wrk not found: using the Python load generator (a lower bound)", file=sys.stderr)
    if client == "python":
        args.threads = 1

    source = announce_source(args.rev)
    rows = []
    print_header()
    with source_tree(args.rev) as args.tree:
        for runner in args.job_runner:
            for i in range(args.runs):
                row = one_run(args, runner, i + 1, client)
                rows.append(row)
                print_row(row)
                sys.stdout.flush()
    summary = summarize_by(rows, "job_runner", ("acks_per_s", "p50_ms", "p99_ms", "errors"))
    print_summary(summary)
    write_results(args, source, rows, summary, client=client)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
