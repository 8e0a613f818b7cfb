"""CPU time the app spends per delivery, one revision against another: what metrics, logs and
the console's delivery log add, measured in a way a loaded machine disturbs little.

Each run is a fresh child process that builds the app of one revision (exported with
``git archive``) on a fresh SQLite file, sends pre-signed deliveries through Flask's test
client (no sockets, job runner off, metrics in a multiprocess directory as under gunicorn)
and reports the process CPU time per delivery: texts (claim + job insert + acknowledgement)
and voice turns (claim + the streamed turn of the demo agent, no tool latency). Runs of the
revisions alternate, so both see the same neighbours.

``--server`` measures the same on the real server instead: one gunicorn gevent worker (job
runner on, access log and INFO lines as deployed), deliveries sent one at a time over one
kept-alive connection, the worker's CPU time read from its process CPU clock. Nothing queues,
so the figure is the cost of a delivery, gunicorn's parsing, writing and logging included.
"""

import argparse
import contextlib
import http.client
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _server import SECRET, cpu_seconds, describe_source, gunicorn, median, source_tree

from app.simulator import payload, signed_request

SETTLE_SECONDS = 0.3  # after a batch: the texts' jobs run
BETWEEN_KINDS_SECONDS = 1.5  # the delivery log's flush (every second) lands in no batch
IDLE_SECONDS = 3.0  # idle CPU measured over this (periodic work: job polls, log flushes)
STEPS = 10  # batches per run and kind

CHILD = r"""
import os
if os.environ.get("GEVENT"):  # patched as in a gunicorn gevent worker
    from gevent import monkey
    monkey.patch_all()
import json, logging, sys, time
from app import create_app
from app.simulator import payload, signed_request

n_text, n_voice = int(sys.argv[1]), int(sys.argv[2])
app = create_app({"TESTING": True, "WEBHOOK_SECRETS": (os.environ["SECRET"],),
                  "DATABASE_URL": "sqlite:///" + os.environ["DB"], "JOB_RUNNER": False,
                  "DEMO_TOOL_LATENCY": 0.0, "AGENTPHONE_API_KEY": None})
client = app.test_client()
texts = [signed_request(os.environ["SECRET"], payload("sms", f"hello {i}")) for i in range(n_text)]
voices = [signed_request(os.environ["SECRET"], payload("voice", "What are your hours?",
                                                       callId=f"call_{i}"))
          for i in range(n_voice)]
for raw, headers in texts[:50] + voices[:20]:  # warm-up
    client.post("/webhook", data=raw, headers=headers).get_data()
out = {}
for name, batch in (("text", texts[50:]), ("voice", voices[20:])):
    cpu = time.process_time()
    for raw, headers in batch:
        response = client.post("/webhook", data=raw, headers=headers)
        response.get_data()
        assert response.status_code == 200
    out[name] = (time.process_time() - cpu) / len(batch) * 1e6
logging.shutdown()
print(json.dumps(out))
"""


def one_run(tree, n_text, n_voice, gevent=False):
    with tempfile.TemporaryDirectory(prefix="agentphone-cpu-") as tmp:
        metrics = Path(tmp) / "prometheus"  # as under gunicorn: values in shared files
        metrics.mkdir()
        env = {**os.environ, "PYTHONPATH": str(tree), "SECRET": SECRET,
               "DB": str(Path(tmp) / "cpu.db"), "AGENTPHONE_WEBHOOK_SECRET": SECRET,
               "LOG_LEVEL": "INFO", "PROMETHEUS_MULTIPROC_DIR": str(metrics)}
        env.pop("AGENTPHONE_DEV", None)
        if gevent:
            env["GEVENT"] = "1"
        result = subprocess.run([sys.executable, "-c", CHILD, str(n_text + 50),
                                 str(n_voice + 20)], cwd=tmp, env=env, capture_output=True,
                                text=True, timeout=600)
    if result.returncode:
        raise RuntimeError(result.stderr[-3000:])
    return json.loads(result.stdout.strip().splitlines()[-1])


class ServedSide:
    """One revision served by a real gunicorn (one gevent worker), fed over one kept-alive
    connection, its worker's CPU time read with ``cpu_seconds``."""

    def __init__(self, server):
        self.pid = server.workers[0]
        self.conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=30)
        self.sent = 0
        self.idle = 0.0  # worker CPU per SETTLE_SECONDS with nothing to do

    def batch(self, kind, n):
        """Worker CPU seconds for ``n`` deliveries of ``kind`` sent one at a time, and their
        aftermath (a text's job) until SETTLE_SECONDS of quiet; that pause's idle CPU is
        left out."""
        requests = []
        for _ in range(n):
            self.sent += 1
            requests.append(signed_request(SECRET, payload(kind, callId=f"call_{self.sent}")))
        before = cpu_seconds(self.pid)
        for raw, headers in requests:
            self.conn.request("POST", "/webhook", raw, headers)
            response = self.conn.getresponse()
            response.read()
            if response.status != 200:
                raise RuntimeError(f"{kind} delivery answered {response.status}")
        time.sleep(SETTLE_SECONDS)
        return cpu_seconds(self.pid) - before - self.idle

    def measure_idle(self):
        before = cpu_seconds(self.pid)
        time.sleep(IDLE_SECONDS)
        self.idle = (cpu_seconds(self.pid) - before) * SETTLE_SECONDS / IDLE_SECONDS


def server_runs(served, runs, n_text, n_voice):
    """Per run and side, worker CPU (µs) per text and per voice turn; ``served`` maps each
    side's name to its ``(tree, env)``. The servers run side by side and their batches
    alternate in small steps, so a machine whose speed drifts (a shared host) moves all
    alike. Each kind's batches run together, a pause apart from the other kind's."""
    with contextlib.ExitStack() as stack:
        sides = {name: ServedSide(stack.enter_context(
            gunicorn(1, {"DEMO_TOOL_LATENCY": "0", **env}, cwd=tree)))
            for name, (tree, env) in served.items()}
        for side in sides.values():
            side.batch("sms", 50)
            side.batch("voice", 20)
        for run in range(runs):
            time.sleep(BETWEEN_KINDS_SECONDS)
            for side in sides.values():
                side.measure_idle()
            figures = {name: {} for name in sides}
            for kind, n in (("text", n_text), ("voice", n_voice)):
                time.sleep(BETWEEN_KINDS_SECONDS)
                per_batch = n // STEPS
                totals = dict.fromkeys(sides, 0.0)
                for step in range(STEPS):
                    order = list(sides) if (run + step) % 2 == 0 else list(sides)[::-1]
                    for name in order:
                        totals[name] += sides[name].batch("sms" if kind == "text" else "voice",
                                                          per_batch)
                for name, cpu in totals.items():
                    figures[name][kind] = cpu / (per_batch * STEPS) * 1e6
            yield figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("revs", nargs=2, help="two git revisions, e.g. e1211bf HEAD")
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--voice", type=int, default=500)
    parser.add_argument("--gevent", action="store_true",
                        help="monkey-patch the child as a gevent worker is (the process CPU "
                        "then includes the store's threads)")
    parser.add_argument("--server", action="store_true",
                        help="measure the worker of a real gunicorn instead (see above)")
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    if args.server and min(args.texts, args.voice) < STEPS:
        parser.error(f"--server sends each kind in {STEPS} batches: at least {STEPS} of each")
    results = {rev: [] for rev in args.revs}
    with source_tree(args.revs[0]) as first, source_tree(args.revs[1]) as second:
        trees = dict(zip(args.revs, (first, second), strict=True))
        if args.server:
            runs = server_runs({rev: (tree, {}) for rev, tree in trees.items()}, args.runs,
                               args.texts, args.voice)
        else:
            runs = ({rev: one_run(trees[rev], args.texts, args.voice, args.gevent)
                     for rev in args.revs} for _ in range(args.runs))
        for run, by_rev in enumerate(runs, start=1):
            for rev, figures in by_rev.items():
                results[rev].append(figures)
                print(f"run {run} {rev:>10}: text {figures['text']:.0f} us, "
                      f"voice {figures['voice']:.0f} us", flush=True)
    print(f"\nCPU per delivery, median of {args.runs} runs [min-max]")
    summary = {}
    for rev in args.revs:
        summary[rev] = {"source": describe_source(rev)}
        cells = []
        for kind in ("text", "voice"):
            values = [r[kind] for r in results[rev]]
            summary[rev][kind] = median(values)
            cells.append(f"{kind} {median(values):.0f} us [{min(values):.0f}-{max(values):.0f}]")
        print(f"{rev:>10} ({summary[rev]['source']}): " + ", ".join(cells))
    base, new = (summary[rev] for rev in args.revs)
    for kind in ("text", "voice"):
        print(f"{kind}: {(new[kind] / base[kind] - 1) * 100:+.1f} % CPU per delivery")
    if args.json:
        args.json.write_text(json.dumps({"runs": results, "summary": summary}, indent=2))


if __name__ == "__main__":
    main()
