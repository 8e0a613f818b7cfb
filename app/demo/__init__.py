"""The built-in demo: a small business's receptionist with its own tables and seed data.

It is the agent when no ``AGENT`` is configured, and only then are its tables added to the
database. ``create_agent`` is its factory (``AGENT=app.demo:create_agent`` names it
explicitly): the receptionist, or with ``LLM_BASE_URL`` or ``LLM_API_KEY`` set, the LLM agent
driving the receptionist's tools.
"""

from app.agent.tools import tools_of
from app.demo.agent import Receptionist
from app.demo.records import DemoRecords
from app.store import get_store

__all__ = ["DemoRecords", "Receptionist", "create_agent"]


def create_agent(app):
    """The demo agent for this app's configuration (its tables are created if missing)."""
    store = get_store(app)
    receptionist = Receptionist(store, app.config["DEMO_TOOL_LATENCY"])
    if app.config.get("LLM_BASE_URL") or app.config.get("LLM_API_KEY"):
        from app.agent.llm import LLMAgent

        return LLMAgent.from_config(app.config, tools=tools_of(receptionist), store=store)
    return receptionist
