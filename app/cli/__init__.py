"""The `agentphone` console script, also reachable as `flask --app wsgi agentphone`."""

from app.cli import api, jobs, simulate, testing, top  # noqa: F401 (each registers commands)
from app.cli.base import agentphone

__all__ = ["agentphone", "init_app"]


def init_app(app):
    app.cli.add_command(agentphone)
