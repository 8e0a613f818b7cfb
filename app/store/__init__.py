"""The event store: chosen by DATABASE_URL, created and migrated when the app starts.

Its interfaces (``EventStore`` and the repositories) are declared in ``app.store.base``.
"""

import logging

from flask import Flask, current_app

from app.store.base import (
    JOB_STATES,
    EventStore,
    Job,
    Replayed,
    Retention,
    SignedBytes,
    Store,
    StoreUnavailable,
)

__all__ = ["JOB_STATES", "EventStore", "Job", "Replayed", "Retention", "SignedBytes", "Store",
           "StoreUnavailable", "get_store", "init_app", "open_store"]

log = logging.getLogger(__name__)


def open_store(url: str, pool_max: int = 10) -> Store:
    """A store for ``url``: ``sqlite:///...`` or ``postgres(ql)://...`` (with at most
    ``pool_max`` connections per process)."""
    if url.startswith("sqlite:///"):
        from app.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgres://", "postgresql://")):
        from app.store.postgres import PostgresStore

        return PostgresStore(url, max_size=pool_max)
    raise ValueError(
        "DATABASE_URL must start with sqlite:///, postgres:// or postgresql:// "
        f"(got {url.split(':', 1)[0]}:...)"
    )


def get_store() -> Store:
    """The current app's store."""
    return current_app.extensions["store"]


def init_app(app: Flask) -> None:
    """Open the store of ``app.config["DATABASE_URL"]`` and migrate it (or defer that while the
    database is down)."""
    store = open_store(app.config["DATABASE_URL"], app.config.get("DATABASE_POOL_MAX", 10))
    if "CLOCK" in app.config:
        store.clock = app.config["CLOCK"]
    try:
        store.migrate()
    except StoreUnavailable as exc:
        # A database that is restarting must not stop the server from booting (gunicorn
        # halts when a worker fails to boot): answer 503 until it is back, then migrate.
        log.error("database unavailable at start-up, will migrate on first use: %s", exc)
        store.migrate_on_first_use()
    app.extensions["store"] = store
