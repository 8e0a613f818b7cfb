"""What metrics, logs and the console's delivery log cost: the same code served with them
on and with them off, in alternating runs.

"On" is the working tree as deployed by default: Prometheus metrics, INFO logs, gunicorn's
access lines, the delivery log. "Off" is a copy of the same files in which every metric is a
no-op, ``logs.bind`` does nothing and the delivery log keeps no row, served with
``LOG_LEVEL=WARNING`` and no access log; ``--off logs`` (or ``metrics``, ``journal``, a
comma list) turns off only those parts, to see what each costs. Each round runs
``voice_streams.py -n N --runs 1`` and ``sms_acks.py --job-runner on --runs 1`` against
both, in turn (the order alternates from round to round), so that a machine whose speed
drifts penalises neither side.

Reported: per round, the voice first-line p99 and the text acks/s of each side; then their
medians over the rounds, and how much "on" differs from "off" (the target: first-line p99
at most 10 % higher, acks/s at most 10 % lower).

Those wall-clock figures swing 2-5x from run to run on a shared machine. Last, the worker
CPU per text and per voice turn of each side is measured with both served side by side
(``delivery_cpu.server_runs``: deliveries one at a time, batches alternating), which a
drifting machine moves alike: ``--cpu-runs`` runs of ``--cpu-deliveries`` of each kind.

    .venv/bin/python bench/observability_cost.py --rounds 5 --json bench/results/obs.json
"""

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _server import ROOT, describe_source, fmt, median, summarize_by
from delivery_cpu import server_runs

BENCH = Path(__file__).resolve().parent

# Appended to the copy's modules: everything observability does per delivery, turned off.
SWITCHES = {
    "app/metrics.py": '''

class _Off:
    """A metric that records nothing."""

    def labels(self, *args, **kwargs):
        return self

    def inc(self, *args, **kwargs):
        pass

    dec = set = observe = inc


for _name, _value in list(globals().items()):
    if isinstance(_value, (Counter, Gauge, Histogram)):
        globals()[_name] = _Off()
''',
    "app/logs.py": '''

def bind(**fields):
    pass
''',
    "app/console/journal.py": '''

Journal._add = lambda self, row: None
''',
}


PARTS = {"metrics": "app/metrics.py", "logs": "app/logs.py", "journal": "app/console/journal.py"}


def dark_copy(parts=tuple(PARTS)):
    """A temporary copy of the working tree's tracked files with the SWITCHES of ``parts``
    applied."""
    tree = Path(tempfile.mkdtemp(prefix="agentphone-dark-"))
    files = subprocess.run(["git", "-C", str(ROOT), "ls-files", "-z"], capture_output=True,
                           check=True).stdout.decode().split("\0")
    for name in filter(None, files):
        source = ROOT / name
        if source.is_file():
            (tree / name).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source, tree / name)
    for part in parts:
        with (tree / PARTS[part]).open("a") as f:
            f.write(SWITCHES[PARTS[part]])
    return tree


def run_json(script, args, tries=2):
    """Run a sibling benchmark with ``--json``; returns its summary's first row. A run that
    fails (a server that did not come up, say) is shown and tried once more."""
    for attempt in range(1, tries + 1):
        with tempfile.NamedTemporaryFile(suffix=".json") as out:
            done = subprocess.run([sys.executable, str(BENCH / script), *args, "--json",
                                   out.name], capture_output=True, text=True, check=False)
            if done.returncode == 0:
                return json.loads(Path(out.name).read_text())["summary"][0]
        print(f"{script} failed (try {attempt} of {tries}):\n{(done.stdout + done.stderr)[-2000:]}",
              file=sys.stderr)
    raise RuntimeError(f"{script} failed {tries} times")


def off_env(parts):
    """The "off" side's settings: logs off means WARNING and no access lines."""
    if "logs" in parts:
        return {"LOG_LEVEL": "WARNING", "GUNICORN_ACCESS_LOG": ""}
    return {"LOG_LEVEL": "INFO"}


def measure(side, dark, args):
    """One voice run and one SMS run of ``side`` ("on" or "off")."""
    env = off_env(args.off) if side == "off" else {"LOG_LEVEL": "INFO"}
    common = ["--log-level", env["LOG_LEVEL"]]
    if "GUNICORN_ACCESS_LOG" in env:
        common.append("--quiet")
    if side == "off":
        common += ["--rev", str(dark)]
    voice = run_json("voice_streams.py", ["-n", str(args.n), "--runs", "1", *common])
    texts = run_json("sms_acks.py", ["--job-runner", "on", "--runs", "1", "--duration",
                                     str(args.duration), *common])
    return {"side": side, "first_p99_ms": voice["first_p99_ms"]["median"],
            "first_p50_ms": voice["first_p50_ms"]["median"],
            "cpu_us_per_turn": voice["cpu_us_per_turn"]["median"],
            "acks_per_s": texts["acks_per_s"]["median"], "ack_p99_ms": texts["p99_ms"]["median"]}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("-n", type=int, default=500, help="held voice calls")
    parser.add_argument("--duration", type=int, default=5, help="seconds of SMS load per run")
    parser.add_argument("--cpu-runs", type=int, default=4)
    parser.add_argument("--cpu-deliveries", type=int, default=400,
                        help="texts and voice turns per side and CPU run")
    parser.add_argument("--off", default=",".join(PARTS),
                        help="what the off side turns off, of " + ",".join(PARTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.off = [part.strip() for part in args.off.split(",") if part.strip()]
    if unknown := set(args.off) - set(PARTS):
        parser.error(f"--off: unknown {', '.join(sorted(unknown))}")

    dark = dark_copy(args.off)
    rows = []
    keys = ("first_p50_ms", "first_p99_ms", "cpu_us_per_turn", "acks_per_s", "ack_p99_ms")
    try:
        print(f"serving {describe_source(None)}: on = as deployed, off = {dark} "
              f"({', '.join(args.off)} off)")
        print(f"{'round':>5} {'side':>4} {'first p50':>9} {'first p99':>9} {'CPU µs/turn':>11} "
              f"{'acks/s':>7} {'ack p99':>8}")
        for number in range(1, args.rounds + 1):
            for side in (("on", "off") if number % 2 else ("off", "on")):
                row = {"round": number, **measure(side, dark, args)}
                rows.append(row)
                print(f"{number:>5} {side:>4} " + " ".join(
                    f"{fmt(row[k]):>{w}}" for k, w in zip(keys, (9, 9, 11, 7, 8), strict=True)),
                    flush=True)
        cpu = {"on": [], "off": []}
        runs = ()  # with no CPU runs, no servers are started for them
        if args.cpu_runs:
            print(f"worker CPU per delivery, {args.cpu_deliveries} of each kind per run:")
            runs = server_runs({"on": (ROOT, {"LOG_LEVEL": "INFO"}),
                                "off": (dark, off_env(args.off))},
                               args.cpu_runs, args.cpu_deliveries, args.cpu_deliveries)
        for run in runs:
            for side, figures in run.items():
                cpu[side].append(figures)
            print("  " + ", ".join(f"{side} text {fmt(f['text'], '.0f')} µs voice "
                                   f"{fmt(f['voice'], '.0f')} µs" for side, f in run.items()),
                  flush=True)
    finally:
        shutil.rmtree(dark, ignore_errors=True)
    cpu_rise = {}
    for kind in ("text", "voice") if args.cpu_runs else ():
        on_cpu, off_cpu = (median([f[kind] for f in cpu[side]]) for side in ("on", "off"))
        cpu_rise[kind] = (on_cpu / off_cpu - 1) * 100
        print(f"CPU per {kind}: on {on_cpu:.0f} / off {off_cpu:.0f} µs "
              f"({cpu_rise[kind]:+.1f} %), medians of {args.cpu_runs} runs")
    summary, p99_rise, acks_fall = {}, None, None
    if rows:
        summary = {s["side"]: s for s in summarize_by(rows, "side", keys)}
        on, off = ({k: summary[side][k]["median"] for k in keys} for side in ("on", "off"))
        p99_rise = (on["first_p99_ms"] / off["first_p99_ms"] - 1) * 100
        acks_fall = (1 - on["acks_per_s"] / off["acks_per_s"]) * 100
        print(f"medians over {args.rounds} rounds: first-line p99 on "
              f"{fmt(on['first_p99_ms'])} / off {fmt(off['first_p99_ms'])} ms "
              f"({p99_rise:+.1f} %); acks/s on {fmt(on['acks_per_s'], '.0f')} / off "
              f"{fmt(off['acks_per_s'], '.0f')} ({-acks_fall:+.1f} %)")
        paired = {key: paired_change(rows, key) for key in ("first_p99_ms", "acks_per_s")}
        print(f"median of the rounds' own changes (on against the off run beside it): "
              f"first-line p99 {fmt(paired['first_p99_ms'], '+.1f')} %, "
              f"acks/s {fmt(paired['acks_per_s'], '+.1f')} %")
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps({"config": vars(args) | {"json": str(args.json)},
                                         "rounds": rows, "summary": summary,
                                         "first_p99_rise_pct": p99_rise,
                                         "acks_fall_pct": acks_fall,
                                         "paired_change_pct": paired if rows else {},
                                         "cpu": cpu, "cpu_rise_pct": cpu_rise}, indent=2))

def paired_change(rows, key):
    """The median over rounds of each round's own change, on against off, in per cent: a
    host whose speed drifts between rounds moves both runs of a round alike."""
    sides = {}
    for row in rows:
        sides.setdefault(row["round"], {})[row["side"]] = row[key]
    changes = [(pair["on"] / pair["off"] - 1) * 100 for pair in sides.values()
               if pair.get("on") and pair.get("off")]
    return median(changes) if changes else None


if __name__ == "__main__":
    main()
