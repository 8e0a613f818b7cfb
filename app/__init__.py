"""Application factory: AgentPhone webhook backend."""

import logging
import sys

from flask import Flask

from app import config, errors


def create_app(test_config=None):
    """Build the app; `test_config` replaces settings read from the environment."""
    app = Flask(__name__, instance_relative_config=True)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False
    config.load_dotenv_file()
    app.config.update(config.from_env(app.instance_path, require_secret=test_config is None))
    app.config.update(test_config or {})
    config.check_secrets(app.config["WEBHOOK_SECRETS"])
    _configure_logging(app.config.get("LOG_LEVEL", "INFO"))
    if app.config.get("DEV_MODE"):
        app.logger.warning(
            "development mode: webhook URL http://127.0.0.1:%s/webhook, secret %s",
            config.env("PORT"), app.config["WEBHOOK_SECRETS"][0],
        )

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


def _configure_logging(level):
    root = logging.getLogger()
    if not any(getattr(h, "_agentphone", False) for h in root.handlers):
        handler = EscapingStreamHandler(sys.stdout)
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
