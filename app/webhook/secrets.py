"""Which signing secrets are valid now: the configured ones plus those in the store.

``agentphone webhook set|rotate`` stores the secret the platform returns; every process
picks it up within ``REFRESH_SECONDS`` without a restart (read in the background, never on a
delivery's path), and at once when a delivery
arrives that no known secret matches (at most once per ``MISS_RELOAD_SECONDS``, so a flood of
forgeries costs no more). Between refreshes the secrets are held in memory: verifying a
delivery costs one HMAC per live secret and no store round trip. An expired secret stops
matching at its expiry time, not at the next refresh.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence

from flask import Flask, current_app

from app.runtime import spawn
from app.store.base import StoreUnavailable
from app.store.secrets import StoredSecret

log = logging.getLogger(__name__)

REFRESH_SECONDS = 2.0
MISS_RELOAD_SECONDS = 0.5
EXTENSION = "webhook_secrets"  # the key of an app's SecretSource in app.extensions
# What a server with no secret does, and what ends it: its start-up warning and the console say.
REFUSED_UNTIL_SET = ("every delivery is refused with 401 until "
                     "`agentphone webhook set https://<host>/webhook` stores a secret")


class SecretSource:
    """Configured ``static`` secrets plus ``load()``'s stored ones, reloaded every
    ``refresh`` seconds; a failed reload keeps the secrets known so far."""

    def __init__(self, static: Sequence[str], load: Callable[[], list[StoredSecret]],
                 refresh: float = REFRESH_SECONDS, clock: Callable[[], float] = time.time):
        self.static = tuple(static)
        self._load = load
        self.refresh = refresh
        self.clock = clock
        self._stored: list[StoredSecret] = []
        self._loaded = False
        self._next_load = 0.0
        self._last_miss_reload = float("-inf")
        self._lock = threading.Lock()

    def current(self) -> tuple[str, ...]:
        """The secrets a delivery may be signed with right now.

        Raises StoreUnavailable only when no secret is configured and the store's have never
        been read: the platform then retries, instead of a forged-looking 401.
        """
        now = self.clock()
        if now >= self._next_load:
            # Beside the deliveries, never in their way, unless there is nothing to verify with.
            self._start_reload(now, wait=not (self._loaded or self.static))
        stored = tuple(s.secret for s in self._stored if s.live(now))
        if not self.static and not self._loaded:
            raise StoreUnavailable("webhook secrets could not be read from the store")
        return self.static + stored

    def state(self) -> str:
        """Whether a delivery can be verified now, without waiting on the store.

        "ok"; "none": no secret configured or stored (every delivery is refused with 401);
        "unknown": none configured and the store's not read yet (a read starts meanwhile).
        """
        if self.static or self._loaded:
            return "ok" if self.current() else "none"
        self._start_reload(self.clock(), wait=False)
        return "unknown"

    def reload_after_miss(self) -> bool:
        """A delivery matched no known secret: read the store now, unless that was done
        within ``MISS_RELOAD_SECONDS``. True when the stored secrets changed."""
        now = self.clock()
        if now - self._last_miss_reload < MISS_RELOAD_SECONDS or not self._lock.acquire(
                blocking=False):
            return False
        try:
            self._last_miss_reload = now
            self._next_load = now + self.refresh
            before = self._stored
            self._reload()
            return self._stored != before
        finally:
            self._lock.release()

    def _start_reload(self, now: float, wait: bool) -> None:
        """Read the stored secrets (in the background unless ``wait``), unless a read is
        under way; the next is due ``refresh`` seconds after ``now``."""
        if self._lock.acquire(blocking=False):
            self._next_load = now + self.refresh
            if wait:
                self._reload_and_release()
            else:
                spawn(self._reload_and_release)

    def _reload_and_release(self) -> None:
        try:
            self._reload()
        finally:
            self._lock.release()

    def _reload(self) -> None:
        try:
            self._stored = self._load()
            self._loaded = True
        except StoreUnavailable as exc:
            log.error("could not refresh webhook secrets from the store, keeping %d known: %s",
                      len(self._stored), exc)


def get_webhook_secrets(app: Flask | None = None) -> SecretSource:
    """The secret source of ``app``, by default the current one."""
    source: SecretSource = (current_app if app is None else app).extensions[EXTENSION]
    return source
