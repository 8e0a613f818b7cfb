"""The `agentphone` command group and what its commands use.

Under `agentphone` nothing is built up front: `--help` needs no configuration, the API commands
require AGENTPHONE_API_KEY (`webhook set|rotate|show` also the database, which keeps the
secrets), and only the commands that read the database (`jobs`, `calls --local`, `top`, a
`simulate` with no secret set) or run jobs (`worker`) open it. Under `flask --app wsgi agentphone`
the same commands use that app.
"""

import click
from flask.cli import ScriptInfo

from app import config, configure_logging, create_app
from app.agentphone import from_config
from app.store import StoreUnavailable, get_store, open_store


class CommandGroup(click.Group):
    """A group whose configuration and database errors (its subcommands' too) end the
    command with one line instead of a traceback."""

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except (config.ConfigError, StoreUnavailable) as exc:
            raise click.ClickException(str(exc)) from exc


class Resources:
    """The settings, API client, store and app a command asks for, each made on first use.

    ``app`` is the `flask --app` application, or None under `agentphone`, where everything
    comes from the environment (and .env) and is closed when the command ends.
    """

    def __init__(self, app=None):
        self._app = app
        self._own_app = None
        self._settings = None
        self._store = None

    @property
    def settings(self):
        """The app's config, else the environment's settings (no webhook secret required)."""
        if self._app is not None:
            return self._app.config
        if self._settings is None:
            self._settings = config.from_env(config.instance_path(), require_secret=False)
        return self._settings

    def api_client(self):
        return from_config(self.settings)

    def store(self):
        """The app's store, else one opened (and migrated) for this command."""
        if self._app is not None:
            return get_store(self._app)
        if self._store is None:
            settings = self.settings
            try:
                store = open_store(settings["DATABASE_URL"], settings["DATABASE_POOL_MAX"])
            except ValueError as exc:
                raise click.ClickException(str(exc)) from exc
            try:
                store.migrate()
            except StoreUnavailable:
                store.close()
                raise
            self._store = store
        return self._store

    def webhook_secret(self):
        """The secret the server signs with: the first configured one, else the development
        secret in AGENTPHONE_DEV mode."""
        settings = self.settings
        if settings["WEBHOOK_SECRETS"]:
            return settings["WEBHOOK_SECRETS"][0]
        if settings["DEV_MODE"]:
            return config.dev_secret(config.instance_path())
        stored = self.store().webhook_secrets()
        if stored:
            return stored[0].secret
        raise click.ClickException(
            "no webhook secret: set AGENTPHONE_WEBHOOK_SECRET (or AGENTPHONE_DEV=1), "
            "store one with `agentphone webhook set`, or pass --secret")

    def app(self):
        """The whole application (agent, job handlers); no webhook secret required, since
        the command serves no webhooks."""
        if self._app is None:
            self._app = self._own_app = create_app(require_secret=False)
        return self._app

    def close(self):
        if self._store is not None:
            self._store.close()
        if self._own_app is not None:
            get_store(self._own_app).close()


def uses():
    """The running command's Resources (one per command line)."""
    ctx = click.get_current_context()
    meta = ctx.meta
    if "agentphone.resources" not in meta:
        info = ctx.find_object(ScriptInfo)
        resources = Resources(info.load_app() if info is not None else None)
        meta["agentphone.resources"] = resources
        ctx.find_root().call_on_close(resources.close)
    return meta["agentphone.resources"]


@click.group("agentphone", cls=CommandGroup)
@click.pass_context
def agentphone(ctx):
    """AgentPhone backend tools: simulator, API client, jobs, worker."""
    if ctx.find_object(ScriptInfo) is None:  # under `flask --app` the app has done both
        config.load_dotenv_file()
        configure_logging(config.read("LOG_LEVEL"), config.read("LOG_FORMAT"))
