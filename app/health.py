"""GET /healthz: 200 when the store answers, 503 otherwise."""

from flask import Blueprint, jsonify

from app.store import StoreUnavailable, get_store

bp = Blueprint("health", __name__)


@bp.get("/healthz")
def healthz():
    store = get_store()
    try:
        store.ping()
    except StoreUnavailable as exc:
        return jsonify(ok=False, store=store.backend, error=str(exc)), 503
    return jsonify(ok=True, store=store.backend)


def init_app(app):
    app.register_blueprint(bp)
