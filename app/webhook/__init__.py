"""The webhook blueprint: every AgentPhone delivery arrives at POST /webhook."""

from app.voice.claims import VoiceClaims
from app.webhook.views import bp


def init_app(app):
    app.extensions["voice_claims"] = VoiceClaims(app.extensions["store"])
    app.register_blueprint(bp)
