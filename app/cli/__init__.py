"""The `flask --app wsgi agentphone ...` command group."""

import click
from flask.cli import AppGroup, ScriptInfo


@click.group("agentphone", cls=AppGroup)
@click.pass_context
def agentphone(ctx):
    """AgentPhone backend tools: simulator, API client, jobs."""
    # The process may outlive the command (tests, embedding): give the connections back.
    ctx.call_on_close(ctx.ensure_object(ScriptInfo).load_app().extensions["store"].close)


def init_app(app):
    # Imported here so each module can register its commands on the group.
    from app.cli import api, jobs, simulate  # noqa: F401

    app.cli.add_command(agentphone)
