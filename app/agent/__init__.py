"""The agent that answers turns, chosen at start-up.

Precedence: an ``AGENT`` object in the app config (tests, embedding), then the ``AGENT``
setting (``module:callable``, called with the app), whose default is the built-in demo
(``app.demo:create_agent``: the receptionist, or the LLM agent with its tools when
``LLM_BASE_URL`` or ``LLM_API_KEY`` is set). The demo package is imported only then.

Writing your own: subclass ``Agent`` and implement ``respond(turn)``; give it tools with
``@tool`` and run several at once with ``run_tools``. See the README's Agent section.
"""

import importlib

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
    "ToolResult", "Toolbox", "Turn", "init_app", "load_factory", "run_tools", "tool", "tools_of",
]


def load_factory(path):
    """``package.module:name`` -> the object it names."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"AGENT must look like package.module:factory, got {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def init_app(app):
    agent = app.config.get("AGENT")
    if agent is None:
        agent = load_factory(app.config["AGENT_FACTORY"])(app)
    app.extensions["agent"] = agent
