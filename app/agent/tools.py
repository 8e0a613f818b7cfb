"""Tools: plain Python functions an agent (or an LLM) can call, and a concurrent runner.

    from app.agent import tool

    @tool(timeout=5)
    def lookup_order(order_id: str, turn: Turn) -> dict:
        '''Find an order and its delivery status.

        Args:
            order_id: The order number the caller gave, e.g. "4521".
        '''
        ...

``lookup_order`` is now a ``Tool``: ``.name``, ``.description`` (the docstring's summary),
``.parameters`` (a JSON schema built from the type hints, with the ``Args:`` descriptions)
and ``lookup_order(order_id="4521")`` still calls the function. A parameter named ``turn``
is not part of the schema: the runner passes the current ``Turn`` to it (for idempotency
keys such as ``turn.delivery_id``, or the caller's number). ``@tool`` also works on methods.

``run_tools(calls)`` runs several calls at once (greenlets under gevent, threads
otherwise), each bounded by its tool's timeout, and never raises: a failure or a timeout
becomes an error result that can be shown to the model or turned into a sentence.
"""

import enum
import functools
import inspect
import json
import linecache
import logging
import re
import time
import types
import typing
import weakref
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, overload

from app.runtime import spawn

if TYPE_CHECKING:
    from app.agent.base import Turn

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
INJECTED = frozenset({"turn"})

#: ``callback(name, arguments, value, error, seconds)``, told of each call of an observed tool.
ToolObserver = Callable[[str, dict[str, Any], Any, BaseException | None, float], object]


class ToolError(Exception):
    """Raise inside a tool to report a problem in words (shown to the model as the result)."""


class Tool:
    """A callable with the metadata a model needs to call it.

    :param fn: the function; calling the Tool calls it.
    :param name: the name the model calls it by (default: the function's).
    :param description: what it does (default: the docstring's summary).
    :param parameters: its JSON schema (default: built from the type hints and the
        docstring's ``Args:``).
    :param timeout: seconds a call may take in ``run_tools`` (default 10).
    """

    def __init__(self, fn: Callable[..., Any], name: str | None = None,
                 description: str | None = None, parameters: dict[str, Any] | None = None,
                 timeout: float | None = None) -> None:
        functools.update_wrapper(self, fn)
        self.fn = fn
        self.name = name or fn.__name__
        summary, arg_docs = parse_docstring(inspect.getdoc(fn) or "")
        self.description = description or summary or self.name.replace("_", " ")
        self.timeout = DEFAULT_TIMEOUT if timeout is None else float(timeout)
        signature = inspect.signature(fn)
        params = list(signature.parameters.values())
        # An unbound method: `self`/`cls` is supplied by binding, never by the model.
        if params and params[0].name in ("self", "cls"):
            params = params[1:]
        self.wants_turn = any(p.name in INJECTED for p in params)
        self.parameters = parameters or schema_for(params, arg_docs, fn)

    # Calling a Tool calls `fn` itself: no forwarding level on a held call's greenlet stack.
    __call__ = property(lambda self: self.fn)

    def __set_name__(self, owner: type, name: str) -> None:
        self._attr = name

    def __get__(self, obj: object, owner: type | None = None) -> "Tool":
        """``@tool`` on a method: ``instance.method`` is a Tool bound to the instance, made
        once and kept in the instance (which then shadows this descriptor)."""
        if obj is None:
            return self
        bound = object.__new__(Tool)
        bound.__dict__.update(self.__dict__)
        bound.fn = self.fn.__get__(obj, owner)
        if getattr(self, "_attr", None) and hasattr(obj, "__dict__"):
            obj.__dict__[self._attr] = bound
        return bound

    def __repr__(self) -> str:
        return f"<Tool {self.name}>"

    def spec(self) -> dict[str, Any]:
        """The OpenAI-compatible ``tools=[...]`` entry."""
        return {
            "type": "function",
            "function": {
                "name": self.name,
                "description": self.description,
                "parameters": self.parameters,
            },
        }

    def invoke(self, arguments: dict[str, Any] | str, turn: "Turn | None" = None) -> Any:
        """Call with model-supplied ``arguments`` (a dict or JSON text), checked against the
        schema's required names; unknown names are dropped rather than crashing the call.

        :param turn: passed to a parameter named ``turn``, if the function has one.
        :return: what the function returns.
        :raises ToolError: the arguments are not a JSON object or miss a required name.
        """
        if isinstance(arguments, str):
            text = arguments
            try:
                arguments = json.loads(text) if text.strip() else {}
            except ValueError:
                raise ToolError(f"arguments are not valid JSON: {text[:200]!r}") from None
        if not isinstance(arguments, dict):
            raise ToolError("arguments must be a JSON object")
        known = self.parameters.get("properties", {})
        missing = [n for n in self.parameters.get("required", []) if arguments.get(n) is None]
        if missing:
            raise ToolError("missing required argument(s): " + ", ".join(missing))
        kwargs = {k: v for k, v in arguments.items() if k in known}
        if self.wants_turn:
            kwargs["turn"] = turn
        return self.fn(**kwargs)


@overload
def tool(fn: Callable[..., Any], *, name: str | None = None, description: str | None = None,
         parameters: dict[str, Any] | None = None, timeout: float | None = None) -> Tool: ...


@overload
def tool(fn: None = None, *, name: str | None = None, description: str | None = None,
         parameters: dict[str, Any] | None = None, timeout: float | None = None
         ) -> Callable[[Callable[..., Any]], Tool]: ...


def tool(fn: Callable[..., Any] | None = None, *, name: str | None = None,
         description: str | None = None, parameters: dict[str, Any] | None = None,
         timeout: float | None = None) -> Tool | Callable[[Callable[..., Any]], Tool]:
    """Make a function a ``Tool``: bare (``@tool``) or with options (``@tool(timeout=3)``).

    The options are ``Tool``'s: ``name``, ``description``, ``parameters``, ``timeout``.
    """

    def wrap(f: Callable[..., Any]) -> Tool:
        return Tool(f, name=name, description=description, parameters=parameters,
                    timeout=timeout)

    return wrap(fn) if fn is not None else wrap


def observed(t: Tool, callback: ToolObserver) -> Tool:
    """A copy of Tool ``t`` that reports each call that reaches its function:
    ``callback(name, arguments, value, error, seconds)`` after it returns or raises
    (``arguments`` are those passed, without the injected ``turn``). A call whose arguments
    do not fit the function's signature raises TypeError without a report."""
    copy = object.__new__(Tool)
    copy.__dict__.update(t.__dict__)
    fn = t.fn
    if hasattr(fn, "__wrapped__") and fn not in _WATCHERS:
        # A decorator's wrapper: it may take other arguments than the function it wraps.
        watched = _watching_any(fn, t.name, callback)
    else:
        watched = _watching(fn, t.name, callback)
    copy.fn = functools.wraps(fn)(watched)
    _WATCHERS.add(copy.fn)
    return copy


_UNSET = object()  # the default of every optional parameter of a watching wrapper
_WATCHERS: "weakref.WeakSet[Callable[..., Any]]" = weakref.WeakSet()  # observed() made them
_CLOSURE = ("__fn", "__name", "__callback", "__unset", "__clock", "__defaults",
            "__BaseException")
# The wrapper's own names: a tool's parameters may not use them.
_WATCHING = (*_CLOSURE, "__started", "__value", "__error")


def _watching(fn: Callable[..., Any], name: str, callback: ToolObserver) -> Callable[..., Any]:
    """A function with ``fn``'s own parameters that calls ``fn`` and reports the call.

    Generated from the signature rather than ``fn(*args, **kwargs)``: a held voice turn waits
    inside the call, and that form is one more C-level call on its greenlet's saved stack,
    plus copies of the arguments. An optional parameter left out stays left out when ``fn``
    is itself such a wrapper (its defaults are ``_UNSET``).
    """
    P = inspect.Parameter
    params = list(inspect.signature(fn, follow_wrapped=False).parameters.values())
    if any(p.name in _WATCHING for p in params):
        raise TypeError(f"tool {name}: parameter names {', '.join(_WATCHING)} are reserved")
    heads: list[str] = []
    passes: list[str] = []
    passed: list[str] = []
    defaults: dict[str, Any] = {}
    for i, p in enumerate(params):
        head = value = p.name
        if p.kind is P.VAR_POSITIONAL:
            head = value = "*" + p.name
        elif p.kind is P.VAR_KEYWORD:
            head = value = "**" + p.name
        elif p.default is not P.empty:
            head = p.name + "=__unset"
            value = f"({p.name} if {p.name} is not __unset else __defaults[{p.name!r}])"
            defaults[p.name] = p.default
        if p.kind is P.KEYWORD_ONLY:
            if not any(h.startswith("*") for h in heads):
                heads.append("*")
            value = f"{p.name}={value}"
        heads.append(head)
        passes.append(value)
        last_positional_only = p.kind is P.POSITIONAL_ONLY and (
            i + 1 == len(params) or params[i + 1].kind is not P.POSITIONAL_ONLY)
        if last_positional_only:
            heads.append("/")
        if p.name not in INJECTED:
            # As bind_partial names them: only what was passed, *args and **kwargs if not empty.
            empty = " or __unset" if p.kind in (P.VAR_POSITIONAL, P.VAR_KEYWORD) else ""
            passed.append(f"({p.name!r}, {p.name}{empty})")
    arguments = ("{__k: __v for __k, __v in (" + "".join(f"{a}, " for a in passed)
                 + ") if __v is not __unset}")
    source = (
        f"def make({', '.join(_CLOSURE)}):\n"
        f"    def watched({', '.join(heads)}):\n"
        f"        __started = __clock()\n"
        f"        try:\n"
        f"            __value = __fn({', '.join(passes)})\n"
        f"        except __BaseException as __error:\n"
        f"            __callback(__name, {arguments}, None, __error, __clock() - __started)\n"
        f"            raise\n"
        f"        __callback(__name, {arguments}, __value, None, __clock() - __started)\n"
        f"        return __value\n"
        f"    return watched\n"
    )
    filename = f"<watching {name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    namespace: dict[str, Any] = {}
    # The source names only the function's own parameters (identifiers) and fixed text.
    exec(compile(source, filename, "exec"), namespace)  # noqa: S102
    return namespace["make"](fn, name, callback, _UNSET, time.monotonic, defaults,
                             BaseException)


def _watching_any(fn: Callable[..., Any], name: str,
                  callback: ToolObserver) -> Callable[..., Any]:
    """``_watching`` for a wrapped function: any arguments, named as the function names
    them when they fit its signature."""
    signature = inspect.signature(fn)

    def arguments_of(args, kwargs):
        try:
            arguments = dict(signature.bind_partial(*args, **kwargs).arguments)
        except TypeError:
            arguments = dict(kwargs)
        for injected in INJECTED:
            arguments.pop(injected, None)
        return arguments

    def watched(*args, **kwargs):
        started = time.monotonic()
        try:
            value = fn(*args, **kwargs)
        except BaseException as exc:
            callback(name, arguments_of(args, kwargs), None, exc, time.monotonic() - started)
            raise
        callback(name, arguments_of(args, kwargs), value, None, time.monotonic() - started)
        return value

    return watched


def tools_of(obj: object) -> list[Tool]:
    """Every ``@tool`` method of an object, bound to it, in definition order."""
    found: dict[str, Tool] = {}
    for klass in reversed(type(obj).__mro__):
        for attr, value in vars(klass).items():
            if isinstance(value, Tool):
                found[attr] = getattr(obj, attr)
    return list(found.values())


# -- schema from type hints -------------------------------------------------------------------

_ARGS_HEADER = re.compile(r"^(Args|Arguments|Parameters|Params):\s*$")
_ARG_LINE = re.compile(r"^\s*(\*{0,2}\w+)\s*(\([^)]*\))?\s*:\s*(.*)$")


def parse_docstring(doc: str) -> tuple[str, dict[str, str]]:
    """(summary, {arg: description}) from a Google-style docstring."""
    args: dict[str, list[Any]] = {}  # name: [description, indent]
    summary_lines, current, in_args, summary_done = [], None, False, False
    for raw in doc.splitlines():
        line = raw.rstrip()
        if _ARGS_HEADER.match(line.strip()):
            in_args = True
            continue
        if in_args:
            if not line.strip():
                continue
            if not raw.startswith((" ", "\t")):
                in_args = False  # another section (Returns:, Raises:) or prose
            else:
                m = _ARG_LINE.match(line)
                indent = len(raw) - len(raw.lstrip())
                if m and (current is None or indent <= args[current][1]):
                    current = m.group(1).lstrip("*")
                    args[current] = [m.group(3).strip(), indent]
                elif current is not None:
                    args[current][0] = (args[current][0] + " " + line.strip()).strip()
                continue
        if not summary_done:
            if line.strip():
                summary_lines.append(line.strip())
            elif summary_lines:
                summary_done = True  # the summary is the first paragraph
    return " ".join(summary_lines), {k: v[0] for k, v in args.items()}


def schema_for(params: Iterable[inspect.Parameter], arg_docs: Mapping[str, str],
               fn: Callable[..., Any]) -> dict[str, Any]:
    """A JSON schema (type object) for a function's parameters."""
    try:
        hints = typing.get_type_hints(fn, include_extras=True)
    except Exception:  # forward references we cannot resolve: fall back to no types
        hints = {}
    properties, required = {}, []
    for p in params:
        if p.name in INJECTED or p.kind in (p.VAR_POSITIONAL, p.VAR_KEYWORD):
            continue
        prop = json_type(hints.get(p.name, p.annotation))
        if arg_docs.get(p.name):
            prop["description"] = arg_docs[p.name]
        if p.default is inspect.Parameter.empty:
            required.append(p.name)
        elif p.default is not None and _jsonable(p.default):
            prop["default"] = p.default
        properties[p.name] = prop
    schema = {"type": "object", "properties": properties}
    if required:
        schema["required"] = required
    return schema


_SIMPLE = {str: "string", int: "integer", float: "number", bool: "boolean", dict: "object",
           list: "array"}


def json_type(annotation: Any) -> dict[str, Any]:
    """The JSON schema of one Python annotation (str, int, list[str], Literal, Enum, X | None)."""
    if annotation is inspect.Parameter.empty or annotation is typing.Any:
        return {}
    origin = typing.get_origin(annotation)
    args = typing.get_args(annotation)
    if origin is typing.Annotated:
        inner = json_type(args[0])
        extra = next((a for a in args[1:] if isinstance(a, str)), None)
        return {**inner, "description": extra} if extra else inner
    if origin in (typing.Union, types.UnionType):
        options = [a for a in args if a is not type(None)]
        if len(options) == 1:
            return json_type(options[0])
        return {"anyOf": [json_type(a) for a in options]}
    if origin is typing.Literal:
        values = list(args)
        kinds = {_SIMPLE.get(type(v)) for v in values}
        schema: dict[str, Any] = {"enum": values}
        if len(kinds) == 1 and None not in kinds:
            schema["type"] = kinds.pop()
        return schema
    if origin in (list, tuple, set, frozenset):
        schema = {"type": "array"}
        if args and args[0] is not Ellipsis:
            schema["items"] = json_type(args[0])
        return schema
    if origin is dict:
        return {"type": "object"}
    if isinstance(annotation, type) and issubclass(annotation, enum.Enum):
        return {"enum": [m.value for m in annotation]}
    if annotation in _SIMPLE:
        return {"type": _SIMPLE[annotation]}
    return {}


def _jsonable(value):
    try:
        json.dumps(value)
    except (TypeError, ValueError):
        return False
    return True


# -- running calls ----------------------------------------------------------------------------


@dataclass
class ToolCall:
    """One requested call: ``arguments`` is a dict or the model's JSON text."""

    name: str
    arguments: dict[str, Any] | str = field(default_factory=dict)
    id: str | None = None


@dataclass
class ToolResult:
    """The outcome of one call: the tool's ``value``, or an ``error`` in words (a refusal,
    a failure or a timeout); ``elapsed`` is the seconds it took."""

    call: ToolCall
    value: object = None
    error: str | None = None
    elapsed: float = 0.0

    @property
    def ok(self) -> bool:
        """True when the call returned a value."""
        return self.error is None

    def content(self) -> str:
        """The result as the text a model reads in a ``role: tool`` message."""
        if self.error is not None:
            return json.dumps({"error": self.error})
        if isinstance(self.value, str):
            return self.value
        return json.dumps(self.value, default=str)


class Toolbox:
    """A named set of tools: look-up, OpenAI ``tools=`` specs, concurrent execution."""

    def __init__(self, tools: Iterable[Tool | Callable[..., Any]] = ()) -> None:
        self.tools: dict[str, Tool] = {}
        for t in tools:
            self.add(t)

    def add(self, t: Tool | Callable[..., Any]) -> Tool:
        """Add a Tool (a plain function is made one) and return it.

        :raises ValueError: a tool of that name is already in the box.
        """
        if not isinstance(t, Tool):
            t = Tool(t)
        if t.name in self.tools:
            raise ValueError(f"two tools are named {t.name!r}")
        self.tools[t.name] = t
        return t

    def __contains__(self, name: object) -> bool:
        return name in self.tools

    def __getitem__(self, name: str) -> Tool:
        return self.tools[name]

    def __iter__(self) -> Iterator[Tool]:
        return iter(self.tools.values())

    def __len__(self) -> int:
        return len(self.tools)

    def specs(self) -> list[dict[str, Any]]:
        """The OpenAI-compatible ``tools=[...]`` list of every tool."""
        return [t.spec() for t in self.tools.values()]

    def run(self, calls: Iterable["ToolCall | tuple[Any, ...]"], turn: "Turn | None" = None,
            timeout: float | None = None) -> list["ToolResult"]:
        """``run_tools`` with this box's tools."""
        return run_tools(calls, self, turn=turn, timeout=timeout)


def run_tools(calls: Iterable[ToolCall | tuple[Any, ...]], tools: Toolbox | Iterable[Tool],
              turn: "Turn | None" = None, timeout: float | None = None) -> list[ToolResult]:
    """Run ``calls`` (ToolCall, or (name, arguments) pairs) concurrently; results in order.

    ``tools`` is a Toolbox or an iterable of Tools. Each call gets its tool's timeout, capped
    by ``timeout`` when given; a call still running then is cancelled (see app.runtime) and
    reported as timed out.
    """
    box = tools if isinstance(tools, Toolbox) else Toolbox(tools)
    todo = [c if isinstance(c, ToolCall) else ToolCall(*c) for c in calls]
    started = time.monotonic()
    tasks: list[tuple[ToolCall, Tool | None, Any]] = []
    for call in todo:
        t = box.tools.get(call.name)
        if t is None:
            tasks.append((call, None, None))
            continue
        tasks.append((call, t, spawn(_timed, t, call, turn)))
    try:
        return [_result(call, t, task, timeout, started) for call, t, task in tasks]
    finally:
        # Also when the turn itself is interrupted (deadline, hang-up) while waiting here.
        for _, _, task in tasks:
            if task is not None:
                task.cancel()


def _result(call, t, task, timeout, started):
    if t is None:
        return ToolResult(call, error=f"unknown tool {call.name!r}")
    limit = t.timeout if timeout is None else min(t.timeout, timeout)
    remaining = max(0.0, started + limit - time.monotonic())
    if not task.join(remaining):
        log.warning("tool %s timed out after %.1fs", t.name, limit)
        return ToolResult(call, error=f"{t.name} timed out after {limit:g}s",
                          elapsed=time.monotonic() - started)
    if task.error is not None:
        return _failed(call, t, task.error)
    value, elapsed = task.value
    return ToolResult(call, value=value, elapsed=elapsed)


def _timed(t, call, turn):
    started = time.monotonic()
    value = t.invoke(call.arguments, turn)
    elapsed = time.monotonic() - started
    log.info("tool %s ran in %.0f ms", t.name, elapsed * 1000)
    return value, elapsed


def _failed(call, t, exc):
    if isinstance(exc, ToolError):
        log.info("tool %s refused: %s", t.name, exc)
        return ToolResult(call, error=str(exc))
    log.error("tool %s failed", t.name, exc_info=exc)
    return ToolResult(call, error=f"{t.name} failed: {type(exc).__name__}")
