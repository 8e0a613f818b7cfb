"""The agent that answers turns, chosen at start-up.

Precedence: an ``AGENT`` object in the app config (tests, embedding), then the ``AGENT``
setting (``module:callable``, called with the app), then the built-in agent.
"""

import importlib

from app.agent.base import Agent, Reply, Turn
from app.agent.demo import DemoAgent

__all__ = ["Agent", "Reply", "Turn", "init_app", "load_factory"]


def load_factory(path):
    """``package.module:name`` -> the object it names."""
    module_name, _, attr = path.partition(":")
    if not module_name or not attr:
        raise ValueError(f"AGENT must look like package.module:factory, got {path!r}")
    return getattr(importlib.import_module(module_name), attr)


def init_app(app):
    agent = app.config.get("AGENT")
    if agent is None and app.config.get("AGENT_FACTORY"):
        agent = load_factory(app.config["AGENT_FACTORY"])(app)
    if agent is None:
        agent = DemoAgent(app.config["DEMO_TOOL_LATENCY"])
    app.extensions["agent"] = agent
