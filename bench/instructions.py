"""Instructions the app executes per delivery, counted by valgrind's callgrind: the same count
on every run, whatever else the machine is doing, so that a change of a few per cent can be
seen where CPU time swings by more than that.

For each revision (``git archive``; the working tree when none is given) and each side, "on"
as deployed and "off" with metrics, logs and the delivery log switched off as
``observability_cost.py`` does (``--off`` names fewer of them), one child process under
callgrind builds the app on a fresh SQLite file (job runner on, INFO lines to /dev/null) and
sends pre-signed deliveries through Flask's test client. Counters are zeroed and read around
each batch from inside the process (callgrind's client requests, through a small C helper
compiled here with gcc), after a full collection and ``gc.freeze()`` as in a server's worker:

- ``ack``: a text delivery's acknowledgement alone (a second app, job runner off), and its
  delivery-log row written: at saturation the acks take the CPU and the jobs wait, so this is
  what ``sms_acks.py``'s acks/s measure;
- ``text``: a text delivery and its job, until the job is done, and its delivery-log row
  written;
- ``voice``: a voice turn of the demo agent (no tool latency), all the batch's turns held
  after their interim line while the delivery log is written, then finished: each turn's
  row is written twice, in flight and ended, as in the server;
- ``access``: one gunicorn access line (gunicorn's own HTTP work is not included: the test
  client has none, and it is the same on both sides).

Needs valgrind, gcc and valgrind's headers (Debian's valgrind package). About a minute per
revision and side.

    .venv/bin/python bench/instructions.py 7400d87 HEAD
"""

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

from _server import describe_source, source_tree
from observability_cost import PARTS, SWITCHES

HELPER = r"""
#include <valgrind/callgrind.h>
void zero(void) { CALLGRIND_ZERO_STATS; }
void dump(const char *name) { CALLGRIND_DUMP_STATS_AT(name); }
"""

CHILD = r"""
import os, sys
from gevent import monkey
monkey.patch_all()
sys.path.insert(0, os.environ["TREE"])
import ctypes, datetime, gc, importlib.util, logging, tempfile, types
import gevent
from gunicorn.config import Config
from app import create_app, logs, metrics
from app.console import journal
from app.gunicorn_worker import AppLogger
from app.simulator import payload, signed_request
from app.store import get_store

SECRET, N, WARM = "whsec_bench_secret_0123456789abcdef", int(os.environ["N"]), 30
level = os.environ["LOG_LEVEL"]
helper = ctypes.CDLL(os.environ["HELPER"])


def build(job_runner):
    return create_app({
        "TESTING": True, "WEBHOOK_SECRETS": (SECRET,), "JOB_RUNNER": job_runner,
        "DATABASE_URL": "sqlite:///" + os.path.join(tempfile.mkdtemp(), "db.sqlite"),
        "DEMO_TOOL_LATENCY": 0.0, "AGENTPHONE_API_KEY": None})


ack_app = build(False)

# gunicorn's access logger as gunicorn.conf.py sets it up, then the app's handler again.
spec = importlib.util.spec_from_file_location("conf", os.path.join(os.environ["TREE"],
                                                                   "gunicorn.conf.py"))
conf = importlib.util.module_from_spec(spec)
spec.loader.exec_module(conf)
cfg = Config()
cfg.set("access_log_format", conf.access_log_format)
cfg.set("logconfig_dict", conf.logconfig_dict)
cfg.set("accesslog", "-" if os.environ["ACCESS"] else None)
access = AppLogger(cfg)
logs.configure(level, "text")
for name in ("", "gunicorn.access", "gunicorn.error"):
    for handler in logging.getLogger(name).handlers:
        handler.setStream(open(os.devnull, "w"))


# The delivery log and the metrics' counts are written by settle(), in the batch's count: run
# 50x slower, their timed flushes would each write a few deliveries' worth.
journal.FLUSH_SECONDS = metrics.FLUSH_SECONDS = 3600


def settle(app):  # the batch's jobs done, then its delivery-log rows and counts written
    with app.app_context():
        while app.config["JOB_RUNNER"] and get_store().open_job_counts():
            gevent.sleep(0.05)
    app.extensions[journal.EXTENSION].flush()
    getattr(metrics, "flush", lambda: None)()  # revisions before counts were kept in memory


# The job runner's app is made after the acks are counted: its runner polls the store on a
# timer, and under callgrind a batch takes 50x longer, so its polls would be counted with
# the acks, more for the slower side (~120k per ack in a batch of 200).
app = None
for kind, name in (("sms", "ack"), ("sms", "text"), ("voice", "voice")):
    if name == "ack":
        served = ack_app
    else:
        served = app = app or build(True)
    client = served.test_client()
    batch = [signed_request(SECRET, payload(kind, callId=f"call_{name}_{i}"))
             for i in range(N + WARM)]
    for raw, headers in batch[:WARM]:
        client.post("/webhook", data=raw, headers=headers).get_data()
    settle(served)
    # As gunicorn.conf.py's post_worker_init: what is alive now is never collected again,
    # and every batch starts with the collector's counts at zero (one full collection of the
    # whole heap, landing in one side's batch and not the other's, was ~95k per ack).
    gc.collect()
    gc.freeze()
    helper.zero()
    if name == "voice":
        # As in the server, where a turn lasts longer than a delivery-log flush: every turn's
        # row is written in flight, then again when its final line is out.
        streams = []
        for raw, headers in batch[WARM:]:
            response = client.post("/webhook", data=raw, headers=headers, buffered=False)
            assert response.status_code == 200, response.status_code
            lines = iter(response.response)
            next(lines)  # the interim line
            streams.append((response, lines))
        served.extensions[journal.EXTENSION].flush()
        for response, lines in streams:
            b"".join(lines)
            response.close()
    else:
        for raw, headers in batch[WARM:]:
            response = client.post("/webhook", data=raw, headers=headers)
            response.get_data()
            assert response.status_code == 200, response.status_code
    settle(served)
    helper.dump(name.encode())

resp = types.SimpleNamespace(status="200 OK", sent=12, headers=[
    ("Content-Type", "application/json"), ("Content-Length", "12")])
req = types.SimpleNamespace(headers=[
    ("HOST", "127.0.0.1:8000"), ("CONTENT-TYPE", "application/json"), ("CONTENT-LENGTH", "400"),
    ("X-WEBHOOK-ID", "whd_83d092e41f4d434799863bda288c5f86"), ("USER-AGENT", "python"),
    ("X-WEBHOOK-SIGNATURE", "sha256=" + "a" * 64), ("X-WEBHOOK-TIMESTAMP", "1764690000")])
environ = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "RAW_URI": "/webhook",
           "SERVER_PROTOCOL": "HTTP/1.1", "PATH_INFO": "/webhook", "QUERY_STRING": "",
           "HTTP_USER_AGENT": "python", "wsgi.url_scheme": "http", "HTTP_HOST": "127.0.0.1:8000",
           "HTTP_X_WEBHOOK_ID": "whd_83d092e41f4d434799863bda288c5f86"}
took = datetime.timedelta(microseconds=9000)
for _ in range(WARM):
    access.access(resp, req, environ, took)
gc.collect()
helper.zero()
for _ in range(N):
    access.access(resp, req, environ, took)
helper.dump(b"access")
"""

KINDS = ("ack", "text", "voice", "access")


def helper_library(work):
    source = work / "helper.c"
    source.write_text(HELPER)
    library = work / "helper.so"
    subprocess.run(["gcc", "-O1", "-shared", "-fPIC", "-o", str(library), str(source)],
                   check=True)
    return library


def switched_off(tree, work, parts):
    """A copy of ``tree`` with ``parts`` (of metrics, logs and the delivery log) switched off."""
    dark = Path(tempfile.mkdtemp(prefix="dark-", dir=work))
    shutil.copytree(tree, dark, dirs_exist_ok=True,
                    ignore=shutil.ignore_patterns(".venv", ".git", "instance", "__pycache__"))
    for part in parts:
        with (dark / PARTS[part]).open("a") as f:
            f.write(SWITCHES[PARTS[part]])
    return dark


def count(tree, logs_on, n, helper, work):
    """Instructions per delivery (and per access line) of one run under callgrind."""
    out = Path(tempfile.mkdtemp(prefix="cg-", dir=work))
    env = {**os.environ, "TREE": str(tree), "N": str(n), "HELPER": str(helper),
           "LOG_LEVEL": "INFO" if logs_on else "WARNING",
           "ACCESS": "1" if logs_on else "", "PYTHONHASHSEED": "0",
           "PROMETHEUS_MULTIPROC_DIR": tempfile.mkdtemp(prefix="prom-", dir=work)}
    child = out / "child.py"
    child.write_text(CHILD)
    done = subprocess.run(["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}/cg",
                           sys.executable, str(child)], env=env, capture_output=True, text=True,
                          check=False, cwd=str(tree))
    if done.returncode != 0:
        raise RuntimeError(f"the run in {tree} failed:\n{done.stderr[-3000:]}")
    figures = {}
    for dump in out.glob("cg.*"):
        text = dump.read_text(errors="replace")
        name = re.search(r"^desc: Trigger: Client Request: (\w+)", text, re.M)
        if name and name.group(1) in KINDS:
            total = int(re.search(r"^(?:summary|totals): (\d+)", text, re.M).group(1))
            figures[name.group(1)] = total / n
    if missing := set(KINDS) - set(figures):
        raise RuntimeError(f"the run in {tree} left no count for {', '.join(sorted(missing))}")
    return figures


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("revs", nargs="*", help="git revisions (default: the working tree)")
    parser.add_argument("-n", type=int, default=200, help="deliveries of each kind")
    parser.add_argument("--off", default=",".join(PARTS),
                        help="what the off side turns off, of " + ",".join(PARTS))
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    args.off = [part.strip() for part in args.off.split(",") if part.strip()]
    if unknown := set(args.off) - set(PARTS):
        parser.error(f"--off: unknown {', '.join(sorted(unknown))}")
    for tool in ("valgrind", "gcc"):
        if shutil.which(tool) is None:
            parser.error(f"{tool} is not installed")

    rows = []
    with tempfile.TemporaryDirectory(prefix="agentphone-instructions-") as name:
        work = Path(name)
        helper = helper_library(work)
        for rev in args.revs or [None]:
            with source_tree(rev) as tree:
                source = describe_source(rev)
                sides = {"on": count(tree, True, args.n, helper, work),
                         "off": count(switched_off(tree, work, args.off), "logs" not in args.off,
                                      args.n, helper, work)}
            row = {"source": source, **{f"{side}_{kind}": figures.get(kind)
                                        for side, figures in sides.items() for kind in KINDS}}
            rows.append(row)
            print(f"{source}: instructions per delivery, on / off ({', '.join(args.off)} off)")
            for kind in ("ack", "text", "voice"):
                on, off = row[f"on_{kind}"], row[f"off_{kind}"]
                # Access lines are counted on their own: with logs off, "on" has one more.
                with_access = (on + row["on_access"] - off) / off * 100
                access = f"; with the access line {with_access:+.1f} %" if "logs" in args.off \
                    else ""
                print(f"  {kind:<6} {on / 1e3:8.0f}k / {off / 1e3:8.0f}k  "
                      f"(+{(on - off) / 1e3:.0f}k, {(on - off) / off * 100:+.1f} %{access})")
            print(f"  access line {row['on_access'] / 1e3:.0f}k", flush=True)
    if args.json:
        args.json.write_text(json.dumps({"rows": rows, "n": args.n, "off": args.off}, indent=2))


if __name__ == "__main__":
    main()
