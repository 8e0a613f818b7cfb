"""The `flask --app wsgi agentphone ...` command group."""

from flask.cli import AppGroup

agentphone = AppGroup("agentphone", help="AgentPhone backend tools: simulator, API client, jobs.")


def init_app(app):
    # Imported here so each module can register its commands on the group.
    from app.cli import api, jobs, simulate, testing, top  # noqa: F401

    app.cli.add_command(agentphone)
