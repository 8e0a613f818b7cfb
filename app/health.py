"""GET /healthz: 200 when the store takes a write, 503 otherwise; either way it says whether
deliveries can be verified (``webhook_secret``: ``SecretSource.state``)."""

import logging

from flask import Blueprint, jsonify

from app.store import StoreUnavailable, get_store
from app.webhook.secrets import get_webhook_secrets

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    store = get_store()
    # Still 200 without a secret: the first deploy starts so, and its health check must pass.
    secret = {"webhook_secret": get_webhook_secrets().state()}
    try:
        store.check_writable()
    except StoreUnavailable as exc:
        # The driver's words go to the log only: this endpoint answers anyone.
        log.error("health check: %s store unavailable: %s", store.backend, exc)
        return jsonify(ok=False, store="unavailable", **secret), 503
    return jsonify(ok=True, store=store.backend, **secret)


def init_app(app):
    app.register_blueprint(bp)
