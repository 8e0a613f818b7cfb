"""The operator console at ``/console``: what runs now, calls, messages, jobs, deliveries.

Server-rendered pages; the "Now" figures and lists refresh in place through htmx (vendored in
``static/``, no CDN). Enabled when ``CONSOLE_PASSWORD`` is set (sign in with it, or HTTP Basic
auth with any user name and that password), and in development mode without one. Actions
that change state (retry a job) carry a CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from typing import Any

from flask import (
    Blueprint,
    Response,
    abort,
    current_app,
    redirect,
    render_template,
    request,
    session,
    stream_with_context,
    url_for,
)

from app.console import figures, journal
from app.console.journal import Journal
from app.store import get_store
from app.webhook.secrets import REFUSED_UNTIL_SET, get_webhook_secrets

bp = Blueprint("console", __name__, url_prefix="/console", template_folder="templates",
               static_folder="static")

SESSION_KEY = "console"


def _password() -> str | None:
    return current_app.config.get("CONSOLE_PASSWORD")


def _enabled_by(config: Any) -> str | None:
    """What the console's keys derive from: its password, else (development mode) the dev
    secret; None when the console is off."""
    if config.get("CONSOLE_PASSWORD"):
        return config["CONSOLE_PASSWORD"]
    if config.get("DEV_MODE") and config.get("WEBHOOK_SECRETS"):
        return config["WEBHOOK_SECRETS"][0]
    return None


def _key() -> bytes:
    basis = _enabled_by(current_app.config)
    assert basis is not None  # `guard` answers 404 before any page while the console is off
    return hashlib.sha256(b"agentphone-console:" + basis.encode()).digest()


def csrf_token() -> str:
    return hmac.new(_key(), b"csrf", hashlib.sha256).hexdigest()


def _signed_in() -> bool:
    password = _password()
    if password is None:
        return True  # development mode (guard() has checked the console is on)
    auth = request.authorization
    if auth is not None and auth.password is not None and hmac.compare_digest(
            auth.password.encode(), password.encode()):
        return True
    return hmac.compare_digest(session.get(SESSION_KEY, ""), csrf_token())


@bp.before_request
def guard() -> Any:
    if _enabled_by(current_app.config) is None:
        abort(404)  # off: no password set
    if request.endpoint in ("console.login", "console.static") or _signed_in():
        if request.method == "POST" and request.endpoint != "console.login":
            given = request.form.get("csrf") or request.headers.get("X-CSRF-Token", "")
            if not hmac.compare_digest(given, csrf_token()):
                abort(403)
        return None
    if request.headers.get("HX-Request"):
        return Response("", 401, {"HX-Redirect": url_for("console.login")})
    return redirect(url_for("console.login", next=request.full_path))


@bp.route("/login", methods=["GET", "POST"])
def login() -> Any:
    password = _password()
    if password is None:
        return redirect(url_for("console.now"))
    error = None
    if request.method == "POST":
        if hmac.compare_digest(request.form.get("password", "").encode(),
                               password.encode()):
            session[SESSION_KEY] = csrf_token()
            target = request.args.get("next") or ""
            return redirect(target if target.startswith("/console") else url_for("console.now"))
        error = "That password is not right."
    return render_template("console/login.html", error=error), 401 if error else 200


@bp.post("/logout")
def logout() -> Any:
    session.pop(SESSION_KEY, None)
    return redirect(url_for("console.login"))


@bp.get("/")
def now() -> str:
    return render_template("console/now.html", **_now())


@bp.get("/now/live")
def now_live() -> str:
    return render_template("console/_now.html", **_now())


@bp.get("/calls")
def calls() -> str:
    return render_template("console/calls.html", calls=figures.calls(get_store()))


@bp.get("/calls/<call_id>")
def call(call_id: str) -> str:
    found = figures.call(get_store(), call_id)
    if found is None:
        abort(404)
    can_follow = bool(current_app.config.get("AGENTPHONE_API_KEY")) and found["live"]
    return render_template("console/call.html", call=found, can_follow=can_follow)


@bp.get("/calls/<call_id>/live")
def call_live(call_id: str) -> Response:
    """The platform's live transcript of a call, relayed as server-sent events."""
    from app.agentphone import AgentPhoneError, client_from_app
    from app.agentphone.models import StreamEnded, TranscriptTurn

    app = current_app._get_current_object()  # type: ignore[attr-defined]  # a LocalProxy

    def events():
        try:
            with client_from_app(app) as client:
                for event in client.stream_transcript(call_id):
                    if isinstance(event, TranscriptTurn):
                        yield _sse("turn", {"role": event.role, "content": event.content})
                    elif isinstance(event, StreamEnded):
                        yield _sse("ended", {"status": event.status})
                        return
        except AgentPhoneError as exc:
            yield _sse("failed", {"error": str(exc)})

    return Response(stream_with_context(events()), mimetype="text/event-stream",
                    headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})


@bp.get("/messages")
def messages() -> str:
    return render_template("console/messages.html", rows=figures.messages(get_store()))


@bp.get("/jobs")
def jobs() -> str:
    return render_template("console/jobs.html", **figures.jobs(get_store()))


@bp.post("/jobs/<int:job_id>/retry")
def retry_job(job_id: int) -> Any:
    if not get_store().retry_job(job_id):
        abort(404)
    current_app.logger.info("console: job %s queued again by an operator", job_id)
    return redirect(url_for("console.jobs"))


@bp.get("/deliveries")
def deliveries() -> str:
    platform, stats, platform_error = _platform_deliveries()
    return render_template("console/deliveries.html", rows=figures.deliveries(get_store()),
                           platform=platform, stats=stats, platform_error=platform_error)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _now() -> dict:
    return figures.now(get_store(), _api_health(), _secret_health())


def _secret_health() -> dict:
    """Whether this process can verify deliveries (``SecretSource.state``)."""
    state = get_webhook_secrets().state()
    if state == "none":
        return {"state": state, "error": REFUSED_UNTIL_SET}
    return {"state": state}


_api_cache: dict[str, Any] = {}


def _api_health() -> dict:
    """Whether the platform API answers (checked at most every 30 s per process)."""
    if not current_app.config.get("AGENTPHONE_API_KEY"):
        return {"state": "not configured"}
    cached = _api_cache.get("health")
    if cached and cached[0] > time.monotonic():
        return cached[1]
    from app.agentphone import AgentPhoneError, client_from_app

    started = time.monotonic()
    try:
        with client_from_app(current_app, timeout=(2.0, 3.0), max_retries=0) as client:
            client.delivery_stats(hours=1)
        health = {"state": "ok", "ms": round((time.monotonic() - started) * 1000)}
    except AgentPhoneError as exc:
        health = {"state": "failing", "error": str(exc)[:200]}
    _api_cache["health"] = (time.monotonic() + 30, health)
    return health


def _platform_deliveries() -> tuple[list, Any, str | None]:
    if not current_app.config.get("AGENTPHONE_API_KEY"):
        return [], None, None
    from app.agentphone import AgentPhoneError, client_from_app

    try:
        with client_from_app(current_app, timeout=(2.0, 5.0), max_retries=0) as client:
            page = client.list_deliveries(limit=50)
            stats = client.delivery_stats(hours=24)
    except AgentPhoneError as exc:
        return [], None, str(exc)[:300]
    items = sorted(page.items, key=lambda d: d.status == "delivered")  # failures first
    return items, stats, None


def init_app(app: Any) -> None:
    app.extensions[journal.EXTENSION] = Journal(get_store(app))
    app.register_blueprint(bp)
    if (basis := _enabled_by(app.config)) is not None:
        app.secret_key = hashlib.sha256(b"agentphone-session:" + basis.encode()).hexdigest()
    app.jinja_env.globals.update(csrf_token=csrf_token)
    app.jinja_env.filters["ago"] = figures.ago
    app.jinja_env.filters["ms"] = figures.ms

