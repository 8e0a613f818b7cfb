"""AgentPhone webhook signatures (contract 1.5): pure functions, the standard library only.

The signed string is ``{X-Webhook-Timestamp}.{raw body}``, HMAC-SHA256 keyed with the whole
``whsec_...`` secret as UTF-8, sent as ``sha256=<lowercase hex>``. A refusal raises a
``SignatureError``; the webhook answers it as a 401 carrying its ``code`` and ``message``.
"""

import hashlib
import hmac
from collections.abc import Iterable

TOLERANCE = 300
# Kept this much past the tolerance: servers sharing a store may disagree about the time.
REPLAY_MARGIN = 300
PREFIX = "sha256="


class SignatureError(Exception):
    """A delivery whose signature cannot be trusted; subclasses say why. ``code`` is the
    machine-readable reason, ``message`` the sentence for the sender."""

    code = "UNAUTHORIZED"
    message = "Invalid webhook signature"

    def __init__(self) -> None:
        super().__init__(self.message)


class MissingSignature(SignatureError):
    """The signature or timestamp header is missing or empty."""

    code = "MISSING_SIGNATURE"
    message = "Missing X-Webhook-Signature or X-Webhook-Timestamp header"


class InvalidTimestamp(SignatureError):
    """The timestamp is not unix seconds, or too far from now (a stale or replayed copy)."""

    code = "INVALID_TIMESTAMP"
    message = "X-Webhook-Timestamp must be unix seconds within 300 s of now"


class InvalidSignature(SignatureError):
    """No configured secret signs this timestamp and body to the given signature."""

    code = "INVALID_SIGNATURE"
    message = "Signature does not match the body and timestamp"


def compute(secret: str, timestamp: str, body: bytes) -> str:
    """The header value AgentPhone sends for this body: ``sha256=<hex>``."""
    message = timestamp.encode("utf-8") + b"." + body
    digest = hmac.new(secret.encode("utf-8"), message, hashlib.sha256).hexdigest()
    return PREFIX + digest


def parse_timestamp(value: str | None) -> int:
    """Unix seconds from the header, ASCII digits only (contract D7); anything else is invalid."""
    if not value or not value.isascii() or not value.isdigit() or len(value) > 15:
        raise InvalidTimestamp()
    return int(value)


def verify(secrets: Iterable[str], signature: str | None, timestamp: str | None, body: bytes,
           now: float, tolerance: float = TOLERANCE) -> None:
    """Raise a SignatureError subclass unless ``signature`` is valid for any non-blank secret
    and ``timestamp`` is within ``tolerance`` seconds of ``now`` (unix seconds)."""
    if not signature or not timestamp:
        raise MissingSignature()
    sent_at = parse_timestamp(timestamp)
    if abs(now - sent_at) > tolerance:
        raise InvalidTimestamp()
    if not signature.startswith(PREFIX):
        raise InvalidSignature()
    # Bytes, not str: compare_digest refuses non-ASCII str, and header text is arbitrary.
    given = signature[len(PREFIX):].lower().encode("utf-8", "surrogateescape")
    matched = False
    for secret in secrets:
        if not secret or not secret.strip():
            continue  # an empty key is one anyone can sign with
        expected = compute(secret, timestamp, body)[len(PREFIX):].encode("ascii")
        matched |= hmac.compare_digest(expected, given)
    if not matched:
        raise InvalidSignature()


def signed_digest(timestamp: str, body: bytes) -> tuple[str, int]:
    """A digest of exactly what the signature covers, and until when (unix seconds) a copy
    of it could still pass ``verify``: the key for refusing replays."""
    digest = hashlib.sha256(timestamp.encode("utf-8") + b"." + body).hexdigest()
    return digest, parse_timestamp(timestamp) + TOLERANCE + REPLAY_MARGIN
