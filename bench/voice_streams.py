"""Voice-stream benchmark: N concurrent signed voice turns held on ONE gunicorn gevent worker.

For each N (default 100, 500, 1000) and each run, a fresh server is started with the Procfile
command (``gunicorn -c gunicorn.conf.py wsgi:app``, 1 worker, DEMO_TOOL_LATENCY=2, a signing
secret, a fresh SQLite file or ``--database-url``). This process is the load generator: an
asyncio event loop with raw sockets (one connection per turn, ``Connection: close``).

One run:
  1. warm-up: ``--warmup`` turns (all finished) then 1 s of quiet; the worker's VmRSS is the
     idle RSS;
  2. N turns, each with its own X-Webhook-ID and callId, start at random times spread over
     ``--ramp`` seconds (uniform order statistics: a Poisson process conditioned on N arrivals);
     ``--ramp 0`` sends them all at once. The ramp must end well before DEMO_TOOL_LATENCY so
     that all N are held together;
  3. per stream: time from just before the request is written to the first NDJSON line (must
     be the interim line) and to the final line; errors = non-200, malformed line, first line
     not interim, no final line, more than one final line or a line after it, connection
     error, timeout;
  4. the worker's VmRSS is read at the moment the N-th first line arrives (before any final,
     which is checked): RSS per held stream = (held - idle) / N.

The client's own event-loop lag is sampled every 5 ms and reported: when it is large, the
latencies include time the client was busy, not only the server.

    .venv/bin/python bench/voice_streams.py                  # N = 100 500 1000, 3 runs each
    .venv/bin/python bench/voice_streams.py -n 500 --runs 5 --json bench/results/voice.json
"""

import argparse
import asyncio
import json
import random
import sys
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
    raise_fd_limit,
    range_cell,
    rss_kib,
    server_env,
    source_tree,
    summarize_by,
    write_results,
)

from app.simulator import payload, signed_request

STREAM_TIMEOUT = 60.0  # seconds one turn may take before it counts as an error


def build_request(port, index, tag):
    body = payload("voice", callId=f"call_bench_{tag}_{index}")
    raw, headers = signed_request(SECRET, body, delivery_id=f"whd_bench_{tag}_{index}")
    head = ["POST /webhook HTTP/1.1", f"Host: 127.0.0.1:{port}"]
    head += [f"{k}: {v}" for k, v in headers.items()]
    head += [f"Content-Length: {len(raw)}", "Connection: close", "", ""]
    return "\r\n".join(head).encode() + raw


class Run:
    """Shared counters of one batch of streams, and the RSS and CPU samples taken when all
    are held."""

    def __init__(self, n, worker_pid):
        self.n = n
        self.worker_pid = worker_pid
        self.first_count = 0
        self.final_count = 0
        self.done_count = 0
        self.all_done = asyncio.get_running_loop().create_future()
        self.held_rss = None
        self.held_cpu = None  # the worker's CPU seconds then
        self.finals_before_held = None

    def on_first(self):
        self.first_count += 1
        if self.first_count == self.n and self.worker_pid:
            self.held_rss = rss_kib(self.worker_pid)
            self.held_cpu = cpu_seconds(self.worker_pid)
            self.finals_before_held = self.final_count

    def on_done(self):
        self.done_count += 1
        if self.done_count == self.n and not self.all_done.done():
            self.all_done.set_result(None)


class Stream(asyncio.Protocol):
    """One voice turn over one connection: HTTP/1.1 response, chunked or close-delimited."""

    def __init__(self, run, request):
        self.run = run
        self.request = request
        self.transport = None
        self.t_send = None
        self.t_first = None
        self.t_final = None
        self.status = None
        self.error = None
        self.lines = 0
        self.finals = 0
        self.finished = False
        self._head = b""
        self._chunked = False
        self._raw = b""  # undecoded body bytes
        self._text = b""  # decoded body bytes not yet split into lines
        self._body = b""  # the whole body when the status is not 200

    def connection_made(self, transport):
        self.transport = transport
        self.t_send = time.perf_counter()
        transport.write(self.request)

    def data_received(self, data):
        now = time.perf_counter()
        if self.status is None:
            self._head += data
            if b"\r\n\r\n" not in self._head:
                return
            head, _, data = self._head.partition(b"\r\n\r\n")
            lines = head.split(b"\r\n")
            try:
                self.status = int(lines[0].split()[1])
            except (IndexError, ValueError):
                return self._fail(f"bad status line {lines[0][:80]!r}")
            headers = {k.strip().lower(): v.strip().lower()
                       for k, _, v in (h.partition(b":") for h in lines[1:])}
            self._chunked = headers.get(b"transfer-encoding") == b"chunked"
        if self.status != 200:
            self._body += data
            return
        if self._chunked:
            self._raw += data
            while True:
                size_line, sep, rest = self._raw.partition(b"\r\n")
                if not sep:
                    break
                try:
                    size = int(size_line.split(b";")[0], 16)
                except ValueError:
                    return self._fail("bad chunk header")
                if size == 0:
                    self._raw = b""
                    self._lines(now)
                    return self._finish()
                if len(rest) < size + 2:
                    break
                self._text += rest[:size]
                self._raw = rest[size + 2:]
        else:
            self._text += data
        self._lines(now)

    def _lines(self, now):
        *complete, self._text = self._text.split(b"\n")
        for raw in complete:
            if not raw.strip() or self.error:
                continue
            try:
                obj = json.loads(raw)
            except ValueError:
                return self._fail(f"malformed line {raw[:80]!r}")
            if not isinstance(obj, dict) or not isinstance(obj.get("text", ""), str):
                return self._fail(f"unexpected line {raw[:80]!r}")
            if self.finals:
                return self._fail("line after the final line")
            self.lines += 1
            interim = obj.get("interim") is True
            if self.lines == 1:
                if not interim:
                    return self._fail(f"first line is not interim: {raw[:80]!r}")
                self.t_first = now
                self.run.on_first()
            elif not interim:
                self.finals += 1
                self.t_final = now
                self.run.final_count += 1

    def connection_lost(self, exc):
        if self.status is not None and self.status != 200 and not self.error:
            self.error = f"HTTP {self.status}: {self._body[:120]!r}"
        elif self._text.strip() and not self.error:
            self._lines(time.perf_counter())
            self._text = b""
        self._finish(exc)

    def _fail(self, message):
        if not self.error:
            self.error = message
        if self.transport:
            self.transport.close()

    def _finish(self, exc=None):
        if self.finished:
            return
        self.finished = True
        if not self.error:
            if self.status is None:
                self.error = f"no response ({exc or 'closed'})"
            elif self.status == 200 and self.finals != 1:
                self.error = f"{self.finals} final lines"
        if self.transport:
            self.transport.close()
        self.run.on_done()


async def loop_lag_sampler(samples, stop, period=0.005):
    loop = asyncio.get_running_loop()
    while not stop.is_set():
        t = loop.time()
        await asyncio.sleep(period)
        samples.append(max(0.0, loop.time() - t - period))


async def fire(port, requests, offsets, worker_pid, timeout):
    """Start len(requests) streams at the given offsets (s); wait for all; return (run, streams)."""
    loop = asyncio.get_running_loop()
    run = Run(len(requests), worker_pid)
    streams = [Stream(run, req) for req in requests]

    async def connect(stream):
        try:
            await loop.create_connection(lambda: stream, "127.0.0.1", port)
        except OSError as exc:
            stream.error = f"connect: {exc}"
            stream._finish()

    tasks = []
    start = time.perf_counter()
    for stream, offset in zip(streams, offsets, strict=True):
        delay = start + offset - time.perf_counter()
        if delay > 0.0005:
            await asyncio.sleep(delay)
        tasks.append(loop.create_task(connect(stream)))
    try:
        await asyncio.wait_for(asyncio.shield(run.all_done), timeout)
    except TimeoutError:
        for stream in streams:
            if not stream.finished:
                stream.error = stream.error or "timeout"
                stream._finish()
    await asyncio.gather(*tasks, return_exceptions=True)
    return run, streams


async def one_run(args, n, run_index, database_url):
    tag = f"{int(time.time() * 1000)}_{n}_{run_index}"
    env = server_env(args, DEMO_TOOL_LATENCY=args.tool_latency)
    with gunicorn(1, env, database_url, cwd=args.tree) as server:
        pid = server.workers[0]
        # Warm-up: the same path (claim, stream, store reply), then quiet.
        warm = [build_request(server.port, i, tag + "_w") for i in range(args.warmup)]
        _, wstreams = await fire(server.port, warm, [i * 0.002 for i in range(len(warm))], None,
                                 STREAM_TIMEOUT)
        warm_errors = sum(1 for s in wstreams if s.error)
        await asyncio.sleep(1.0)
        idle = rss_kib(pid)

        requests = [build_request(server.port, i, tag) for i in range(n)]
        rng = random.Random(run_index * 7919 + n)
        offsets = sorted(rng.uniform(0, args.ramp) for _ in range(n)) if args.ramp else [0] * n
        lag, stop = [], asyncio.Event()
        sampler = asyncio.get_running_loop().create_task(loop_lag_sampler(lag, stop))
        t0, cpu0 = time.perf_counter(), cpu_seconds(pid)
        with py_spy([pid], args.profile, f"voice-{n}-{run_index}"):
            run, streams = await fire(server.port, requests, offsets, pid, STREAM_TIMEOUT)
        wall, cpu = time.perf_counter() - t0, cpu_seconds(pid) - cpu0
        stop.set()
        await sampler
        after = rss_kib(pid)
    errors = [s.error for s in streams if s.error]
    firsts = sorted((s.t_first - s.t_send) * 1000 for s in streams if s.t_first and s.t_send)
    finals = sorted((s.t_final - s.t_send) * 1000 for s in streams if s.t_final and s.t_send)
    lag.sort()
    held = run.held_rss
    return {
        "n": n, "run": run_index, "ramp_s": args.ramp, "wall_s": round(wall, 3),
        "first_p50_ms": percentile(firsts, 50), "first_p99_ms": percentile(firsts, 99),
        "first_max_ms": firsts[-1] if firsts else None,
        "final_p50_ms": percentile(finals, 50), "final_p99_ms": percentile(finals, 99),
        "errors": len(errors), "error_samples": sorted(set(errors))[:5],
        "cpu_us_per_turn": cpu / n * 1e6,
        "warmup_errors": warm_errors,
        "rss_idle_kib": idle, "rss_held_kib": held, "rss_after_kib": after,
        "rss_per_stream_kib": (held - idle) / n if held else None,
        "finals_before_all_held": run.finals_before_held,
        "client_lag_p99_ms": percentile(lag, 99) * 1000 if lag else None,
        "client_lag_max_ms": lag[-1] * 1000 if lag else None,
    }


def print_header():
    print(f"{'N':>5} {'run':>3} {'first p50':>9} {'first p99':>9} {'first max':>9} "
          f"{'final p50':>9} {'final p99':>9} {'err':>4} {'idle MiB':>8} {'held MiB':>8} "
          f"{'KiB/strm':>8} {'lag p99':>7} {'CPU µs/turn':>11}")


def print_runs(rows):
    for r in rows:
        print(f"{r['n']:>5} {r['run']:>3} {fmt(r['first_p50_ms']):>9} {fmt(r['first_p99_ms']):>9} "
              f"{fmt(r['first_max_ms']):>9} {fmt(r['final_p50_ms'], '.0f'):>9} "
              f"{fmt(r['final_p99_ms'], '.0f'):>9} {r['errors']:>4} "
              f"{fmt(r['rss_idle_kib'] / 1024):>8} "
              f"{fmt(r['rss_held_kib'] / 1024 if r['rss_held_kib'] else None):>8} "
              f"{fmt(r['rss_per_stream_kib']):>8} {fmt(r['client_lag_p99_ms']):>7} "
              f"{fmt(r['cpu_us_per_turn'], '.0f'):>11}")
        if r["error_samples"]:
            print(f"      errors: {r['error_samples']}")
        if r["finals_before_all_held"]:
            print(f"      warning: {r['finals_before_all_held']} turns had finished before "
                  "the last first line (not all N held at once)")


SUMMARY_KEYS = ("first_p50_ms", "first_p99_ms", "final_p50_ms", "final_p99_ms", "errors",
                "rss_per_stream_kib", "client_lag_p99_ms", "cpu_us_per_turn")


def print_summary(summary):
    print("\nmedian over runs [min-max]:")
    print(f"{'N':>5} {'runs':>4}  {'first p50 ms':>18}  {'first p99 ms':>18}  "
          f"{'final p50 ms':>18}  {'final p99 ms':>18}  {'errors':>6}  {'KiB/stream':>18}  "
          f"{'CPU µs/turn':>18}")
    for s in summary:
        def cell(key, spec=".1f", s=s):
            return range_cell(s[key], spec)
        print(f"{s['n']:>5} {s['runs']:>4}  {cell('first_p50_ms'):>18}  {cell('first_p99_ms'):>18}"
              f"  {cell('final_p50_ms', '.0f'):>18}  {cell('final_p99_ms', '.0f'):>18}  "
              f"{s['errors']['max']:>6}  {cell('rss_per_stream_kib'):>18}  "
              f"{cell('cpu_us_per_turn', '.0f'):>18}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("-n", type=int, nargs="+", default=[100, 500, 1000],
                        help="concurrent turns per batch (default: 100 500 1000)")
    parser.add_argument("--runs", type=int, default=3, help="runs per N, fresh server each")
    parser.add_argument("--ramp", type=float, default=1.0,
                        help="seconds over which the N turns start (0 = all at once)")
    parser.add_argument("--tool-latency", type=float, default=2.0, help="DEMO_TOOL_LATENCY")
    parser.add_argument("--warmup", type=int, default=50, help="warm-up turns per server")
    add_common_options(parser)
    parser.add_argument("--profile", type=Path, metavar="DIR",
                        help="record the worker with py-spy during the N turns (collapsed "
                             "stacks in DIR; the sampling itself adds latency)")
    args = parser.parse_args(argv)
    if args.ramp >= args.tool_latency:
        parser.error("--ramp must be shorter than --tool-latency, or the N turns are not held "
                     "at the same time")
    raise_fd_limit(max(args.n) * 2 + 512)

    source = announce_source(args.rev)
    rows = []
    print_header()
    deadline = time.monotonic() + 1800  # hard bound on the whole benchmark
    with source_tree(args.rev) as args.tree:
        for n in args.n:
            for i in range(args.runs):
                if time.monotonic() > deadline:
                    print("time budget exhausted, stopping", file=sys.stderr)
                    break
                row = asyncio.run(one_run(args, n, i + 1, args.database_url))
                rows.append(row)
                print_runs([row])
                sys.stdout.flush()
    summary = summarize_by(sorted(rows, key=lambda r: r["n"]), "n", SUMMARY_KEYS)
    print_summary(summary)
    write_results(args, source, rows, summary)
    return 1 if any(r["errors"] for r in rows) else 0


if __name__ == "__main__":
    sys.exit(main())
