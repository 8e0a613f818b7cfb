"""The application factory: builds the Flask app and its services from the configuration."""

import ipaddress

import click
import flask.cli
from flask import Flask

from app import config, errors, logs
from app.logs import configure as configure_logging


def create_app(test_config=None, require_secret=True):
    """Build the app; `test_config` replaces settings read from the environment.

    `require_secret=False` is for processes that take no webhooks (the job worker): they
    start without a webhook secret, and would reject every delivery.
    """
    app = Flask(__name__, instance_relative_config=True)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False
    config.load_dotenv_file()
    app.config.update(config.from_env(app.instance_path,
                                      require_secret=require_secret and test_config is None))
    app.config.update(test_config or {})
    if app.config["WEBHOOK_SECRETS"]:
        config.check_secrets(app.config["WEBHOOK_SECRETS"])
    configure_logging(app.config.get("LOG_LEVEL", "INFO"), app.config.get("LOG_FORMAT", "text"))
    if (address := _flask_run_address()) is not None:
        log_dev_banner(app, *address)

    from app import agent, console, health, jobs, metrics, store, webhook
    from app import cli as cli_commands

    app.before_request(logs.clear)  # a kept-alive connection's next request starts afresh
    errors.init_app(app)
    store.init_app(app)
    try:
        agent.init_app(app)
        jobs.init_app(app)
        webhook.init_app(app, require_secret=require_secret)
        health.init_app(app)
        metrics.init_app(app)
        console.init_app(app)
        cli_commands.init_app(app)
    except BaseException:
        app.extensions["store"].close()  # an app that failed to build keeps no connections
        raise
    return app


def log_dev_banner(app, host, port):
    """In development mode, log the webhook URL this server answers at and the secret that
    signs for it. Only the web servers call it, once they know the address they listen on."""
    if not app.config.get("DEV_MODE"):
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
