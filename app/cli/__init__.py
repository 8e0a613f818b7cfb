"""The `agentphone` console script, also reachable as `flask --app wsgi agentphone`."""

from app.cli import api, jobs, simulate  # noqa: F401 (each module registers its commands)
from app.cli.base import agentphone

__all__ = ["agentphone", "init_app"]


def init_app(app):
    app.cli.add_command(agentphone)
