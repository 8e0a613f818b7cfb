"""Mixed-load benchmark: signed texts and voice turns at fixed rates against 2 gunicorn gevent
workers (job runner on), optionally while another process holds the SQLite file's write lock.

Open loop: deliveries start at their scheduled instants whatever the server does (texts over
a pool of keep-alive connections, a new connection opened when none is free; each voice turn
on its own connection), so a stalled server shows up as latency, not as a lower rate. Every
request is a distinct signed delivery (app.simulator's signer).

    # text acks alone at 1,500/s (SQLite, or --database-url postgresql://...)
    .venv/bin/python bench/mixed_load.py --texts 1500 --voice 0
    # voice alone, then voice beside texts
    .venv/bin/python bench/mixed_load.py --texts 0 --voice 200
    .venv/bin/python bench/mixed_load.py --texts 1000 --voice 200
    # the same while another process holds BEGIN EXCLUSIVE on the SQLite file for 10 s
    .venv/bin/python bench/mixed_load.py --texts 1000 --voice 200 --lock 10

Reported per run: text acks (200 with {"ok":true}), 503s, other errors, ack latency p50/p99/max
(request written to response read) and the slowest 503; voice first-line and final-line
latency (first line must be interim), final lines later than the deadline, errors; after the
run, acknowledged texts missing from the deliveries table (lost) and the client's own loop lag.
"""

import argparse
import asyncio
import contextlib
import sqlite3
import subprocess
import sys
import time

from _server import (
    add_common_options,
    describe_source,
    fmt,
    gunicorn,
    percentile,
    raise_fd_limit,
    range_cell,
    server_env,
    source_tree,
    spread,
    write_results,
)
from sms_acks import raw_requests
from voice_streams import Run, Stream, build_request, loop_lag_sampler

from app.voice.streamer import deadline_for

MAX_TEXT_CONNECTIONS = 4000  # a locked store holds every text sent meanwhile open
REPLY_TIMEOUT = 10.0  # seconds one text may take before it counts as an error
HOLD_SQLITE = """
import sqlite3, sys, time
conn = sqlite3.connect(sys.argv[1], isolation_level=None, timeout=30)
conn.execute("BEGIN EXCLUSIVE")
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
conn.execute("COMMIT")
"""


class Texts:
    """Open-loop text deliveries over reusable keep-alive connections."""

    def __init__(self, port):
        self.port = port
        self.idle = []
        self.opened = 0
        self.results = []  # (delivery index, status or error, seconds)

    async def send(self, index, request):
        conn = self.idle.pop() if self.idle else None
        try:
            if conn is None:
                if self.opened >= MAX_TEXT_CONNECTIONS:
                    self.results.append((index, "no free connection", 0.0))
                    return
                self.opened += 1
                conn = await asyncio.open_connection("127.0.0.1", self.port)
            reader, writer = conn
            started = time.perf_counter()
            writer.write(request)
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), REPLY_TIMEOUT)
            length = next((int(h.split(b":", 1)[1]) for h in head.split(b"\r\n")
                           if h.lower().startswith(b"content-length:")), 0)
            body = await asyncio.wait_for(reader.readexactly(length), REPLY_TIMEOUT)
            status = int(head.split()[1])
            if status == 200 and b'"ok":true' not in body:
                status = "200 without ok"
            self.results.append((index, status, time.perf_counter() - started))
            self.idle.append(conn)
        except (OSError, asyncio.IncompleteReadError, TimeoutError, ValueError) as exc:
            self.results.append((index, type(exc).__name__, 0.0))
            if conn is not None:
                conn[1].close()
                self.opened -= 1

    def close(self):
        for _, writer in self.idle:
            writer.close()


@contextlib.contextmanager
def sqlite_lock(database_url, seconds):
    """Another process holds BEGIN EXCLUSIVE on the file for ``seconds`` from entry."""
    path = database_url[len("sqlite:///"):]
    holder = subprocess.Popen([sys.executable, "-c", HOLD_SQLITE, path, str(seconds)],
                              stdout=subprocess.PIPE, text=True)
    try:
        if holder.stdout.readline().strip() != "locked":
            raise RuntimeError("the lock holder did not get the lock")
        yield
    finally:
        try:
            holder.wait(seconds + 30)
        except subprocess.TimeoutExpired:
            holder.kill()
            holder.wait(5)
        holder.stdout.close()


def stored_ids(database_url, ids):
    if database_url.startswith("sqlite:///"):
        with contextlib.closing(sqlite3.connect(database_url[len("sqlite:///"):])) as conn:
            return {row[0] for row in conn.execute("SELECT id FROM deliveries")} & ids
    import psycopg

    with psycopg.connect(database_url) as conn:
        return {row[0] for row in conn.execute("SELECT id FROM deliveries")} & ids


async def load(args, server, tag):
    loop = asyncio.get_running_loop()
    n_texts, n_voice = int(args.texts * args.duration), int(args.voice * args.duration)
    texts_raw = raw_requests(server.port, n_texts, tag)
    text_ids = [f"whd_sms_{tag}_{i}" for i in range(n_texts)]
    voice_raw = [build_request(server.port, i, tag) for i in range(n_voice)]
    schedule = sorted([(i / args.texts, "text", i) for i in range(n_texts)]
                      + [(i / args.voice, "voice", i) for i in range(n_voice)])
    texts = Texts(server.port)
    run = Run(n_voice, None)
    streams = [Stream(run, req) for req in voice_raw]
    lag, stop = [], asyncio.Event()
    sampler = loop.create_task(loop_lag_sampler(lag, stop))
    lock_task = None
    if args.lock:
        lock_task = loop.create_task(asyncio.to_thread(
            lambda: sqlite_lock_blocking(server.database_url, args.lock, args.lock_at)))
    tasks, late_starts = [], []
    t0 = time.perf_counter()
    for offset, kind, i in schedule:
        delay = t0 + offset - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        late_starts.append(max(0.0, -delay))
        if kind == "text":
            tasks.append(loop.create_task(texts.send(i, texts_raw[i])))
        else:
            tasks.append(loop.create_task(connect(loop, streams[i], server.port)))
    await asyncio.gather(*tasks)
    if n_voice:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.shield(run.all_done), 60)
    lock_window = await lock_task if lock_task else None
    stop.set()
    await sampler
    texts.close()
    return texts, streams, lag, late_starts, text_ids, t0, lock_window


def sqlite_lock_blocking(database_url, seconds, at):
    time.sleep(at)
    started = time.perf_counter()
    with sqlite_lock(database_url, seconds):
        pass
    return started, time.perf_counter()


async def connect(loop, stream, port):
    try:
        await loop.create_connection(lambda: stream, "127.0.0.1", port)
    except OSError as exc:
        stream.error = f"connect: {exc}"
        stream._finish()


def one_run(args, run_index):
    tag = f"{int(time.time() * 1000)}_mixed_{run_index}"
    env = server_env(args, DEMO_TOOL_LATENCY=args.tool_latency, VOICE_TIMEOUT=args.voice_timeout,
                     JOB_RUNNER="on")
    with gunicorn(2, env, args.database_url, cwd=args.tree) as server:
        texts, streams, lag, late, text_ids, t0, window = asyncio.run(load(args, server, tag))
        acked = {text_ids[i] for i, status, _ in texts.results if status == 200}
        lost = len(acked - stored_ids(server.database_url, acked))
        blocks = server.log_tail(10**7).count("event loop blocked")
    deadline_ms = deadline_for(args.voice_timeout) * 1000
    ok = sorted(s for _, status, s in texts.results if status == 200)
    refused = sorted(s for _, status, s in texts.results if status == 503)
    errors = [status for _, status, _ in texts.results if status not in (200, 503)]
    firsts = sorted((s.t_first - s.t_send) * 1000 for s in streams if s.t_first)
    finals = sorted((s.t_final - s.t_send) * 1000 for s in streams if s.t_final)
    row = {
        "run": run_index, "texts_per_s": args.texts, "voice_per_s": args.voice,
        "lock_s": args.lock, "texts": len(texts.results), "acks": len(ok),
        "refused_503": len(refused), "text_errors": len(errors),
        "text_error_samples": sorted({str(e) for e in errors})[:5],
        "ack_p50_ms": ms(percentile(ok, 50)), "ack_p99_ms": ms(percentile(ok, 99)),
        "ack_max_ms": ms(ok[-1] if ok else None),
        "refused_max_ms": ms(refused[-1] if refused else None),
        "answered_within_3s": sum(1 for s in ok + refused if s <= 3.0),
        "voice": len(streams), "first_p50_ms": percentile(firsts, 50),
        "first_p99_ms": percentile(firsts, 99), "first_max_ms": firsts[-1] if firsts else None,
        "final_p50_ms": percentile(finals, 50), "final_p99_ms": percentile(finals, 99),
        "finals_after_deadline": sum(1 for f in finals if f > deadline_ms),
        "voice_without_final": sum(1 for s in streams if not s.t_final),
        "voice_errors": sum(1 for s in streams if s.error),
        "voice_error_samples": sorted({s.error for s in streams if s.error})[:5],
        "lost": lost, "loop_block_reports": blocks,
        "client_lag_p99_ms": ms(percentile(sorted(lag), 99)),
        "client_late_start_p99_ms": ms(percentile(sorted(late), 99)),
    }
    if window:
        row["lock_window_s"] = [round(window[0] - t0, 2), round(window[1] - t0, 2)]
    return row


def ms(seconds):
    return None if seconds is None else seconds * 1000


def print_row(r):
    print(f"run {r['run']}: texts {r['texts']} (200: {r['acks']}, 503: {r['refused_503']}, "
          f"errors: {r['text_errors']}, answered within 3 s: {r['answered_within_3s']}) "
          f"ack p50/p99/max {fmt(r['ack_p50_ms'], '.2f')}/{fmt(r['ack_p99_ms'], '.2f')}/"
          f"{fmt(r['ack_max_ms'])} ms, slowest 503 {fmt(r['refused_max_ms'])} ms, lost "
          f"{r['lost']}")
    print(f"       voice {r['voice']}: first p50/p99/max {fmt(r['first_p50_ms'], '.2f')}/"
          f"{fmt(r['first_p99_ms'], '.2f')}/{fmt(r['first_max_ms'])} ms, final p50/p99 "
          f"{fmt(r['final_p50_ms'], '.0f')}/{fmt(r['final_p99_ms'], '.0f')} ms, after deadline "
          f"{r['finals_after_deadline']}, no final {r['voice_without_final']}, errors "
          f"{r['voice_errors']}; client lag p99 {fmt(r['client_lag_p99_ms'])} ms, late start "
          f"p99 {fmt(r['client_late_start_p99_ms'])} ms; loop-block reports "
          f"{r['loop_block_reports']}" + (f"; lock {r['lock_window_s']} s" if r.get(
              "lock_window_s") else ""))
    for key in ("text_error_samples", "voice_error_samples"):
        if r[key]:
            print(f"       {key}: {r[key]}")


SUMMARY_KEYS = ("ack_p50_ms", "ack_p99_ms", "refused_max_ms", "first_p50_ms", "first_p99_ms",
                "final_p99_ms")


def summarize(rows):
    return {key: spread(r[key] for r in rows) for key in SUMMARY_KEYS}


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=float, default=1000, help="text deliveries per second")
    parser.add_argument("--voice", type=float, default=200, help="voice turns per second")
    parser.add_argument("--duration", type=float, default=10, help="seconds of arrivals")
    parser.add_argument("--lock", type=float, default=0,
                        help="seconds another process holds BEGIN EXCLUSIVE on the SQLite file")
    parser.add_argument("--lock-at", type=float, default=2, help="when the lock is taken (s)")
    parser.add_argument("--runs", type=int, default=3, help="runs, fresh server each")
    parser.add_argument("--tool-latency", type=float, default=0.5, help="DEMO_TOOL_LATENCY")
    parser.add_argument("--voice-timeout", type=float, default=30, help="VOICE_TIMEOUT")
    add_common_options(parser)
    args = parser.parse_args(argv)
    if args.lock and args.database_url:
        parser.error("--lock holds a SQLite lock: leave --database-url out")
    if args.duration > 60 or args.lock > 60:
        parser.error("--duration and --lock are bounded to 60 s")
    raise_fd_limit(int(args.voice * 30) + 2 * MAX_TEXT_CONNECTIONS + 512)
    source = describe_source(args.rev)
    print(f"serving {source}; {args.texts:g} texts/s + {args.voice:g} voice turns/s for "
          f"{args.duration:g} s, 2 workers, job runner on"
          + (f", SQLite locked {args.lock:g} s from {args.lock_at:g} s" if args.lock else ""))
    rows = []
    with source_tree(args.rev) as args.tree:
        for i in range(args.runs):
            row = one_run(args, i + 1)
            rows.append(row)
            print_row(row)
            sys.stdout.flush()
    summary = summarize(rows)
    print("\nmedian [min-max] over runs:")
    for key in SUMMARY_KEYS:
        print(f"  {key:>16}: {range_cell(summary[key], '.2f')}")
    write_results(args, source, rows, summary)
    bad = any(r["text_errors"] or r["voice_errors"] or r["lost"] for r in rows)
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
