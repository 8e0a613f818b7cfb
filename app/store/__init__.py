"""The event store: chosen by DATABASE_URL, created and migrated when the app starts."""

import logging
import time

from flask import current_app

from app.config import default
from app.store.base import JOB_STATES, Job, Replayed, Retention, SignedBytes, StoreUnavailable

__all__ = ["JOB_STATES", "Job", "Replayed", "Retention", "SignedBytes", "StoreUnavailable",
           "get_store", "init_app", "open_store"]

log = logging.getLogger(__name__)
_KEY = "store"
POOL_MAX = default("DATABASE_POOL_MAX")


def open_store(url, pool_max=POOL_MAX, clock=time.time):
    """A store for ``url``: ``sqlite:///...`` or ``postgres(ql)://...`` (with at most
    ``pool_max`` connections per process), recording times read from ``clock``."""
    if url.startswith("sqlite:///"):
        from app.store.sqlite import SQLiteStore

        return SQLiteStore(url, clock=clock)
    if url.startswith(("postgres://", "postgresql://")):
        from app.store.postgres import PostgresStore

        return PostgresStore(url, clock=clock, max_size=pool_max)
    raise ValueError(
        "DATABASE_URL must start with sqlite:///, postgres:// or postgresql:// "
        f"(got {url.split(':', 1)[0]}:...)"
    )


def get_store(app=None):
    """The store of ``app``, by default the current one."""
    return (current_app if app is None else app).extensions[_KEY]


def init_app(app, clock=time.time):
    """Open and migrate the store of DATABASE_URL for ``app``; ``clock`` gives the times it
    records."""
    store = open_store(app.config["DATABASE_URL"], app.config["DATABASE_POOL_MAX"], clock)
    try:
        store.migrate()
    except StoreUnavailable as exc:
        # A database that is restarting must not stop the server from booting (gunicorn
        # halts when a worker fails to boot): answer 503 until it is back, then migrate.
        log.error("database unavailable at start-up, will migrate on first use: %s", exc)
        store.migrate_on_first_use()
    app.extensions[_KEY] = store
