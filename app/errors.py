"""Error classes carrying their HTTP status, rendered as AgentPhone's own error envelope."""

from typing import Any

from flask import Response, current_app, jsonify
from werkzeug.exceptions import HTTPException


class ErrorResponse(Exception):
    """Base of every error the service answers with; subclasses set status and code."""

    status = 500
    code = "INTERNAL_ERROR"
    message = "Internal server error"

    def __init__(self, message: str | None = None,
                 details: list[dict[str, Any]] | None = None) -> None:
        super().__init__(message or self.message)
        self.message = message or self.message
        self.details = list(details or [])

    def to_dict(self):
        body = {"code": self.code, "message": self.message}
        if self.details:
            body["details"] = self.details
        return {"error": body}


class BadRequest(ErrorResponse):
    status = 400
    code = "VALIDATION_ERROR"
    message = "Invalid request"


class Unretryable(Exception):
    """A failure that no later attempt can fix: a job raising it is dead-lettered at once."""


class Unauthorized(ErrorResponse):
    status = 401
    code = "UNAUTHORIZED"
    message = "Invalid webhook signature"


class PayloadTooLarge(ErrorResponse):
    status = 413
    code = "PAYLOAD_TOO_LARGE"
    message = "Request body is larger than 1 MiB"


class ServiceUnavailable(ErrorResponse):
    status = 503
    code = "SERVICE_UNAVAILABLE"
    message = "Temporarily unavailable, retry later"


class StoreDown(ServiceUnavailable):
    """The answer to ``app.store.StoreUnavailable``: the platform retries the delivery."""

    code = "STORE_UNAVAILABLE"
    message = "Event store unavailable, retry later"


def field_error(field: str, message: str) -> dict[str, Any]:
    """One entry of an error's ``details``."""
    return {"field": field, "message": message}


def render(error: ErrorResponse) -> Response:
    """The error envelope of ``error`` as a JSON response with its HTTP status."""
    response = jsonify(error.to_dict())
    response.status_code = error.status
    return response


def _http_exception(exc):
    if exc.code == 413:
        return render(PayloadTooLarge())
    err = ErrorResponse(exc.description)
    err.status = exc.code or 500
    err.code = (exc.name or "error").upper().replace(" ", "_")
    response = render(err)
    # Keep the headers the status calls for (Allow on a 405), not Werkzeug's HTML type.
    for name, value in exc.get_headers():
        if name.lower() != "content-type":
            response.headers[name] = value
    return response


def _store_unavailable(exc):
    # The body names no internals: str(exc) is the driver's own words.
    return render(StoreDown())


def _unexpected(exc):
    # A registered handler for Exception stops Flask from logging it, so log here.
    current_app.logger.exception("unhandled error: %s", exc)
    return render(ErrorResponse())


def init_app(app):
    from app.store.base import StoreUnavailable  # the store's module imports this one

    app.register_error_handler(ErrorResponse, render)
    app.register_error_handler(StoreUnavailable, _store_unavailable)
    app.register_error_handler(HTTPException, _http_exception)
    app.register_error_handler(Exception, _unexpected)
