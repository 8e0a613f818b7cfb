"""The agent that answers turns; swap it by setting app.extensions["agent"]."""

from app.agent.base import Agent, Reply, Turn
from app.agent.demo import DemoAgent

__all__ = ["Agent", "Reply", "Turn", "init_app"]


def init_app(app):
    app.extensions["agent"] = app.config.get("AGENT") or DemoAgent(app.config["DEMO_TOOL_LATENCY"])
