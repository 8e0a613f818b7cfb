"""gunicorn settings for every deployment (Procfile, VM); each value can come from the env."""

import gc
import os
import shutil

from app import config as app_settings  # not `config`: gunicorn reads that name as a setting
from app import logs

# Before PORT and WEB_CONCURRENCY are read: the app would load .env only in the workers, too
# late for them. Real environment variables win, as in the app.
app_settings.load_dotenv_file()

bind = f"0.0.0.0:{app_settings.env('PORT')}"
workers = int(app_settings.env("WEB_CONCURRENCY"))
# gevent, plus a read deadline per request and a 503 past worker_connections.
worker_class = "app.gunicorn_worker.HygienicGeventWorker"
# Each held voice stream is one connection: this caps concurrent calls per worker.
worker_connections = int(app_settings.env("WORKER_CONNECTIONS"))
# Voice turns stream for up to VOICE_TIMEOUT (max 120 s); gevent workers are not killed by
# timeout while streaming, but the master's heartbeat check needs headroom.
timeout = 150
graceful_timeout = 30
keepalive = 75
accesslog = os.environ.get("GUNICORN_ACCESS_LOG", "-") or None  # "" turns access lines off
logger_class = "app.gunicorn_worker.AppLogger"
errorlog = "-"
loglevel = app_settings.read("LOG_LEVEL").lower()
# gunicorn's error and access lines go through the app's handler: one stream, one format.
logconfig_dict = logs.logconfig(app_settings.read("LOG_FORMAT"), loglevel.upper())
# Each process writes its lines from a thread: a log reader that stalls never stops a worker.
logs.write_in_background()
# One fixed control-socket path per user would collide between instances on one machine.
control_socket_disable = True
access_log_format = ('access %(h)s "%(r)s" %(s)s %(b)s %(M)sms '
                     'delivery=%({x-webhook-id}i)s')
# gevent's spawning-greenlet tree and stack copies are debugging aids held by every connection;
# GEVENT_TRACK_GREENLET_TREE=1 in the environment brings them back.
os.environ.setdefault("GEVENT_TRACK_GREENLET_TREE", "0")


def on_starting(server):
    """Give every process one metrics directory, emptied of a previous run's files."""
    path = os.environ.get("PROMETHEUS_MULTIPROC_DIR") or os.path.join(
        os.path.dirname(os.path.abspath(__file__)), "instance", "prometheus")
    shutil.rmtree(path, ignore_errors=True)
    os.makedirs(path, exist_ok=True)
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = path


def child_exit(server, worker):
    """A worker's live gauges (voice turns in flight) leave the totals with it."""
    from prometheus_client import multiprocess

    multiprocess.mark_process_dead(worker.pid)


def post_worker_init(worker):
    """Freeze start-up objects out of the garbage collector (a full collection walking them
    stops every held stream), watch the event loop for blocks, then start this
    worker's job runner, so that jobs left by a crash run without waiting for the next
    request. In development mode the first worker logs the webhook URL at the address really
    bound."""
    gc.collect()
    gc.freeze()
    from app import loopwatch  # in the worker: the app is imported after gevent's patching
    from app.jobs import get_job_runner

    app = worker.wsgi
    loopwatch.start(app.config["LOOP_BLOCK_THRESHOLD"])
    if app.config["JOB_RUNNER"]:
        get_job_runner(app).start()
    if worker.age == 1:  # the first worker speaks for all: one banner per server
        from app import log_dev_banner

        for listener in worker.sockets:
            address = listener.getsockname()
            if isinstance(address, tuple):  # TCP, not a unix socket
                log_dev_banner(app, *address[:2])


def worker_exit(server, worker):
    """On a graceful stop (a deploy, SIGTERM) let this worker's running jobs finish for up to
    JOB_GRACE seconds and hand the rest back to the queue, rather than leave them to wait out
    their lease; write the console's last delivery-log rows; then close the store's
    connections."""
    app = getattr(worker, "wsgi", None)
    if app is None:
        return
    from app.console.journal import get_journal
    from app.jobs import get_job_runner
    from app.store import get_store

    if app.config["JOB_RUNNER"]:
        get_job_runner(app).stop()
    get_journal(app).flush(last=True)  # the console's last rows, turns in flight among them
    get_store(app).close()
