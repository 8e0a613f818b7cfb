"""A webhook server in this process, for scenario runs, ``agentphone call`` and tests.

It is the real app (signature check, delivery claims, voice streaming, the job runner)
served by Werkzeug's threaded server on a loopback port, with a fresh SQLite file, the
agent's tool calls observed, and a stand-in for the platform's ``POST /v1/messages`` so that
text replies can be read back.
"""

from __future__ import annotations

import json
import logging
import secrets
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path
from typing import Any

from werkzeug.serving import WSGIRequestHandler, make_server
from werkzeug.wrappers import Request, Response

from app.testing.call import Call, ToolUse

log = logging.getLogger(__name__)


class MessagesStandIn:
    """Answers ``POST /v1/messages`` like the platform and keeps what was sent, per
    conversation (the reply job addresses the caller's number; the call maps it back)."""

    def __init__(self) -> None:
        self.sent: dict[str, list[str]] = defaultdict(list)
        self._lock = threading.Lock()

    def __call__(self, environ: dict, start_response: Callable) -> Any:
        request = Request(environ)
        if request.method == "POST" and request.path == "/v1/messages":
            body = request.get_json(silent=True) or {}
            with self._lock:
                self.sent[str(body.get("to_number"))].append(str(body.get("body") or ""))
            response = Response(json.dumps({
                "id": f"msg_{uuid.uuid4().hex[:12]}", "status": "sent", "channel": "sms",
                "from_number": body.get("from_number"), "to_number": body.get("to_number"),
                "media_urls": body.get("media_urls") or [],
            }), content_type="application/json")
        else:
            response = Response(json.dumps({"error": {
                "code": "NOT_FOUND", "message": f"{request.method} {request.path} is not "
                "served by the local stand-in"}}), status=404, content_type="application/json")
        return response(environ, start_response)

    def replies_to(self, number: str) -> list[str]:
        with self._lock:
            return list(self.sent.get(number, ()))


class _QuietHandler(WSGIRequestHandler):
    def log_request(self, *args: Any) -> None:  # the conversation or the report says it all
        pass


class _Serving:
    """One WSGI app served on 127.0.0.1 by a background thread."""

    def __init__(self, wsgi_app: Callable) -> None:
        self.server = make_server("127.0.0.1", 0, wsgi_app, threaded=True,
                                  request_handler=_QuietHandler)
        self.url = f"http://127.0.0.1:{self.server.server_port}"
        self.thread = threading.Thread(target=self.server.serve_forever, args=(0.05,),
                                       daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


class LocalServer:
    """The app with ``agent`` served on a loopback port until ``close()``.

    ``agent``: an ``Agent``, a factory called with the app, a ``module:factory`` path, or
    ``None`` for the agent the configuration chooses. The settings are the environment's (and
    ``.env``'s), with the server's own address, database and secret; ``config`` overrides them.
    ``clock_offset`` shifts the server's clock (scenario ``clock:``).
    """

    def __init__(self, agent: Any = None, config: dict | None = None,
                 clock_offset: float = 0.0) -> None:
        from app import create_app
        from app.agent import get_agent, served_agents
        from app.config import from_env, instance_path, load_dotenv_file
        from app.jobs import get_job_runner
        from app.store import get_store

        load_dotenv_file()
        environment = from_env(instance_path(), require_secret=False)
        self._tmp = tempfile.TemporaryDirectory(prefix="agentphone-local-")
        self.secret = "whsec_local_" + secrets.token_hex(12)
        self.clock_offset = clock_offset
        self.tool_log: list[ToolUse] = []
        self._calls: list[Call] = []
        self.messages = MessagesStandIn()
        self._platform = _Serving(self.messages)
        settings = {
            **environment,
            "WEBHOOK_SECRETS": (self.secret,),
            "DEV_MODE": False,
            "DATABASE_URL": "sqlite:///" + str(Path(self._tmp.name) / "local.db"),
            "AGENTPHONE_API_KEY": "sk_local_stand_in",
            "AGENTPHONE_API_URL": self._platform.url,
            "JOB_RUNNER": True,
            "LOG_LEVEL": "WARNING",  # the report or the conversation is the output
        }
        if agent is not None:
            is_agent = not isinstance(agent, type) and callable(getattr(agent, "respond", None))
            settings["AGENT_INSTANCE" if is_agent else "AGENT_FACTORY"] = agent
        settings.update(config or {})
        try:
            self.app = create_app(settings, clock=self.clock)
            self.agent = get_agent(app=self.app)
            self.store = get_store(self.app)
            self._job_runner = get_job_runner(self.app)
            for served in served_agents(self.app):
                served.observe_tools(self._tool_called)
            self._web = _Serving(self.app)
        except BaseException:
            self._platform.close()
            self._tmp.cleanup()
            raise
        self.url = self._web.url + "/webhook"

    def clock(self) -> float:
        return time.time() + self.clock_offset

    def call(self, **options: Any) -> Call:
        """A new ``Call`` to this server (options as for ``Call``)."""
        caller = options.get("caller", "+15559876543")
        call = Call(self.url, self.secret, clock=self.clock, tool_log=self.tool_log,
                    outbox=lambda _conversation: self.messages.replies_to(caller), **options)
        call.server = self
        self._calls.append(call)
        return call

    def agent_for(self, agent_id: str | None) -> Any:
        """The agent that answers deliveries for ``agent_id`` on this server."""
        from app.agent import get_agent

        return get_agent(agent_id, self.app)

    def close(self) -> None:
        for call in self._calls:
            call.close()
        self._web.close()
        self._platform.close()
        self._job_runner.stop()
        self.store.close()
        self._tmp.cleanup()

    def __enter__(self) -> LocalServer:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _tool_called(self, name: str, arguments: dict, value: Any,
                     error: BaseException | None, seconds: float) -> None:
        self.tool_log.append(ToolUse(name, _plain(arguments), _plain(value),
                                     None if error is None else f"{type(error).__name__}: {error}"))


def _plain(value: Any) -> Any:
    """JSON-shaped copy (what a report prints and a scenario compares against)."""
    try:
        return json.loads(json.dumps(value, default=str))
    except (TypeError, ValueError):
        return repr(value)
