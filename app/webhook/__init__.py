"""The webhook blueprint: every AgentPhone delivery arrives at POST /webhook.

Importing this package loads nothing else: ``signing`` and ``events`` are framework-free, and
the blueprint (Flask and the rest of the app) is imported by ``init_app``.
"""

import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from flask import Flask

log = logging.getLogger(__name__)


def init_app(app: "Flask", require_secret: bool = True,
             clock: Callable[[], float] = time.time) -> None:
    """Register the blueprint, its voice claims and its secrets (which check a delivery's age
    by ``clock``). Unless ``require_secret`` is False (a process that takes no webhooks),
    refuse to start with no secret configured or stored, except with an API key: the first
    deploy starts so, and ``agentphone webhook set`` then stores the secret (every delivery
    is refused with 401 until then)."""
    from app.config import REFUSAL_WITHOUT_KEY, ConfigError
    from app.store import StoreUnavailable, get_store
    from app.voice import claims
    from app.webhook import secrets
    from app.webhook.views import bp

    store = get_store(app)
    app.extensions[claims.EXTENSION] = claims.VoiceClaims(store)
    source = secrets.SecretSource(app.config["WEBHOOK_SECRETS"], store.webhook_secrets,
                                  clock=clock)
    app.extensions[secrets.EXTENSION] = source
    if require_secret and not source.static:
        try:
            stored = store.webhook_secrets()
        except StoreUnavailable as exc:
            # The database may be restarting: boot, and answer 503 until it is readable.
            log.error("no configured webhook secret and the store is unavailable: %s", exc)
        else:
            if not stored:
                if not app.config.get("AGENTPHONE_API_KEY"):
                    raise ConfigError(REFUSAL_WITHOUT_KEY)
                log.warning("no webhook secret yet: %s", secrets.REFUSED_UNTIL_SET)
    app.register_blueprint(bp)
