"""Application factory: AgentPhone webhook backend."""

import ipaddress
import logging
import sys

import click
import flask.cli
from flask import Flask

from app import config, errors


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
    if require_secret or app.config["WEBHOOK_SECRETS"]:
        config.check_secrets(app.config["WEBHOOK_SECRETS"])
    configure_logging(app.config.get("LOG_LEVEL", "INFO"))
    if (address := _flask_run_address()) is not None:
        log_dev_banner(app, *address)

    from app import agent, health, jobs, store, webhook
    from app import cli as cli_commands

    errors.init_app(app)
    store.init_app(app)
    agent.init_app(app)
    jobs.init_app(app)
    webhook.init_app(app)
    health.init_app(app)
    cli_commands.init_app(app)
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


def configure_logging(level):
    """Log records to stderr (stdout is for the CLI's data), once per process."""
    root = logging.getLogger()
    if not any(getattr(h, "_agentphone", False) for h in root.handlers):
        handler = EscapingStreamHandler(sys.stderr)
        handler.setFormatter(
            logging.Formatter("%(asctime)s %(process)d %(levelname)s %(name)s: %(message)s")
        )
        handler._agentphone = True
        root.addHandler(handler)
    root.setLevel(level)


class EscapingStreamHandler(logging.StreamHandler):
    """A stream handler that never drops a line: characters the stream cannot encode (a lone
    surrogate from a delivery, say) are written as backslash escapes."""

    def format(self, record):
        text = super().format(record)
        encoding = getattr(self.stream, "encoding", None) or "utf-8"
        return text.encode(encoding, "backslashreplace").decode(encoding)
