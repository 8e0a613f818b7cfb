"""Start and stop the Procfile's web command for a benchmark run, on loopback only.

The command is the Procfile's ``gunicorn -c gunicorn.conf.py wsgi:app`` with ``--bind
127.0.0.1:<free port>`` added (gunicorn.conf.py would bind 0.0.0.0). Every process started
here is stopped by its pid when the ``gunicorn`` context exits, also on errors and Ctrl-C.
"""

import contextlib
import http.client
import json
import os
import resource
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SECRET = "whsec_bench_secret_0123456789abcdef"

# Run as `python bench/<script>.py`: the repository root on the path lets the benchmarks import
# app (the signer) and tests.servers, whose loopback helpers they share with the test suite
# (project tooling, so tests/ rather than the installed app package).
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.servers import ROOT, free_port, stop_process, web_command  # noqa: E402


def raise_fd_limit(wanted):
    """Raise this process's open-file limit (children inherit it) to ``wanted`` if allowed."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
    if soft < target:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    return resource.getrlimit(resource.RLIMIT_NOFILE)[0]


def rss_kib(pid):
    """VmRSS of ``pid`` in KiB (from /proc/<pid>/status)."""
    with open(f"/proc/{pid}/status") as f:
        for row in f:
            if row.startswith("VmRSS:"):
                return int(row.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


def cpu_seconds(pid):
    """CPU time of process ``pid``, every thread's (ended ones too), to the nanosecond: the
    kernel's CPU clock of that process. The clock ticks of ``/proc/<pid>/stat`` (10 ms) are
    too coarse for a batch of a few deliveries."""
    return time.clock_gettime(((~pid) << 3) | 2)  # CPUCLOCK_SCHED of the process (Linux)


def children(pid):
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(p) for p in f.read().split()]
    except FileNotFoundError:
        return []


def http_get(port, path, timeout=2.0):
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        conn.request("GET", path)
        resp = conn.getresponse()
        return resp.status, resp.read()
    finally:
        conn.close()


class Server:
    def __init__(self, process, port, log_path, workers):
        self.process = process
        self.port = port
        self.url = f"http://127.0.0.1:{port}"
        self.log_path = log_path
        self.expected_workers = workers
        self.workers = []

    def log_tail(self, chars=3000):
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except FileNotFoundError:
            return ""

    def wait_ready(self, timeout=30.0):
        """Healthy, with every worker booted and answering."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.process.poll() is not None:
                raise RuntimeError(f"gunicorn exited:\n{self.log_tail()}")
            self.workers = children(self.process.pid)
            if len(self.workers) == self.expected_workers:
                with contextlib.suppress(OSError):
                    status, body = http_get(self.port, "/healthz", timeout=1.0)
                    if status == 200 and json.loads(body).get("ok"):
                        return self
            time.sleep(0.1)
        raise RuntimeError(f"gunicorn not ready after {timeout:.0f}s:\n{self.log_tail()}")

    def stop(self):
        """SIGTERM the master (graceful), then SIGKILL it and its workers if they linger."""
        pids = [*self.workers, *children(self.process.pid)]
        stop_process(self.process, signal.SIGTERM, 15)
        for pid in set(pids):
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.kill(pid, 0)
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def source_tree(rev=None):
    """The directory to serve from: the working tree, or ``rev`` exported with ``git archive``
    to a temporary directory (others may be editing the working tree during a benchmark)."""
    if rev is None:
        yield ROOT
        return
    if Path(rev).is_dir():  # a copy with a change to measure, outside the working tree
        yield Path(rev).resolve()
        return
    tree = Path(tempfile.mkdtemp(prefix="agentphone-src-"))
    try:
        archive = subprocess.run(["git", "-C", str(ROOT), "archive", "--format=tar", rev],
                                 capture_output=True, check=True).stdout
        subprocess.run(["tar", "-x", "-C", str(tree)], input=archive, check=True)
        yield tree
    finally:
        shutil.rmtree(tree, ignore_errors=True)


def announce_source(rev):
    """Print which code is served and return it as ``describe_source`` tells it."""
    source = describe_source(rev)
    print(f"serving {source} ({'git archive of ' + rev if rev else 'working tree'})")
    return source


def describe_source(rev):
    """``rev`` as a short commit id, or the working tree's HEAD plus '+dirty' when edited."""
    def git(*a):
        return subprocess.run(["git", "-C", str(ROOT), *a], capture_output=True, text=True,
                              check=False).stdout.strip()
    if rev is not None and Path(rev).is_dir():
        return f"directory {Path(rev).resolve()}"
    if rev is not None:
        return git("rev-parse", "--short", rev)
    dirty = git("status", "--porcelain", "--untracked-files=no", "--", "app", "wsgi.py",
                "gunicorn.conf.py")
    return git("rev-parse", "--short", "HEAD") + ("+dirty" if dirty else "")


@contextlib.contextmanager
def gunicorn(workers, env, database_url=None, keep_dir=False, cwd=ROOT, output_pipe=False):
    """Yield a ready Server: ``workers`` gevent workers, ``env`` added to the environment,
    a fresh SQLite file unless ``database_url`` is given, the app loaded from ``cwd``. Its
    output goes to a file, or with ``output_pipe`` to a pipe (``server.output``) that nothing
    reads until the caller does."""
    workdir = Path(tempfile.mkdtemp(prefix="agentphone-bench-"))
    port = free_port()
    log_path = workdir / "gunicorn.log"
    full_env = {
        **os.environ,
        "PORT": str(port),
        "WEB_CONCURRENCY": str(workers),
        "AGENTPHONE_WEBHOOK_SECRET": SECRET,
        "DATABASE_URL": database_url or "sqlite:///" + str(workdir / "bench.db"),
        "PYTHONUNBUFFERED": "1",
        "PYTHONPATH": str(cwd),
        **{k: str(v) for k, v in env.items()},
    }
    full_env.pop("AGENTPHONE_DEV", None)
    with log_path.open("w") as log_file:
        process = subprocess.Popen(web_command(port), cwd=cwd, env=full_env,
                                   stdout=subprocess.PIPE if output_pipe else log_file,
                                   stderr=subprocess.STDOUT, start_new_session=True)
    server = Server(process, port, log_path, workers)
    server.output = process.stdout
    server.workdir = workdir
    server.database_url = full_env["DATABASE_URL"]
    ok = False
    try:
        server.wait_ready()
        yield server
        ok = True
    finally:
        server.stop()
        if not (keep_dir and ok):
            shutil.rmtree(workdir, ignore_errors=True)


@contextlib.contextmanager
def py_spy(pids, out_dir, label, rate=200, idle=False):
    """Sample ``pids`` with py-spy (collapsed stacks, one file per pid) while the block runs;
    a no-op when ``out_dir`` is None. py-spy must be installed (``pip install py-spy``).
    ``idle``: also the samples where the process waits (wall-clock view: lock and I/O waits)."""
    if out_dir is None:
        yield
        return
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    out_dir.mkdir(parents=True, exist_ok=True)
    procs = []
    for pid in pids:
        cmd = [exe, "record", "--pid", str(pid), "--rate", str(rate), "--format", "raw",
               "--nonblocking", "--output", str(out_dir / f"{label}-{pid}.txt")]
        if idle:
            cmd.append("--idle")
        procs.append(subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL))
    time.sleep(0.5)  # py-spy attaches
    try:
        yield
    finally:
        for proc in procs:
            proc.send_signal(signal.SIGINT)  # py-spy writes its file on SIGINT
        for proc in procs:
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(5)


def add_common_options(parser):
    """The options both benchmarks take: which code to serve, on which store, what to log,
    where to write the results."""
    parser.add_argument("--log-level", default="INFO", help="LOG_LEVEL of the server")
    parser.add_argument("--quiet", action="store_true",
                        help="turn gunicorn's access log off (GUNICORN_ACCESS_LOG=)")
    parser.add_argument("--rev", help="serve this git revision (exported with git archive), "
                        "e.g. HEAD, or this directory (a copy with a change), instead of the "
                        "working tree")
    parser.add_argument("--database-url", help="e.g. postgresql://... (default: fresh SQLite)")
    parser.add_argument("--json", type=Path, help="write every run and the summary here")


def server_env(args, **env):
    """``env`` for the server, with the common options' log level and, with --quiet, no
    access log."""
    env["LOG_LEVEL"] = args.log_level
    if args.quiet:
        env["GUNICORN_ACCESS_LOG"] = ""
    return env


def write_results(args, source, rows, summary, **config):
    """With --json: every run, the summary and the settings that produced them."""
    if not args.json:
        return
    args.json.parent.mkdir(parents=True, exist_ok=True)
    settings = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}
    settings.update(config, source=source,
                    database_url="postgresql" if args.database_url else "sqlite (fresh file)")
    args.json.write_text(json.dumps({"config": settings, "runs": rows, "summary": summary},
                                    indent=2))


def fmt(value, spec=".1f"):
    return "-" if value is None else format(value, spec)


def range_cell(stats, spec=".1f"):
    """A summary cell: median [min-max] of one figure over the runs."""
    return f"{fmt(stats['median'], spec)} [{fmt(stats['min'], spec)}-{fmt(stats['max'], spec)}]"


def percentile(sorted_values, q):
    """Nearest-rank percentile of an already sorted list (None when empty)."""
    if not sorted_values:
        return None
    rank = max(1, -(-len(sorted_values) * q // 100))  # ceil(n*q/100)
    return sorted_values[int(rank) - 1]


def spread(values):
    """The median, min and max of ``values`` (None where a run had no figure)."""
    present = [v for v in values if v is not None]
    return {"median": median(present), "min": min(present, default=None),
            "max": max(present, default=None)}


def summarize_by(rows, field, figures):
    """Per value of ``field``, in the order first met: how many runs, and the ``spread`` of
    each of ``figures`` over them."""
    out = []
    for value in dict.fromkeys(r[field] for r in rows):
        group = [r for r in rows if r[field] == value]
        out.append({field: value, "runs": len(group),
                    **{key: spread(r[key] for r in group) for key in figures}})
    return out


def median(values):
    values = sorted(v for v in values if v is not None)
    if not values:
        return None
    mid = len(values) // 2
    return values[mid] if len(values) % 2 else (values[mid - 1] + values[mid]) / 2
