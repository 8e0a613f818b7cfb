"""What metrics, logs and the delivery log cost, from two servers up side by side: the code
as deployed ("on") and a copy with them switched off ("off", as ``observability_cost.py``
makes it; ``--off`` names fewer parts; ``--against DIR`` serves another copy of the code
instead, as deployed, and ``--on DIR`` one in place of the working tree), measured in
alternating bursts a few seconds apart.

``observability_cost.py`` starts a fresh server for each run, so the two runs it compares
are a minute apart; on a shared host the speed changes within that minute by more than the
10 % it looks for, and a p99 of 500 turns is the fifth-worst turn of one run. Here both
servers stay up and take turns:

- **voice**: ``--pairs`` pairs of bursts of ``-n`` voice turns spread over a 1 s ramp, as
  ``voice_streams.py`` sends them (one gevent worker per server, DEMO_TOOL_LATENCY 2 s, so all
  are held at once). The two bursts of a pair use the same arrival times, and which side goes
  first alternates. Reported: each side's median, over the pairs, of its bursts' first-line
  p99 (a p99 pooled over all bursts would be the few worst bursts', whatever the host did
  then); a 90 % interval of the change of those medians, from the pairs resampled with
  replacement (bootstrap); the median of the pairs' own changes; the worker CPU per turn of
  each side until the burst's last first line (the ramp, where first lines wait for CPU) and
  after it (the final lines).
- **acks**: ``--ack-pairs`` pairs of ``--ack-seconds`` windows of ``wrk`` (``sms_acks.py``'s
  closed loop: 64 keep-alive connections, each text a distinct signed delivery) against two
  workers per server. The job runner is off on these servers: a server whose turn is over
  must run nothing while the other is measured (with it on, its queued jobs would run then).
  At saturation the acks take the CPU and the jobs wait, so the acks are what
  ``sms_acks.py``'s acks/s measure too. Reported as for voice, with acks/s.

Half the pairs run with "on" started and warmed first, the rest on fresh servers with "off"
first: in runs of the same code against itself, whichever server was started first came out
behind, by 15-35 % in first-line p99.

The targets: first-line p99 at most 10 % higher, acks/s at most 10 % lower.

    .venv/bin/python bench/observability_bursts.py --pairs 30 --ack-pairs 20
"""

import argparse
import asyncio
import os
import random
import shutil
import statistics
import tempfile
import time
from contextlib import ExitStack
from pathlib import Path

from _server import ROOT, cpu_seconds, describe_source, gunicorn, percentile, raise_fd_limit
from observability_cost import PARTS, dark_copy, off_env
from sms_acks import raw_requests, run_wrk, write_thread_files
from voice_streams import STREAM_TIMEOUT, build_request, fire

SIDES = ("on", "off")
DEADLINE_SECONDS = 1800  # the whole benchmark, whatever the counts asked for
ACKS_PER_SECOND_MAX = 5000  # distinct deliveries made for each second of a wrk window


def bootstrap_change(pairs, draws=2000, seed=1):
    """A 90 % interval of the change of the sides' medians, in per cent, from the pairs
    resampled with replacement; ``pairs`` is a list of {"on": figure, "off": figure}."""
    rng = random.Random(seed)
    changes = []
    for _ in range(draws):
        drawn = [rng.choice(pairs) for _ in pairs]
        on, off = (statistics.median(pair[side] for pair in drawn) for side in SIDES)
        changes.append((on / off - 1) * 100)
    changes.sort()
    return changes[int(draws * 0.05)], changes[int(draws * 0.95)]


def report(name, unit, pairs):
    """Print the sides' medians over the pairs, the interval of their change and the median
    of the pairs' own changes; return them."""
    if not pairs:
        print(f"{name}: no pair measured")
        return None
    on, off = (statistics.median(pair[side] for pair in pairs) for side in SIDES)
    change = (on / off - 1) * 100
    own = statistics.median((pair["on"] / pair["off"] - 1) * 100 for pair in pairs)
    low, high = bootstrap_change(pairs)
    print(f"{name}, medians of {len(pairs)} pairs: on {on:.1f} / off {off:.1f}{unit} "
          f"({change:+.1f} %, 90 % interval {low:+.1f} to {high:+.1f} %); median of the "
          f"pairs' own changes {own:+.1f} %", flush=True)
    return {"on": on, "off": off, "change_pct": change, "interval_pct": [low, high],
            "median_pair_change_pct": own}


async def voice_burst(server, n, tag, offsets):
    """One burst: its first-line p99 (ms), errors, and the worker's CPU per turn (µs) until
    the last first line and after it."""
    requests = [build_request(server.port, i, tag) for i in range(n)]
    pid = server.workers[0]
    start = cpu_seconds(pid)
    run, streams = await fire(server.port, requests, offsets, pid, STREAM_TIMEOUT)
    end = cpu_seconds(pid)
    held = end if run.held_cpu is None else run.held_cpu
    firsts = sorted((s.t_first - s.t_send) * 1000 for s in streams if s.t_first and s.t_send)
    return (percentile(firsts, 99), sum(1 for s in streams if s.error),
            ((held - start) / n * 1e6, (end - held) / n * 1e6))


async def voice(servers, numbers, args, stop_at):
    """Alternate voice bursts between the servers, a pair per number; print each pair;
    return the pairs' first-line p99s and CPU figures."""
    for name, server in servers.items():  # warm-up: the same path, then quiet
        await voice_burst(server, 50, f"{name}_warm_{time.time_ns()}",
                          [i * 0.002 for i in range(50)])
    await asyncio.sleep(1.0)
    pairs, cpus = [], []
    print(f"{'pair':>4} {'first':>5} {'p99 on':>7} {'p99 off':>7}   worker CPU µs/turn until "
          "the last first line, on / off; after it, on / off")
    for number in numbers:
        if time.monotonic() > stop_at:
            print("time budget spent, stopping")
            break
        rng = random.Random(number)
        offsets = sorted(rng.uniform(0, 1.0) for _ in range(args.n))
        pair, cpu, errors = {}, {}, 0
        order = SIDES if number % 2 == 0 else SIDES[::-1]
        for side in order:
            pair[side], failed, cpu[side] = await voice_burst(
                servers[side], args.n, f"{side}_{number}_{time.time_ns()}", offsets)
            errors += failed
            await asyncio.sleep(0.5)
        pairs.append(pair)
        cpus.append(cpu)
        print(f"{number + 1:>4} {order[0]:>5} {pair['on']:>7.1f} {pair['off']:>7.1f}   "
              f"{cpu['on'][0]:>5.0f} / {cpu['off'][0]:>5.0f}; "
              f"{cpu['on'][1]:>5.0f} / {cpu['off'][1]:>5.0f}", flush=True)
        if errors:
            raise RuntimeError(f"pair {number + 1}: {errors} voice turns failed")
    return pairs, cpus


def ack_window(server, seconds, tag, work):
    """One wrk window of distinct signed texts: acks/s."""
    prefix = str(work / f"{tag}-")
    made = int(ACKS_PER_SECOND_MAX * seconds)
    write_thread_files(raw_requests(server.port, made, tag), 2, prefix)
    result = run_wrk(server.url, prefix, 2, 64, seconds)
    if result["errors"]:
        raise RuntimeError(f"{result['errors']} acks failed: {result['error_detail']}")
    if result["wraps"]:  # it sent some again: duplicates, acked without the work
        raise RuntimeError(f"more than {made} acks in {seconds} s: shorten the window")
    return result["ok"] / result["seconds"]


def acks(servers, numbers, args, stop_at, work):
    """Alternate wrk windows between the servers, a pair per number; print each pair;
    return the pairs."""
    for name, server in servers.items():
        ack_window(server, 2, f"{name}_warm_{time.time_ns()}", work)
    pairs = []
    print(f"{'pair':>4} {'first':>5} {'acks/s on':>9} {'acks/s off':>10}")
    for number in numbers:
        if time.monotonic() > stop_at:
            print("time budget spent, stopping")
            break
        order = SIDES if number % 2 == 0 else SIDES[::-1]
        pair = {side: ack_window(servers[side], args.ack_seconds,
                                 f"{side}_{number}_{time.time_ns()}", work) for side in order}
        pairs.append(pair)
        print(f"{number + 1:>4} {order[0]:>5} {pair['on']:>9.0f} {pair['off']:>10.0f}",
              flush=True)
    return pairs


def serve(trees, workers, env, stack, cpus=None):
    """Both sides' servers, started in ``stack`` in the order of ``trees``; with ``cpus``,
    every thread of their processes (and any they start later) runs only on those."""
    servers = {side: stack.enter_context(gunicorn(workers, {**env, **side_env}, cwd=tree))
               for side, (tree, side_env) in trees.items()}
    for server in servers.values() if cpus else ():
        for pid in (server.process.pid, *server.workers):
            for task in os.listdir(f"/proc/{pid}/task"):
                os.sched_setaffinity(int(task), cpus)
    return servers


def in_both_orders(trees, count, measure):
    """``measure(servers, numbers)`` for half of ``count`` pairs with "on" started and warmed
    first, then for the rest with "off" first, on fresh servers: the server started first
    came out behind by 15-35 % in runs of the same code against itself."""
    results = []
    for half, sides in enumerate((SIDES, SIDES[::-1])):
        numbers = range(count // 2) if half == 0 else range(count // 2, count)
        if numbers:
            with ExitStack() as stack:
                print(f"{sides[0]} started first")
                results.append(measure({side: trees[side] for side in sides}, numbers, stack))
    return results


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--pairs", type=int, default=30, help="pairs of voice bursts")
    parser.add_argument("-n", type=int, default=500, help="voice turns per burst")
    parser.add_argument("--ack-pairs", type=int, default=20, help="pairs of wrk windows")
    parser.add_argument("--ack-seconds", type=int, default=3, help="seconds per wrk window")
    parser.add_argument("--pin", action="store_true",
                        help="run this load generator (and wrk) on the first CPU and the "
                             "servers on the others, as where the platform is remote")
    parser.add_argument("--on", type=Path, metavar="DIR", default=ROOT,
                        help="serve this directory as the \"on\" side (default: the working "
                             "tree)")
    parser.add_argument("--against", type=Path, metavar="DIR",
                        help="serve this directory (a copy of another revision) as the "
                             "\"off\" side, as deployed: two versions of the code compared")
    parser.add_argument("--off", help="what the off side turns off, of " + ",".join(PARTS)
                        + " (default: all)")
    args = parser.parse_args()
    if args.against and args.off:
        parser.error("--off and --against are two different off sides: give one")
    if args.on != ROOT and not args.against:
        parser.error("--on needs --against: the switched-off copy is made of the working tree")
    args.off = [part.strip() for part in (args.off or ",".join(PARTS)).split(",")
                if part.strip()]
    if unknown := set(args.off) - set(PARTS):
        parser.error(f"--off: unknown {', '.join(sorted(unknown))}")
    if shutil.which("wrk") is None and args.ack_pairs:
        parser.error("wrk is not installed (or pass --ack-pairs 0)")
    raise_fd_limit(args.n * 4 + 512)
    server_cpus = None
    if args.pin:
        cpus = sorted(os.sched_getaffinity(0))
        if len(cpus) < 2:
            parser.error("--pin needs two CPUs or more")
        os.sched_setaffinity(0, cpus[:1])
        server_cpus = set(cpus[1:])
    stop_at = time.monotonic() + DEADLINE_SECONDS
    if args.against:
        dark = None
        trees = {"on": (args.on.resolve(), {"LOG_LEVEL": "INFO"}),
                 "off": (args.against.resolve(), {"LOG_LEVEL": "INFO"})}
        print(f"serving {describe_source(None)} (on) against {args.against} (off), both as "
              "deployed")
    else:
        dark = dark_copy(args.off)
        trees = {"on": (args.on.resolve(), {"LOG_LEVEL": "INFO"}),
                 "off": (dark, off_env(args.off))}
        print(f"serving {describe_source(None)}: on = as deployed, off = {dark} "
              f"({', '.join(args.off)} off)")
    try:
        if args.pairs:
            def measure_voice(ordered, numbers, stack):
                servers = serve(ordered, 1, {"DEMO_TOOL_LATENCY": 2.0}, stack, server_cpus)
                return asyncio.run(voice(servers, numbers, args, stop_at))

            halves = in_both_orders(trees, args.pairs, measure_voice)
            pairs = [pair for half, _ in halves for pair in half]
            cpus = [cpu for _, half in halves for cpu in half]
            report("first-line p99", " ms", pairs)
            for phase, name in enumerate(("until the last first line", "after it")):
                on, off = (statistics.median(cpu[side][phase] for cpu in cpus)
                           for side in SIDES)
                print(f"worker CPU per turn {name}: on {on:.0f} / off {off:.0f} µs "
                      f"({(on / off - 1) * 100:+.1f} %), medians of {len(cpus)} bursts")
        if args.ack_pairs:
            with tempfile.TemporaryDirectory() as work:
                def measure_acks(ordered, numbers, stack):
                    servers = serve(ordered, 2, {"JOB_RUNNER": "off"}, stack, server_cpus)
                    return acks(servers, numbers, args, stop_at, Path(work))

                halves = in_both_orders(trees, args.ack_pairs, measure_acks)
            report("acks/s", "", [pair for half in halves for pair in half])
    finally:
        if dark:
            shutil.rmtree(dark, ignore_errors=True)


if __name__ == "__main__":
    main()
