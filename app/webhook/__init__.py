"""The webhook blueprint: every AgentPhone delivery arrives at POST /webhook."""

from app.webhook.views import bp


def init_app(app):
    app.register_blueprint(bp)
