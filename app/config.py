"""Every setting the service reads, with its default, in one place (the README has the same
table), and how each becomes a value of the app's config.

The app is configured either from the environment (``from_env``: what a deployment does) or
from a mapping of config keys (``from_mapping``: tests, embedding), which replaces the
environment entirely: the table's defaults fill in what it leaves out, and its values are
validated as the environment's would be.
"""

import contextlib
import json
import logging
import os
import secrets
import tomllib
from pathlib import Path
from typing import Any

from dotenv import load_dotenv

# name -> (default, one-line meaning); the README's configuration table mirrors this.
SETTINGS = {
    "AGENTPHONE_WEBHOOK_SECRET": (None, "Webhook signing secret(s), comma-separated; any match "
                                        "is valid."),
    "AGENTPHONE_DEV": ("0", "1 = development mode: a generated secret is used when none is set."),
    "DATABASE_URL": (None, "sqlite:///file.db, sqlite:////abs/path.db or postgresql://...; "
                           "default: agentphone.db in the instance folder."),
    "DATABASE_POOL_MAX": ("10", "PostgreSQL connections per process at most (web workers x "
                                "this must fit the database's connection limit)."),
    "AGENTPHONE_API_KEY": (None, "API key for the AgentPhone REST API (sending texts, CLI)."),
    "AGENTPHONE_API_URL": ("https://api.agentphone.ai", "Base URL of the AgentPhone REST API."),
    "VOICE_TIMEOUT": ("30", "Seconds the platform waits for a voice reply (5-120); the final line "
                            "is sent before it."),
    "VOICE_FILLER_AFTER": ("8", "Seconds a voice turn may say nothing before a short filler line "
                                "is spoken (again after each such silence); 0 = never."),
    "AGENT": ("app.demo:create_agent", "Import path module:callable of your agent factory, "
                                       "called with the app; the default is the demo "
                                       "receptionist (its tables are created only then)."),
    "AGENTS": (None, "Several agents behind one server: agent_id=module:callable pairs, "
                     "comma-separated; deliveries for other agents go to AGENT."),
    "AGENTS_FILE": (None, "A TOML or JSON file mapping AgentPhone agent ids to module:callable "
                          "factories (an [agents] table, or a top-level mapping)."),
    "DEMO_TOOL_LATENCY": ("0.5", "Seconds each demo tool takes (simulates a slow upstream)."),
    "LLM_BASE_URL": (None, "OpenAI-compatible API base URL, e.g. https://api.openai.com/v1; "
                           "setting it (or LLM_API_KEY) switches to the LLM agent."),
    "LLM_API_KEY": (None, "API key for the LLM endpoint."),
    "LLM_MODEL": ("gpt-4o-mini", "Chat model name passed to the endpoint."),
    "LLM_SYSTEM_PROMPT": (None, "System prompt for the LLM agent; default: a built-in "
                                "receptionist prompt."),
    "LLM_MAX_ROUNDS": ("4", "Model calls per turn (tool rounds included) before giving up."),
    "LLM_TIMEOUT": ("20", "Seconds to wait for the LLM endpoint (connect and between chunks)."),
    "LLM_TOOL_TIMEOUT": ("8", "At most this many seconds per tool call (a tool's own timeout "
                              "may be shorter); a late call is reported to the model as timed "
                              "out."),
    "LLM_TOOL_CHOICE": (None, "auto, required (first round only) or none, sent as tool_choice; "
                              "unset: not sent (the server's default)."),
    "LLM_MAX_TOKENS": ("300", "max_tokens per model call, sized for a spoken reply; 0: not sent. "
                              "An answer cut at this cap is treated as a failure."),
    "LLM_EXTRA_BODY": (None, "JSON object merged into every request body (server-specific "
                             "parameters), e.g. {\"temperature\": 0.2}."),
    "LLM_STREAM_TOOLS": ("on", "off = rounds that offer tools are not streamed (for servers that "
                               "cannot stream tool calls); answers are still streamed."),
    "TEXT_FAILURE_REPLY": ("on", "on = when the agent still fails on a text's last job attempt, "
                                 "send a short written apology; off = send nothing."),
    "JOB_RUNNER": ("on", "on = run background jobs in each web worker; off = leave them to "
                         "`agentphone worker`."),
    "JOB_CONCURRENCY": ("4", "Jobs one process runs at the same time."),
    "JOB_MAX_ATTEMPTS": ("5", "Attempts before a job is dead-lettered."),
    "JOB_LEASE": ("60", "Seconds a claimed job is reserved for its worker before another may "
                        "take it."),
    "JOB_TIMEOUT": ("60", "Seconds one attempt of a job may run (1-3600); past it the attempt "
                          "is cancelled and counts as failed."),
    "JOB_GRACE": ("20", "Seconds running jobs get to finish when a process stops, before they "
                        "are handed back to the queue."),
    "LOOP_BLOCK_THRESHOLD": ("0.1", "Seconds a gevent worker's event loop may run one greenlet "
                                    "without switching before the block is logged with its "
                                    "stack and counted (0 = off)."),
    "PORT": ("8000", "Port gunicorn binds (0.0.0.0:$PORT)."),
    "WEB_CONCURRENCY": ("2", "gunicorn worker processes."),
    "WORKER_CONNECTIONS": ("4000", "Open connections (held voice streams) per gevent worker; "
                                   "past it new connections are answered 503 at once."),
    "REQUEST_READ_TIMEOUT": ("10", "Seconds a request (request line, headers and body) may "
                                   "take to arrive before its connection is dropped."),
    "LOG_LEVEL": ("INFO", "Logging level (DEBUG, INFO, WARNING, ERROR)."),
    "LOG_FORMAT": ("text", "text (for people) or json (one object per line, for a log "
                           "pipeline; recommended in production)."),
    "CONSOLE_PASSWORD": (None, "Turns the operator console at /console on, behind this "
                               "password (in development mode it is on without one)."),
    "METRICS_TOKEN": (None, "When set, GET /metrics needs Authorization: Bearer <token>."),
    "PROMETHEUS_MULTIPROC_DIR": (None, "Where every process writes its metrics for /metrics to "
                                       "add up; default: prometheus/ in the instance folder, "
                                       "emptied when gunicorn starts."),
    "SECRET_GRACE": ("86400", "Seconds a webhook secret stays valid after `agentphone webhook "
                              "rotate|set` replaced it (the platform retries for about a day)."),
}


class ConfigError(RuntimeError):
    """The configuration cannot run a safe server."""


REFUSAL_WITHOUT_KEY = (
    "AGENTPHONE_WEBHOOK_SECRET is not set and no secret is stored: refusing to accept unsigned "
    "webhooks. Run `agentphone webhook set https://<host>/webhook` (it stores the secret the "
    "platform returns), or set AGENTPHONE_WEBHOOK_SECRET to the whsec_... secret shown when the "
    "webhook was created (or AGENTPHONE_DEV=1 for a generated development secret)."
)


def env(name, environ=None):
    """The value of setting ``name`` in ``environ`` (the process environment by default), else
    its default."""
    value = (os.environ if environ is None else environ).get(name)
    return value if value not in (None, "") else SETTINGS[name][0]


def load_dotenv_file():
    """Read .env from the working directory (development); real environment variables win."""
    load_dotenv(Path.cwd() / ".env", override=False)


def instance_path():
    """The instance folder of the app (development secret, default SQLite file), without
    building the app."""
    from flask import Flask  # here only: gunicorn's master reads settings before any worker

    return Flask("app", instance_relative_config=True).instance_path


def parse_secrets(raw):
    """The comma-separated secrets of ``raw``; blank entries are dropped, never kept as keys."""
    return tuple(s.strip() for s in (raw or "").split(",") if s.strip())


def check_secrets(webhook_secrets):
    """Raise ConfigError unless there is at least one secret and none is blank: anyone can
    sign with an empty key."""
    if not webhook_secrets:
        raise ConfigError("no webhook secret configured")
    if any(not isinstance(s, str) or not s.strip() for s in webhook_secrets):
        raise ConfigError("a webhook secret is empty or blank: refusing to verify with it")


def dev_secret(instance_path):
    """A development secret created once and shared by every worker through the instance folder.

    The file is written under a temporary name and linked into place, so a concurrent reader
    sees either no file or the whole secret, and the first writer wins for every process.
    """
    path = Path(instance_path) / "dev-webhook-secret"
    path.parent.mkdir(parents=True, exist_ok=True)
    if not path.exists():
        tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(8)}")
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        try:
            with os.fdopen(fd, "w") as f:
                f.write("whsec_dev_" + secrets.token_hex(16))
                f.flush()
                os.fsync(f.fileno())
            # link, unlike rename, never replaces a file another process put there first.
            with contextlib.suppress(FileExistsError):
                os.link(tmp, path)
        finally:
            tmp.unlink()
    secret = path.read_text().strip()
    if not secret:
        raise ConfigError(f"{path} is empty: delete it to have a new development secret made")
    return secret


def agent_factories(pairs, path):
    """``{agent_id: "module:callable"}`` from AGENTS (``id=path,...``) and AGENTS_FILE."""
    found = {}
    if path:
        found.update(_agents_file(Path(path)))
    for pair in (pairs or "").split(","):
        if not pair.strip():
            continue
        agent_id, sep, factory = pair.partition("=")
        if not sep or not agent_id.strip() or ":" not in factory:
            raise ConfigError(f"AGENTS: {pair.strip()!r} is not agent_id=module:callable")
        found[agent_id.strip()] = factory.strip()
    return found


def _agents_file(path):
    try:
        text = path.read_text(encoding="utf-8")
        data = tomllib.loads(text) if path.suffix == ".toml" else json.loads(text)
    except (OSError, ValueError) as exc:
        raise ConfigError(f"AGENTS_FILE={path}: {exc}") from None
    table = data.get("agents", data) if isinstance(data, dict) else None
    if not isinstance(table, dict) or not all(
            isinstance(k, str) and isinstance(v, str) and ":" in v for k, v in table.items()):
        raise ConfigError(f"AGENTS_FILE={path}: expected a mapping of agent ids to "
                          "module:callable strings")
    return dict(table)


# Readers: (setting name, its text from the environment or a value from a config mapping) ->
# the config value; ConfigError when it is not one a safe server can run with.

def _text(name, raw):
    return raw


def _url(name, raw):
    return raw.rstrip("/") if isinstance(raw, str) else raw


def _enabled(name, raw):
    """Off unless switched on (1, true, yes, on)."""
    return raw if isinstance(raw, bool) else str(raw).lower() in ("1", "true", "yes", "on")


def _switch(name, raw):
    """On unless switched off (off, 0, false, no)."""
    return raw if isinstance(raw, bool) else str(raw).lower() not in ("off", "0", "false", "no")


def _number(kind, low, high):
    def read(name, raw):
        try:
            value = kind(raw)
        except (TypeError, ValueError):
            raise ConfigError(f"{name}={raw!r} is not a number") from None
        if not low <= value <= high:
            raise ConfigError(f"{name}={raw} is out of range ({low}-{high})")
        return value

    return read


def _choice(*allowed):
    def read(name, raw):
        value = raw.lower() if isinstance(raw, str) else raw
        if value not in allowed:
            raise ConfigError(f"{name}={value!r} is not one of {', '.join(filter(None, allowed))}")
        return value

    return read


def _log_level(name, raw):
    level = str(raw).upper()
    if level not in logging.getLevelNamesMapping():
        raise ConfigError(f"{name}={raw!r} is not a logging level")
    return level


def _json_object(name, raw):
    if raw is None or isinstance(raw, dict):
        return raw or {}
    try:
        value = json.loads(raw)
    except ValueError as exc:
        raise ConfigError(f"{name} is not valid JSON: {exc}") from None
    if not isinstance(value, dict):
        raise ConfigError(f"{name} must be a JSON object, got {raw!r}")
    return value


def _secrets(name, raw):
    found = parse_secrets(raw) if isinstance(raw, str) or raw is None else tuple(raw)
    if found:
        check_secrets(found)
    return found


# config key -> its reader. AGENT_FACTORIES comes from two settings (AGENTS, AGENTS_FILE);
# PORT, WEB_CONCURRENCY, WORKER_CONNECTIONS and PROMETHEUS_MULTIPROC_DIR are gunicorn's and
# stay in the environment.
READERS = {
    "DEV_MODE": _enabled,
    "WEBHOOK_SECRETS": _secrets,
    "DATABASE_URL": _text,
    "DATABASE_POOL_MAX": _number(int, 1, 1000),
    "AGENTPHONE_API_KEY": _text,
    "AGENTPHONE_API_URL": _url,
    "VOICE_TIMEOUT": _number(float, 5, 120),
    "VOICE_FILLER_AFTER": _number(float, 0, 120),
    "AGENT_FACTORY": _text,
    "DEMO_TOOL_LATENCY": _number(float, 0, 600),
    "LLM_BASE_URL": _text,
    "LLM_API_KEY": _text,
    "LLM_MODEL": _text,
    "LLM_SYSTEM_PROMPT": _text,
    "LLM_MAX_ROUNDS": _number(int, 1, 20),
    "LLM_TIMEOUT": _number(float, 1, 600),
    "LLM_TOOL_TIMEOUT": _number(float, 0.1, 600),
    "LLM_TOOL_CHOICE": _choice(None, "auto", "required", "none"),
    "LLM_MAX_TOKENS": _number(int, 0, 1_000_000),
    "LLM_EXTRA_BODY": _json_object,
    "LLM_STREAM_TOOLS": _switch,
    "TEXT_FAILURE_REPLY": _switch,
    "JOB_RUNNER": _switch,
    "JOB_CONCURRENCY": _number(int, 1, 1000),
    "JOB_MAX_ATTEMPTS": _number(int, 1, 100),
    "JOB_LEASE": _number(float, 1, 86400),
    "JOB_GRACE": _number(float, 0, 3600),
    "JOB_TIMEOUT": _number(float, 1, 3600),
    "REQUEST_READ_TIMEOUT": _number(float, 0.1, 3600),
    "LOOP_BLOCK_THRESHOLD": _number(float, 0, 60),
    "LOG_LEVEL": _log_level,
    "LOG_FORMAT": _choice("text", "json"),
    "METRICS_TOKEN": _text,
    "CONSOLE_PASSWORD": _text,
    "SECRET_GRACE": _number(float, 0, 30 * 86400),
}
# config key -> the setting it is read from, where their names differ.
SETTING_OF = {"DEV_MODE": "AGENTPHONE_DEV", "WEBHOOK_SECRETS": "AGENTPHONE_WEBHOOK_SECRET",
              "AGENT_FACTORY": "AGENT"}
# A mapping that names a setting instead of its config key is refused.
_KEY_OF = {name: key for key, name in SETTING_OF.items()} | {
    "AGENTS": "AGENT_FACTORIES", "AGENTS_FILE": "AGENT_FACTORIES"}


def read(key, environ=None):
    """Config ``key`` as read from ``environ`` (the process environment by default)."""
    name = SETTING_OF.get(key, key)
    return READERS[key](name, env(name, environ))


def default(key: str) -> Any:
    """The value config ``key`` has when its setting is not set: the table's default, read."""
    return read(key, environ={})


def from_env(instance_path, require_secret=True, environ=None):
    """Build the Flask config mapping from ``environ`` (the process environment by default);
    raises ConfigError when unsafe.

    Without AGENTPHONE_WEBHOOK_SECRET, development mode generates a secret; otherwise
    ``WEBHOOK_SECRETS`` is empty and the app relies on secrets in the store.
    """
    settings = {key: read(key, environ) for key in READERS}
    settings["AGENT_FACTORIES"] = agent_factories(env("AGENTS", environ),
                                                  env("AGENTS_FILE", environ))
    settings["DATABASE_URL"] = settings["DATABASE_URL"] or "sqlite:///" + str(
        Path(instance_path) / "agentphone.db")
    if not settings["WEBHOOK_SECRETS"] and require_secret and settings["DEV_MODE"]:
        settings["WEBHOOK_SECRETS"] = (dev_secret(instance_path),)
    return settings


def from_mapping(mapping, instance_path):
    """Build the Flask config mapping from ``mapping`` of config keys alone: the environment
    is not read, the table's defaults fill in the keys it leaves out, and its values are
    validated as the environment's are. Keys the table does not know (``TESTING``,
    ``AGENT_INSTANCE``) are kept as given."""
    misnamed = [f"{name} (config key {_KEY_OF[name]})" for name in mapping if name in _KEY_OF]
    if misnamed:
        raise ConfigError("environment variable names given as config keys: "
                          + ", ".join(misnamed))
    settings = from_env(instance_path, require_secret=False, environ={})
    for key, value in mapping.items():
        settings[key] = READERS[key](key, value) if key in READERS else value
    return settings
