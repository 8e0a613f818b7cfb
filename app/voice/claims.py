"""Who is answering a voice delivery: claims with an owner and a heartbeat.

The first attempt of a voice turn claims its delivery id for this process (the owner) and
holds the claim while its stream runs. One heartbeat per process renews every claim the
process holds each ``heartbeat`` seconds, in one statement per 500 claims. A retry of the
delivery replays the stored final line; without one, it waits while the holder's heartbeat is
fresh, and takes the claim over (compare-and-set: one retry wins) once the heartbeat has
stopped for ``stale`` seconds, i.e. the holder's worker died. The winner runs the agent again;
a turn's side effects are keyed by its delivery id, so the second run repeats none.
"""

import logging
import os
import socket
import threading
import time
import uuid
import weakref
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from app.store.base import EventStore, SignedBytes

from flask import Flask, current_app

from app.runtime import current_pid

log = logging.getLogger(__name__)

HEARTBEAT_SECONDS = 1.0
STALE_SECONDS = 4.0  # a few missed heartbeats: the holder is gone
EXTENSION = "voice_claims"  # the key of an app's VoiceClaims in app.extensions


class Claim:
    """One voice claim held by this process. Calling it with the final line stores the line
    (unless the claim was taken over meanwhile) and lets the claim go.

    Held weakly: a stream dropped before it ran stops being renewed too."""

    __slots__ = ("__weakref__", "_claims", "attempt", "delivery_id")

    def __init__(self, claims, delivery_id, attempt):
        self._claims = claims
        self.delivery_id = delivery_id
        self.attempt = attempt

    def __call__(self, final_line: dict[str, Any]) -> None:
        claims = self._claims
        try:
            claims.store.save_voice_reply(self.delivery_id, final_line, claims.owner,
                                          self.attempt)
        finally:
            claims.release(self)


class VoiceClaims:
    """This process's voice claims on ``store``, kept alive by one heartbeat task."""

    def __init__(self, store: "EventStore", heartbeat: float = HEARTBEAT_SECONDS,
                 stale: float = STALE_SECONDS) -> None:
        self.store = store
        self.heartbeat = heartbeat
        self.stale = stale
        self.owner: str | None = None
        self._pid: int | None = None
        self._held: weakref.WeakSet[Claim] = weakref.WeakSet()
        self._beating = False
        self._lock = threading.Lock()

    def claim(self, delivery_id: str, event: str,
              signed: "SignedBytes | None" = None) -> Claim | None:
        """The first attempt's Claim, or None when the delivery was claimed before; raises
        Replayed for ``signed`` bytes seen under another delivery id."""
        owner = self._owner()
        if not self.store.claim_voice(delivery_id, event, owner, signed):
            return None
        return self._hold(delivery_id, 0)

    def state(self, delivery_id):
        """(stored final line or None, True when the holder's heartbeat has stopped)."""
        found = self.store.voice_claim(delivery_id)
        if found is None:
            return None, False
        reply, heartbeat_at = found
        return reply, self.store.clock() - heartbeat_at > self.stale

    def take_over(self, delivery_id):
        """A Claim on a delivery whose holder stopped beating, or None when another caller
        took it first (or the holder is alive after all)."""
        owner = self._owner()
        attempt = self.store.take_over_voice(delivery_id, owner, self.stale)
        return None if attempt is None else self._hold(delivery_id, attempt)

    def release(self, claim):
        with self._lock:
            self._held.discard(claim)

    def _owner(self):
        if self._pid != current_pid():
            with self._lock:
                if self._pid != os.getpid():
                    # A new name per process start: a pid can come back after a restart.
                    self.owner = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
                    self._held, self._beating = weakref.WeakSet(), False
                    self._pid = os.getpid()
        return self.owner

    def _hold(self, delivery_id, attempt):
        claim = Claim(self, delivery_id, attempt)
        with self._lock:
            self._held.add(claim)
            start, self._beating = not self._beating, True
        if start:
            # A greenlet under gevent (threading is patched); it ends when nothing is held.
            threading.Thread(target=self._beat, name="voice-heartbeat", daemon=True).start()
        return claim

    def _beat(self):
        while True:
            time.sleep(self.heartbeat)
            with self._lock:
                ids = sorted({claim.delivery_id for claim in self._held})
                if not ids:
                    self._beating = False
                    return
                owner = self.owner
            try:
                self.store.renew_voice_claims(owner, ids)
            except Exception as exc:
                log.warning("voice claims: heartbeat of %d claims failed: %s", len(ids), exc)


def get_voice_claims(app: Flask | None = None) -> VoiceClaims:
    """The voice claims of ``app``, by default the current one."""
    return (current_app if app is None else app).extensions[EXTENSION]
