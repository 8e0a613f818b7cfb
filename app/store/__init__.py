"""The event store: chosen by DATABASE_URL, created and migrated when the app starts.

Its interfaces (``EventStore`` and the repositories) are declared in ``app.store.base``.
"""

import logging
import time
from collections.abc import Callable

from flask import Flask, current_app

from app.config import default
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
_KEY = "store"
POOL_MAX = default("DATABASE_POOL_MAX")


def open_store(url: str, pool_max: int = POOL_MAX,
               clock: Callable[[], float] = time.time) -> Store:
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


def get_store(app: Flask | None = None) -> Store:
    """The store of ``app``, by default the current one."""
    return (current_app if app is None else app).extensions[_KEY]


def init_app(app: Flask, clock: Callable[[], float] = time.time) -> None:
    """Open the store of ``app.config["DATABASE_URL"]``, recording times read from ``clock``,
    and migrate it (or defer that while the database is down)."""
    store = open_store(app.config["DATABASE_URL"], app.config["DATABASE_POOL_MAX"], clock)
    try:
        store.migrate()
    except StoreUnavailable as exc:
        # A database that is restarting must not stop the server from booting (gunicorn
        # halts when a worker fails to boot): answer 503 until it is back, then migrate.
        log.error("database unavailable at start-up, will migrate on first use: %s", exc)
        store.migrate_on_first_use()
    app.extensions[_KEY] = store
