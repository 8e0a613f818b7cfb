"""The `agentphone` console script, also reachable as `flask --app wsgi agentphone`."""

from app.cli import api, jobs, simulate, testing, top
from app.cli.base import agentphone

__all__ = ["COMMANDS", "agentphone", "init_app"]

# Every command of `agentphone`: one listed here is one `agentphone --help` shows.
COMMANDS = (
    api.calls, api.deliveries, api.send, api.transcript, api.webhook,
    jobs.jobs, jobs.worker,
    simulate.simulate,
    testing.call, testing.test,
    top.top,
)
for _command in COMMANDS:
    agentphone.add_command(_command)


def init_app(app):
    """Offer the `agentphone` commands as `flask --app wsgi agentphone`."""
    app.cli.add_command(agentphone)
