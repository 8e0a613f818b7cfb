"""The webhook: every AgentPhone delivery arrives at POST /webhook.

Importing this package loads nothing else: ``signing`` and ``events`` are framework-free, and
the blueprint (Flask and the rest of the app) is loaded by ``init_app``.
"""


def init_app(app, require_secret=True):
    """Register the webhook blueprint, its voice claims and its secrets on ``app``. Unless
    ``require_secret`` is False (a process that takes no webhooks), refuse to start with no
    secret configured or stored."""
    from app.webhook import views

    views.init_app(app, require_secret=require_secret)
