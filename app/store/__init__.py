"""The event store: chosen by DATABASE_URL, created and migrated when the app starts."""

from flask import current_app

from app.store.base import Job, Retention, StoreUnavailable

__all__ = ["Job", "Retention", "StoreUnavailable", "get_store", "init_app", "open_store"]


def open_store(url):
    """A store for ``url``: ``sqlite:///...`` or ``postgres(ql)://...``."""
    if url.startswith("sqlite:///"):
        from app.store.sqlite import SQLiteStore

        return SQLiteStore(url)
    if url.startswith(("postgres://", "postgresql://")):
        from app.store.postgres import PostgresStore

        return PostgresStore(url)
    raise ValueError(
        "DATABASE_URL must start with sqlite:///, postgres:// or postgresql:// "
        f"(got {url.split(':', 1)[0]}:...)"
    )


def get_store():
    return current_app.extensions["store"]


def init_app(app):
    store = open_store(app.config["DATABASE_URL"])
    if "CLOCK" in app.config:
        store.clock = app.config["CLOCK"]
    store.migrate()
    app.extensions["store"] = store
