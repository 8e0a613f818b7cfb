"""The webhook blueprint: every AgentPhone delivery arrives at POST /webhook.

Importing this package loads nothing else: ``signing`` and ``events`` are framework-free, and
the blueprint (Flask and the rest of the app) is imported by ``init_app``.
"""

import logging
import time
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


def init_app(app: "Flask", require_secret: bool = True) -> None:
    """Register the blueprint, its voice claims and its secrets. Unless ``require_secret`` is
    False (a process that takes no webhooks), refuse to start with no secret configured or
    stored."""
    from app.config import REFUSAL_WITHOUT_KEY, ConfigError
    from app.store import StoreUnavailable
    from app.voice.claims import VoiceClaims
    from app.webhook.secrets import SecretSource
    from app.webhook.views import bp

    store = app.extensions["store"]
    app.extensions["voice_claims"] = VoiceClaims(store)
    source = SecretSource(app.config["WEBHOOK_SECRETS"], store.webhook_secrets,
                          clock=app.config.get("CLOCK", time.time))
    app.extensions["webhook_secrets"] = source
    if require_secret and not source.static:
        try:
            stored = store.webhook_secrets()
        except StoreUnavailable as exc:
            # The database may be restarting: boot, and answer 503 until it is readable.
            log.error("no configured webhook secret and the store is unavailable: %s", exc)
        else:
            if not stored:
                raise ConfigError(REFUSAL_WITHOUT_KEY)
    app.register_blueprint(bp)
