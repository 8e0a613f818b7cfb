"""The application factory: builds the Flask app and its services from the configuration."""

import ipaddress
import time
from collections.abc import Callable, Mapping
from typing import Any

import click
import flask.cli
from flask import Flask

from app import errors, logs
from app.config import from_env, from_mapping, load_dotenv_file
from app.logs import configure as configure_logging


def create_app(config: Mapping[str, Any] | None = None, *, require_secret: bool = True,
               clock: Callable[[], float] = time.time) -> Flask:
    """Build the app and its services.

    ``config`` None: the settings come from the environment (and ``.env``), as in every
    deployment. A mapping of config keys replaces the environment entirely: the settings
    table's defaults fill in the rest (see ``app.config.from_mapping``), so nothing in the
    caller's environment leaks in.

    ``require_secret=False`` is for processes that take no webhooks (the job worker, the CLI):
    they start without a webhook secret, and would reject every delivery. ``clock`` gives the
    time in seconds since the epoch to the store (what it records) and to the signature check
    (how old a delivery is).

    Services start in this order, each using only those before it (their accessors:
    ``get_store``, ``get_agent``, ``get_job_runner``, ``get_voice_claims``,
    ``get_webhook_secrets``, ``get_journal``):

    1. store: opened and migrated (every other service reads or writes it);
    2. agents: built by their factories, which may add tables to the store (the demo);
    3. job runner: runs queued jobs with the agents;
    4. webhook: voice claims and the secret source, both on the store; the blueprint wakes
       the job runner;
    5. health, metrics, console (its delivery log, on the store), then the CLI commands.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False  # type: ignore[attr-defined]  # Flask's DefaultJSONProvider
    if config is None:
        load_dotenv_file()
        app.config.update(from_env(app.instance_path, require_secret=require_secret))
    else:
        app.config.update(from_mapping(config, app.instance_path))
    configure_logging(app.config["LOG_LEVEL"], app.config["LOG_FORMAT"])
    if (address := _flask_run_address()) is not None:
        log_dev_banner(app, *address)

    from app import agent, console, health, jobs, metrics, store, webhook
    from app import cli as cli_commands

    app.before_request(logs.clear)  # a kept-alive connection's next request starts afresh
    errors.init_app(app)
    store.init_app(app, clock)
    try:
        agent.init_app(app)
        jobs.init_app(app)
        webhook.init_app(app, require_secret=require_secret, clock=clock)
        health.init_app(app)
        metrics.init_app(app)
        console.init_app(app)
        cli_commands.init_app(app)
    except BaseException:
        store.get_store(app).close()  # an app that failed to build keeps no connections
        raise
    return app


def log_dev_banner(app, host, port):
    """In development mode, log the webhook URL this server answers at and the secret that
    signs for it. Only the web servers call it, once they know the address they listen on."""
    if not app.config["DEV_MODE"]:
        return
    host = _reachable_host(host)
    app.logger.warning("development mode: webhook URL http://%s:%s/webhook, secret %s",
                       f"[{host}]" if ":" in host else host, port,
                       app.config["WEBHOOK_SECRETS"][0])


def _reachable_host(host):
    """The host to send to for a server listening on ``host``: loopback for a wildcard."""
    try:
        wildcard = not host or ipaddress.ip_address(host).is_unspecified
    except ValueError:  # a name, such as localhost
        return host
    return "127.0.0.1" if wildcard else host


def _flask_run_address():
    """(host, port) when `flask run` is loading the app, else None."""
    ctx = click.get_current_context(silent=True)
    if ctx is None or ctx.command is not flask.cli.run_command:
        return None
    return ctx.params["host"], ctx.params["port"]
