"""Scenario files: a named conversation of caller turns, each with what the answer must show.

    name: Book an appointment
    caller: "+15559876543"          # variables: caller, callee, agent_id, channel, clock
    channel: voice                  # or sms / imessage
    turns:
      - say: I'd like to book an appointment
        expect:
          contains: which day
          first_line_ms: 500
      - say: Tuesday at 10 under Jane Doe
        expect:
          matches: "booked for Tuesday at 10 AM"
          tool: {name: book_appointment, args: {day: tuesday, time: "10:00"}}
      - say: bye
        expect: {action: hangup}
    after:
      - check: checks.py:booked     # a function, called with the run's context
        args: {day: tuesday, time: "10:00"}

A turn is ``say: TEXT`` (on the scenario's channel, or its own ``channel:``), ``retry: true``
(the previous delivery again, same ``X-Webhook-ID``) or ``end: true`` (``agent.call_ended``).
"""

from __future__ import annotations

import calendar
import difflib
import importlib
import importlib.util
import re
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.testing.call import TEXT_CHANNELS, VOICE, Answer

ACTIONS = ("transfer", "hangup", "digits", "none")
CHANNELS = (VOICE, *TEXT_CHANNELS)
EXPECTATIONS = ("contains", "not_contains", "matches", "similar", "action", "digits", "tool",
                "no_tool", "first_line_ms", "final_ms", "status")
TURN_KEYS = ("say", "retry", "end", "channel", "expect", "name")
SCENARIO_KEYS = ("name", "description", "caller", "callee", "agent_id", "channel", "clock",
                 "turns", "after", "agent", "config")


class ScenarioError(ValueError):
    """A scenario file that cannot be run; the message names the file and the place."""


@dataclass
class Step:
    """One step of a scenario."""

    kind: str  # say, retry or end
    text: str = ""
    channel: str | None = None
    expect: dict = field(default_factory=dict)
    name: str | None = None

    def describe(self) -> str:
        if self.kind == "say":
            return f"say {self.text!r}"
        return self.kind


@dataclass
class Check:
    """An ``after:`` hook: ``function(context, **args)`` must not raise or return False."""

    target: str
    args: dict
    base: Path

    def resolve(self) -> Callable[..., Any]:
        where, _, name = self.target.rpartition(":")
        if not where or not name:
            raise ScenarioError(f"check {self.target!r}: use module:function or file.py:function")
        if where.endswith(".py"):
            path = (self.base / where).resolve()
            spec = importlib.util.spec_from_file_location(f"_scenario_check_{path.stem}", path)
            if spec is None or spec.loader is None or not path.is_file():
                raise ScenarioError(f"check {self.target!r}: no file {path}")
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
        else:
            module = importlib.import_module(where)
        try:
            return getattr(module, name)
        except AttributeError:
            raise ScenarioError(f"check {self.target!r}: {where} has no {name}") from None


@dataclass
class Scenario:
    """A parsed scenario file (see the module docstring)."""

    name: str
    path: Path
    turns: list[Step]
    caller: str = "+15559876543"
    callee: str = "+15551234567"
    agent_id: str = "agt_demo"
    channel: str = VOICE
    clock: float | None = None
    after: list[Check] = field(default_factory=list)
    agent: str | None = None
    config: dict = field(default_factory=dict)
    description: str = ""

    @property
    def uses_local_server(self) -> bool:
        """Whether some expectation can only be checked with the server in this process."""
        return bool(self.after) or any(
            "tool" in t.expect or "no_tool" in t.expect or
            (t.kind == "say" and (t.channel or self.channel) != VOICE) for t in self.turns)


def load(path: str | Path) -> list[Scenario]:
    """The scenarios of one YAML file (a mapping, or a list of mappings)."""
    path = Path(path)
    try:
        documents = list(yaml.safe_load_all(path.read_text(encoding="utf-8")))
    except (OSError, yaml.YAMLError) as exc:
        raise ScenarioError(f"{path}: {exc}") from None
    found: list[Scenario] = []
    for document in documents:
        for index, raw in enumerate(document if isinstance(document, list) else [document]):
            if raw is None:
                continue
            found.append(_scenario(raw, path, f"{path}[{index}]"))
    if not found:
        raise ScenarioError(f"{path}: no scenario in the file")
    return found


def discover(paths: list[str | Path]) -> list[Scenario]:
    """Scenarios from files and directories (``*.yaml`` and ``*.yml``, recursively)."""
    files: list[Path] = []
    for item in paths:
        item = Path(item)
        if item.is_dir():
            files += sorted(p for p in item.rglob("*") if p.suffix in (".yaml", ".yml"))
        elif item.exists():
            files.append(item)
        else:
            raise ScenarioError(f"{item}: no such file or directory")
    return [scenario for f in files for scenario in load(f)]


def _scenario(raw: Any, path: Path, where: str) -> Scenario:
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a scenario is a mapping with name and turns")
    _only(raw, SCENARIO_KEYS, where)
    name = raw.get("name")
    if not isinstance(name, str) or not name.strip():
        raise ScenarioError(f"{where}: name is required")
    where = f"{path}: {name}"
    turns = raw.get("turns")
    if not isinstance(turns, list) or not turns:
        raise ScenarioError(f"{where}: turns must be a non-empty list")
    channel = str(raw.get("channel", VOICE))
    if channel not in CHANNELS:
        raise ScenarioError(f"{where}: channel must be one of {', '.join(CHANNELS)}")
    after = raw.get("after") or []
    if not isinstance(after, list):
        raise ScenarioError(f"{where}: after must be a list of checks")
    return Scenario(
        name=name.strip(), path=path,
        turns=[_step(t, f"{where}, turn {i + 1}") for i, t in enumerate(turns)],
        caller=str(raw.get("caller", Scenario.caller)),
        callee=str(raw.get("callee", Scenario.callee)),
        agent_id=str(raw.get("agent_id", Scenario.agent_id)),
        channel=channel, clock=_clock(raw.get("clock"), where),
        after=[_check(c, path.parent, f"{where}, after {i + 1}") for i, c in enumerate(after)],
        agent=raw.get("agent"), config=dict(raw.get("config") or {}),
        description=str(raw.get("description") or ""),
    )


def _step(raw: Any, where: str) -> Step:
    if isinstance(raw, str):
        raw = {"say": raw}
    if not isinstance(raw, dict):
        raise ScenarioError(f"{where}: a turn is `say: ...`, `retry: true` or `end: true`")
    _only(raw, TURN_KEYS, where)
    kinds = [k for k in ("say", "retry", "end") if raw.get(k) not in (None, False)]
    if len(kinds) != 1:
        raise ScenarioError(f"{where}: give exactly one of say, retry, end")
    expect = raw.get("expect") or {}
    if not isinstance(expect, dict):
        raise ScenarioError(f"{where}: expect must be a mapping")
    _only(expect, EXPECTATIONS, f"{where}, expect")
    if "action" in expect and expect["action"] not in ACTIONS:
        raise ScenarioError(f"{where}: action must be one of {', '.join(ACTIONS)}")
    for key in ("matches",):
        for pattern in _many(expect.get(key)):
            try:
                re.compile(pattern)
            except re.error as exc:
                raise ScenarioError(f"{where}: {key} {pattern!r}: {exc}") from None
    channel = raw.get("channel")
    if channel is not None and channel not in CHANNELS:
        raise ScenarioError(f"{where}: channel must be one of {', '.join(CHANNELS)}")
    return Step(kind=kinds[0], text=str(raw.get("say") or ""), channel=channel, expect=expect,
                name=raw.get("name"))


def _check(raw: Any, base: Path, where: str) -> Check:
    if not isinstance(raw, dict) or not isinstance(raw.get("check"), str):
        raise ScenarioError(f"{where}: a check is {{check: module:function, args: {{...}}}}")
    return Check(raw["check"], dict(raw.get("args") or {}), base)


def _clock(value: Any, where: str) -> float | None:
    if value is None:
        return None
    text = value.isoformat() if hasattr(value, "isoformat") else str(value)
    text = text.replace("+00:00", "Z")
    for pattern in ("%Y-%m-%dT%H:%M:%SZ", "%Y-%m-%d %H:%M:%SZ", "%Y-%m-%d"):
        try:
            return float(calendar.timegm(time.strptime(text, pattern)))
        except ValueError:
            continue
    raise ScenarioError(f"{where}: clock must be a UTC time like 2025-01-15T14:00:00Z")


def _only(mapping: dict, allowed: tuple[str, ...], where: str) -> None:
    unknown = sorted(set(mapping) - set(allowed))
    if unknown:
        raise ScenarioError(f"{where}: unknown key(s) {', '.join(unknown)} "
                            f"(allowed: {', '.join(allowed)})")


def _many(value: Any) -> list:
    if value is None:
        return []
    return list(value) if isinstance(value, list) else [value]


# -- expectations ---------------------------------------------------------------------------


def failures(expect: dict, answer: Answer) -> list[str]:
    """Each way ``answer`` falls short of ``expect``, in words (empty when it passes)."""
    found: list[str] = []
    if answer.error:
        found.append(answer.error)
    status = expect.get("status", 200)
    if answer.status != status:
        found.append(f"HTTP status {answer.status}, expected {status}")
    heard = answer.spoken
    for needle in _many(expect.get("contains")):
        if str(needle).lower() not in heard.lower():
            found.append(f"reply does not contain {needle!r}")
    for needle in _many(expect.get("not_contains")):
        if str(needle).lower() in heard.lower():
            found.append(f"reply contains {needle!r}")
    for pattern in _many(expect.get("matches")):
        if not re.search(str(pattern), heard, re.IGNORECASE):
            found.append(f"reply does not match /{pattern}/")
    if "similar" in expect:
        found += _similar(expect["similar"], answer.text or heard)
    if "action" in expect:
        wanted = expect["action"]
        got = answer.action or "none"
        if got != wanted:
            found.append(f"action {got}, expected {wanted}")
    if "digits" in expect and str(expect["digits"]) != (answer.digits or ""):
        found.append(f"digits {answer.digits!r}, expected {str(expect['digits'])!r}")
    for wanted in _many(expect.get("tool")):
        found += _tool(wanted, answer)
    if expect.get("no_tool") and answer.tool_calls:
        found.append("tools were called: " + ", ".join(t.name for t in answer.tool_calls))
    for key, value in (("first_line_ms", answer.first_line_ms), ("final_ms", answer.final_ms)):
        if key in expect:
            if value is None:
                found.append(f"{key}: no such line")
            elif value > float(expect[key]):
                found.append(f"{key} {value:.0f} ms, expected at most {expect[key]} ms")
    if answer.channel == VOICE and answer.status == 200 and answer.final is None:
        found.append("the voice reply has no final line")
    return found


def similarity(a: str, b: str) -> float:
    """How alike two replies are, 0 to 1, from their words (no model involved)."""
    words_a, words_b = _words(a), _words(b)
    if not words_a and not words_b:
        return 1.0
    return difflib.SequenceMatcher(None, words_a, words_b, autojunk=False).ratio()


def _similar(spec: Any, text: str) -> list[str]:
    example, at_least = (spec, 0.6) if isinstance(spec, str) else (
        str(spec.get("to", "")), float(spec.get("at_least", 0.6)))
    score = similarity(example, text)
    if score < at_least:
        return [f"reply is {score:.2f} similar to {example!r}, expected at least {at_least:g}"]
    return []


def _tool(wanted: Any, answer: Answer) -> list[str]:
    name, args = (wanted, {}) if isinstance(wanted, str) else (
        str(wanted.get("name")), dict(wanted.get("args") or {}))
    calls = [t for t in answer.tool_calls if t.name == name]
    if not calls:
        made = ", ".join(t.name for t in answer.tool_calls) or "none"
        return [f"tool {name} was not called (called: {made})"]
    if any(_includes(call.arguments, args) for call in calls):
        return []
    return [f"tool {name} was called with {calls[-1].arguments}, expected {args}"]


def _includes(actual: dict, wanted: dict) -> bool:
    return all(_loosely_equal(actual.get(k), v) for k, v in wanted.items())


def _loosely_equal(actual: Any, wanted: Any) -> bool:
    if isinstance(wanted, str) and isinstance(actual, str):
        return actual.strip().lower() == wanted.strip().lower()
    return actual == wanted


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9']+", text.lower())
