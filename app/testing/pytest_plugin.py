"""pytest plugin (registered as ``agentphone``): the ``phone`` fixture.

    def test_books(phone):
        call = phone.call(agent="myapp.agent:build")
        reply = call.say("I'd like an appointment on Tuesday at 10, I'm Jane Doe")
        assert "booked" in reply.text
        assert reply.tool_calls[0].name == "book_appointment"
        assert reply.first_line_ms < 500

Each ``phone.call()`` starts the app in this process with that agent (an ``Agent``, a
factory called with the app, or a ``module:factory`` path; by default the configured one),
a fresh SQLite file and a stand-in for the platform's messages endpoint, and returns a
``Call``. Everything is stopped when the test ends.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest


class Phone:
    """Places calls to agents served in this process; see the module docstring."""

    def __init__(self) -> None:
        self._servers: list[Any] = []

    def call(self, agent: Any = None, *, config: dict | None = None, **options: Any) -> Any:
        """A voice call (``channel="sms"`` for a text conversation) to a fresh server."""
        from app.testing.local import LocalServer

        server = LocalServer(agent=agent, config=config)
        self._servers.append(server)
        return server.call(**options)

    def text(self, agent: Any = None, *, config: dict | None = None, **options: Any) -> Any:
        """A text conversation: ``say()`` sends an SMS and returns the reply the agent sent."""
        options.setdefault("channel", "sms")
        return self.call(agent, config=config, **options)

    def close(self) -> None:
        while self._servers:
            self._servers.pop().close()


@pytest.fixture
def phone() -> Iterator[Phone]:
    """Call an agent through the real webhook path (see ``app.testing.pytest_plugin``)."""
    placed = Phone()
    try:
        yield placed
    finally:
        placed.close()
