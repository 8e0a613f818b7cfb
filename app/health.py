"""GET /healthz: 200 when the store takes a write, 503 otherwise."""

import logging

from flask import Blueprint, jsonify

from app.store import StoreUnavailable, get_store

log = logging.getLogger(__name__)
bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    store = get_store()
    try:
        store.check_writable()
    except StoreUnavailable as exc:
        # The driver's words go to the log only: this endpoint answers anyone.
        log.error("health check: %s store unavailable: %s", store.backend, exc)
        return jsonify(ok=False, store="unavailable"), 503
    return jsonify(ok=True, store=store.backend)


def init_app(app):
    app.register_blueprint(bp)
