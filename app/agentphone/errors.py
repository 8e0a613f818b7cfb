"""AgentPhone API errors: one exception family, parsed from every body shape (contract 5.1, D31)."""

import email.utils
import json
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

# FastAPI prefixes each `loc` with where the value came from; the field name is what follows.
_LOC_SOURCES = ("body", "query", "path", "header")
_MAX_TEXT = 300


@dataclass(frozen=True)
class ErrorInfo:
    """What an error body says, whatever its shape."""

    message: str
    code: str | None = None
    type: str | None = None
    details: list[dict[str, Any]] = field(default_factory=list)


class AgentPhoneError(Exception):
    """Any failure talking to AgentPhone; `status` is None when no HTTP response was received.

    `code` and `type` are the error body's, `details` its per-field problems
    (``{"field", "message", "type"}``), `retry_after` the seconds the server asked to wait,
    and `body` the response text. `request_sent` is False only when the request certainly
    never reached the server (no key, connection refused, DNS, connect timeout); True when it
    may have (always, once there is a response): a request that may have been sent must not
    be repeated blindly.
    """

    def __init__(self, message: str, *, status: int | None = None, code: str | None = None,
                 type: str | None = None, details: list[dict[str, Any]] | None = None,
                 retry_after: float | None = None, body: str | None = None,
                 request_sent: bool = True) -> None:
        super().__init__(message)
        self.message = message
        self.request_sent = request_sent
        self.status = status
        self.code = code
        self.type = type
        self.details = list(details or [])
        self.retry_after = retry_after
        self.body = body

    def __str__(self) -> str:
        head = f"HTTP {self.status}" if self.status is not None else ""
        if self.code:
            head = f"{head} {self.code}".strip()
        text = f"{head}: {self.message}" if head else self.message
        for d in self.details:
            text += "\n  - " + (f"{d['field']}: " if d.get("field") else "") + d["message"]
        if self.retry_after is not None:
            text += f"\n  (retry after {self.retry_after:g} s)"
        return text


class MissingAPIKeyError(AgentPhoneError):
    """No API key configured; raised before any request is made."""


class APIConnectionError(AgentPhoneError):
    """The request failed without an HTTP response (DNS, refused, timeout, dropped stream);
    `request_sent` says whether it may have reached the server."""


class APITimeoutError(APIConnectionError):
    """A timeout: connecting, waiting for bytes, or the call's whole deadline (`budget`)."""


class StreamLimitError(AgentPhoneError):
    """An event stream sent a line or an event longer than the parser accepts; not retried,
    since the server would send the same again."""


class BadRequestError(AgentPhoneError):
    """400 or 422: the request was rejected as invalid; see `details`."""


class AuthenticationError(AgentPhoneError):
    """401: missing or invalid API key."""


class NotFoundError(AgentPhoneError):
    """404: missing or not accessible with this key."""


class RateLimitError(AgentPhoneError):
    """429: throttled; `retry_after` says how long to wait, when the server said."""


class ServerError(AgentPhoneError):
    """5xx: AgentPhone or a carrier failed; usually temporary."""


def error_class(status: int) -> type[AgentPhoneError]:
    """The exception subclass for an HTTP status."""
    if status in (400, 422):
        return BadRequestError
    if status >= 500:
        return ServerError
    return {401: AuthenticationError, 404: NotFoundError, 429: RateLimitError}.get(
        status, AgentPhoneError
    )


def _detail_item(item: Any) -> dict[str, Any]:
    if not isinstance(item, dict):
        return {"field": None, "message": str(item), "type": None}
    if "loc" in item or "msg" in item:  # FastAPI: {loc, msg, type}
        loc = [str(part) for part in item.get("loc") or []]
        if loc and loc[0] in _LOC_SOURCES:
            loc = loc[1:]
        return {"field": ".".join(loc) or None, "message": str(item.get("msg", "")),
                "type": item.get("type")}
    return {"field": item.get("field"), "message": str(item.get("message", "")),
            "type": item.get("type")}


def _from_envelope(err: dict[str, Any]) -> ErrorInfo:
    details = err.get("details")
    return ErrorInfo(
        message=str(err.get("message") or err.get("code") or "error"),
        code=err.get("code"),
        type=err.get("type"),
        details=[_detail_item(d) for d in details] if isinstance(details, list) else [],
    )


def _from_json(body: Any) -> ErrorInfo | None:
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict):
            return _from_envelope(err)
        if isinstance(err, str) and err:
            return ErrorInfo(message=err, code=body.get("code"), type=body.get("type"))
        detail = body.get("detail")
        if isinstance(detail, str) and detail:
            return ErrorInfo(message=detail, code=body.get("code"), type=body.get("type"))
        if isinstance(detail, list) and detail:
            details = [_detail_item(d) for d in detail]
            return ErrorInfo(message=details[0]["message"] or "Validation error",
                             type="validation_error", details=details)
        if isinstance(body.get("message"), str) and body["message"]:
            return ErrorInfo(message=body["message"], code=body.get("code"), type=body.get("type"))
    return None


def parse_error_body(status: int, text: str | None, reason: str = "") -> ErrorInfo:
    """ErrorInfo from a response body; never raises, whatever the body holds."""
    try:
        info = _from_json(json.loads(text)) if text else None
    except ValueError:
        info = None
    if info is not None:
        return info
    text = (text or "").strip()
    if text:
        return ErrorInfo(message=text if len(text) <= _MAX_TEXT else text[:_MAX_TEXT] + "...")
    return ErrorInfo(message=reason or f"HTTP {status}")


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds to wait from a Retry-After value (delta-seconds or HTTP-date); None if unusable."""
    if value is None:
        return None
    value = value.strip()
    if value.isascii() and value.isdigit():
        return float(value)
    parsed = email.utils.parsedate_tz(value)
    if parsed is None:
        return None
    return max(0.0, email.utils.mktime_tz(parsed) - (time.time() if now is None else now))


def error_from_response(status: int, text: str, headers: Mapping[str, str],
                        reason: str = "") -> AgentPhoneError:
    """The AgentPhoneError (subclass) for a non-2xx response, from its status, body text,
    headers (for Retry-After) and reason phrase."""
    info = parse_error_body(status, text, reason)
    return error_class(status)(
        info.message, status=status, code=info.code, type=info.type, details=info.details,
        retry_after=parse_retry_after(headers.get("Retry-After")), body=text,
    )
