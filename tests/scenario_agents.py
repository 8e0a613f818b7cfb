"""Agents for the scenario and ``phone`` fixture tests."""

import itertools

from app.agent import Agent, Reply, tool
from app.store import get_store


class Flaky(Agent):
    """Answers "yes" and "no" in turn, process-wide: a scenario run twice passes once."""

    answers = itertools.cycle(["yes", "no"])

    def respond(self, turn):
        yield Reply(next(self.answers))


class Weather(Agent):
    """Looks up the weather with a tool; says "digits" presses keys."""

    acknowledgement = "Let me look."

    @tool
    def forecast(self, city: str) -> str:
        """Tomorrow's weather.

        Args:
            city: Where.
        """
        return f"sunny in {city}"

    def respond(self, turn):
        if "digits" in turn.text:
            yield Reply("Pressing one.", digits="1")
            return
        yield "Checking the forecast."
        yield Reply(f"Tomorrow it is {self.forecast(city='Paris')}.")


def flaky(app):
    return Flaky()


def weather(app):
    return Weather()


class Memo(Agent):
    """Says who it is and what this caller told it last time (kept in the store)."""

    def __init__(self, name, store):
        self.name, self.store = name, store

    def respond(self, turn):
        state = self.store.session_state(turn.session_id)
        heard = state.get("heard")
        self.store.save_session_state(turn.session_id, {"heard": turn.text})
        yield Reply(f"{self.name} here; last time you said {heard or 'nothing'}.")


def memo_sales(app):
    return Memo("Sales", get_store(app))


def memo_support(app):
    return Memo("Support", get_store(app))
