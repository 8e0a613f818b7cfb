"""The agent that answers turns, chosen at start-up.

Precedence: an agent object under the config key ``AGENT_INSTANCE`` (tests, embedding), then
``AGENT_FACTORY``, read from the ``AGENT`` setting (``module:callable``, called with the app;
a callable in a config mapping), whose default is the built-in demo
(``app.demo:create_agent``: the receptionist, or the LLM agent with its tools when
``LLM_BASE_URL`` or ``LLM_API_KEY`` is set). The demo package is imported only then.

Writing your own: subclass ``Agent`` and implement ``respond(turn)``; give it tools with
``@tool`` and run several at once with ``run_tools``. See the README's Agent section.
"""

import importlib

from flask import Flask, current_app

from app import metrics
from app.agent.base import TRANSFER, Agent, CallRecord, Reaction, Reply, Turn
from app.agent.tools import (
    Tool,
    Toolbox,
    ToolCall,
    ToolError,
    ToolResult,
    run_tools,
    tool,
    tools_of,
)

__all__ = [
    "TRANSFER", "Agent", "CallRecord", "Reaction", "Reply", "Tool", "ToolCall", "ToolError",
    "ToolResult", "Toolbox", "Turn", "get_agent", "init_app", "load_factory", "run_tools",
    "served_agents", "tool", "tools_of",
]

_KEY = "agents"  # agent id -> its agent; None -> the default agent


def load_factory(path):
    """``package.module:name`` -> the object it names."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"AGENT must look like package.module:factory, got {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def get_agent(agent_id: str | None = None, app: Flask | None = None) -> Agent:
    """The agent that answers for AgentPhone agent ``agent_id``: its own (``AGENTS``), else
    the default one. ``app``: by default the current one."""
    agents = (current_app if app is None else app).extensions[_KEY]
    return agents.get(agent_id) or agents[None]


def served_agents(app=None):
    """Every agent of ``app`` (by default the current one), the default one first."""
    return list((current_app if app is None else app).extensions[_KEY].values())


def _made(factory, app):
    # A callable (embedding, tests) or a setting's module:callable path.
    return (load_factory(factory) if isinstance(factory, str) else factory)(app)


def init_app(app):
    agent = app.config.get("AGENT_INSTANCE")
    if agent is None:
        agent = _made(app.config["AGENT_FACTORY"], app)
    app.extensions[_KEY] = {None: agent} | {
        agent_id: _made(factory, app)
        for agent_id, factory in app.config["AGENT_FACTORIES"].items()
    }
    for served in served_agents(app):
        served.observe_tools(metrics.tool_called)
