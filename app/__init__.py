"""Application factory: AgentPhone webhook backend."""

from flask import Flask

from app import config, errors, logs


def create_app(test_config=None):
    """Build the app; `test_config` replaces settings read from the environment."""
    app = Flask(__name__, instance_relative_config=True)
    app.config["MAX_CONTENT_LENGTH"] = 1024 * 1024
    app.json.sort_keys = False
    config.load_dotenv_file()
    app.config.update(config.from_env(app.instance_path, require_secret=test_config is None))
    app.config.update(test_config or {})
    logs.configure(app.config.get("LOG_LEVEL", "INFO"), app.config.get("LOG_FORMAT", "text"))
    if app.config.get("DEV_MODE"):
        app.logger.warning(
            "development mode: webhook URL http://127.0.0.1:%s/webhook, secret %s",
            config.env("PORT"), app.config["WEBHOOK_SECRETS"][0],
        )

    from app import agent, console, health, jobs, metrics, store, webhook
    from app import cli as cli_commands

    app.before_request(logs.clear)  # a kept-alive connection's next request starts afresh
    errors.init_app(app)
    store.init_app(app)
    agent.init_app(app)
    jobs.init_app(app)
    webhook.init_app(app)
    health.init_app(app)
    metrics.init_app(app)
    console.init_app(app)
    cli_commands.init_app(app)
    return app
