"""@tool: schemas from type hints and docstrings, argument checks, the concurrent runner."""

import enum
import functools
import inspect
import threading
import time
from typing import Annotated, Literal

import pytest

from app.agent import Agent, Tool, Toolbox, ToolCall, ToolError, Turn, run_tools, tool, tools_of
from app.agent.tools import observed


class Size(enum.Enum):
    SMALL = "small"
    LARGE = "large"


@tool
def order_pizza(
    flavour: Literal["margherita", "funghi"],
    size: Size,
    quantity: int = 1,
    extras: list[str] | None = None,
    note: Annotated[str, "Anything for the kitchen"] = "",
    turn=None,
) -> dict:
    """Order pizzas for the caller.

    The kitchen closes at ten.

    Args:
        flavour: Which pizza.
        size: How big.
        quantity: How many, at least one;
            more than ten needs a manager.
        extras: Extra toppings.

    Returns:
        The order.
    """
    return {"flavour": flavour, "size": size, "quantity": quantity, "extras": extras,
            "note": note, "caller": turn.caller if turn else None}


def test_schema_from_hints_and_docstring():
    assert isinstance(order_pizza, Tool)
    assert order_pizza.name == "order_pizza"
    assert order_pizza.description == "Order pizzas for the caller."
    assert order_pizza.parameters == {
        "type": "object",
        "properties": {
            "flavour": {"enum": ["margherita", "funghi"], "type": "string",
                        "description": "Which pizza."},
            "size": {"enum": ["small", "large"], "description": "How big."},
            "quantity": {"type": "integer", "default": 1,
                         "description": "How many, at least one; more than ten needs a manager."},
            "extras": {"type": "array", "items": {"type": "string"},
                       "description": "Extra toppings."},
            "note": {"type": "string", "description": "Anything for the kitchen", "default": ""},
        },
        "required": ["flavour", "size"],
    }
    assert order_pizza.spec()["type"] == "function"
    assert order_pizza.spec()["function"]["name"] == "order_pizza"
    # Still the plain function when called directly.
    assert order_pizza("funghi", Size.SMALL)["quantity"] == 1


def test_options_override_and_methods_bind():
    @tool(name="weather", description="Weather now.", timeout=2)
    def get_weather(city: str, celsius: bool = True, wind: float | None = None) -> str:
        return city

    assert (get_weather.name, get_weather.description, get_weather.timeout) == (
        "weather", "Weather now.", 2.0)
    assert get_weather.parameters["properties"] == {
        "city": {"type": "string"}, "celsius": {"type": "boolean", "default": True},
        "wind": {"type": "number"}}

    class Shop(Agent):
        def __init__(self, prefix):
            self.prefix = prefix

        @tool
        def greet(self, name: str) -> str:
            """Say hello."""
            return f"{self.prefix} {name}"

    shop = Shop("Hi")
    [greet] = tools_of(shop)
    assert greet.parameters == {"type": "object", "properties": {"name": {"type": "string"}},
                                "required": ["name"]}
    assert greet(name="Ann") == "Hi Ann"
    assert greet.invoke('{"name": "Bo"}') == "Hi Bo"
    assert Shop.greet.name == "greet"


def test_invoke_checks_arguments_and_injects_the_turn():
    turn = Turn(text="x", channel="voice", caller="+1555")
    result = order_pizza.invoke('{"flavour": "funghi", "size": "small", "bogus": 1}', turn)
    assert result["caller"] == "+1555"
    assert "bogus" not in result
    for bad, message in [("{not json", "not valid JSON"), ("[1]", "JSON object"),
                         ({"flavour": "funghi"}, "missing required argument(s): size")]:
        try:
            order_pizza.invoke(bad)
        except ToolError as exc:
            assert message in str(exc)
        else:
            raise AssertionError("no ToolError")


def test_run_tools_overlaps_calls_and_keeps_order():
    running, peak, lock = [0], [0], threading.Lock()

    @tool(timeout=5)
    def slow(n: int) -> int:
        with lock:
            running[0] += 1
            peak[0] = max(peak[0], running[0])
        time.sleep(0.3)
        with lock:
            running[0] -= 1
        return n * 10

    started = time.monotonic()
    results = run_tools([("slow", {"n": i}) for i in range(4)], [slow])
    elapsed = time.monotonic() - started
    assert [r.value for r in results] == [0, 10, 20, 30]
    assert all(r.ok for r in results)
    assert peak[0] == 4
    assert elapsed < 0.9, elapsed  # one at a time would take 1.2 s


def test_run_tools_reports_timeouts_errors_and_unknown_tools():
    @tool(timeout=0.2)
    def stuck() -> str:
        time.sleep(3)
        return "late"

    @tool
    def broken() -> str:
        raise RuntimeError("database password is hunter2")

    @tool
    def refuses(day: str) -> str:
        raise ToolError(f"we are closed on {day}")

    box = Toolbox([stuck, broken, refuses])
    started = time.monotonic()
    results = box.run([ToolCall("stuck", {}, "a"), ToolCall("broken", "{}", "b"),
                       ToolCall("refuses", {"day": "sunday"}, "c"), ToolCall("nope", {}, "d")])
    assert time.monotonic() - started < 1.5
    assert [r.ok for r in results] == [False] * 4
    assert results[0].error == "stuck timed out after 0.2s"
    assert results[1].error == "broken failed: RuntimeError"  # no internals for the model
    assert results[2].content() == '{"error": "we are closed on sunday"}'
    assert results[3].error == "unknown tool 'nope'"
    assert [r.call.id for r in results] == ["a", "b", "c", "d"]


def test_toolbox_refuses_duplicate_names():
    box = Toolbox([order_pizza])
    try:
        box.add(order_pizza)
    except ValueError as exc:
        assert "order_pizza" in str(exc)
    else:
        raise AssertionError("duplicate accepted")
    assert "order_pizza" in box and len(box) == 1
    assert box.specs() == [order_pizza.spec()]


def test_bound_tool_is_made_once_per_instance():
    class Shop:
        @tool
        def price(self, item: str) -> int:
            """The price of an item."""
            return len(item)

    first, second = Shop(), Shop()
    assert first.price is first.price  # no new Tool per call: a voice call holds it
    assert first.price is not second.price
    assert first.price("abc") == 3 and first.price.name == "price"
    assert Shop.price.parameters == first.price.parameters
    assert callable(first.price) and first.price.fn.__self__ is first


def test_an_observed_tool_keeps_its_signature_and_reports_what_was_passed():
    """Every kind of parameter: the call behaves as the function's own, and the report names
    what the caller passed (as ``bind_partial`` would), without the injected turn."""

    def shape(a, b=2, /, c=3, *more, d, e=None, turn=None, **extra):
        return a, b, c, more, d, e, turn, extra

    seen = []
    watched = observed(tool(shape), lambda *report: seen.append(report))
    calls = [((1,), {"d": 4}), ((1, 5, 6, 7, 8), {"d": 4, "e": 0, "turn": "T", "x": 9}),
             ((1,), {"c": None, "d": None})]
    for args, kwargs in calls:
        assert watched(*args, **kwargs) == shape(*args, **kwargs)
        name, arguments, value, error, seconds = seen.pop()
        passed = dict(inspect.signature(shape).bind_partial(*args, **kwargs).arguments)
        passed.pop("turn", None)
        assert (name, arguments, value, error) == ("shape", passed, shape(*args, **kwargs), None)
        assert seconds >= 0
    assert inspect.signature(watched.fn) == inspect.signature(shape)
    assert watched.fn.__name__ == "shape" and watched.parameters == tool(shape).parameters
    with pytest.raises(TypeError):
        watched(a=1, d=4)  # positional-only by name: refused as the function itself would


def test_an_observed_tool_reports_errors_and_methods_keep_their_instance():
    class Shop:
        @tool
        def price(self, item: str, value: int = 0) -> int:
            """The price of an item."""
            if not item:
                raise ToolError("which item?")
            return len(item) + value

    seen = []
    shop = Shop()
    watched = observed(shop.price, lambda *report: seen.append(report[:4]))
    assert watched(item="abc") == 3 and watched("ab", 1) == 3
    with pytest.raises(ToolError):
        watched("")
    assert [s[:2] for s in seen] == [
        ("price", {"item": "abc"}), ("price", {"item": "ab", "value": 1}), ("price", {"item": ""})]
    assert isinstance(seen[-1][3], ToolError) and seen[-1][2] is None


def test_a_tool_observed_twice_or_behind_a_decorator_reports_what_was_passed():
    """Observed twice (two test servers on one agent): each observer sees the arguments passed,
    no defaults added. Behind a decorator: the decorator's own arguments still get through."""

    @tool
    def pick(a, b=2, turn=None):
        return a, b

    def retrying(fn):
        @functools.wraps(fn)
        def call(*args, retries=0, **kwargs):
            return fn(*args, **kwargs)
        return call

    seen = []
    inner = observed(pick, lambda *report: seen.append(("inner", report[1])))
    outer = observed(inner, lambda *report: seen.append(("outer", report[1])))
    assert outer(1) == (1, 2) and outer(1, b=5) == (1, 5)
    assert seen == [("inner", {"a": 1}), ("outer", {"a": 1}),
                    ("inner", {"a": 1, "b": 5}), ("outer", {"a": 1, "b": 5})]
    seen.clear()
    wrapped = observed(tool(retrying(pick.fn)), lambda *report: seen.append(report[1]))
    assert wrapped(1, retries=3) == (1, 2) and wrapped(1, b=4) == (1, 4)
    assert seen == [{"retries": 3}, {"a": 1, "b": 4}]


def test_a_tool_may_not_use_the_observers_own_names():
    def clash(__fn=None):
        return __fn

    with pytest.raises(TypeError, match="reserved"):
        observed(tool(clash), lambda *report: None)
