"""Runs scenarios through the real webhook path, in parallel, and collects what happened."""

from __future__ import annotations

import logging
import time
import traceback
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from app.testing.call import Answer, Call
from app.testing.local import LocalServer
from app.testing.scenario import Scenario, ScenarioError, Step, failures

log = logging.getLogger(__name__)


@dataclass
class StepResult:
    """One step as it went: the answer (``None`` for ``end``) and what fell short."""

    step: Step
    answer: Answer | None
    failures: list[str]


@dataclass
class Run:
    """One run of one scenario."""

    scenario: Scenario
    steps: list[StepResult] = field(default_factory=list)
    check_failures: list[str] = field(default_factory=list)
    error: str | None = None
    seconds: float = 0.0

    @property
    def passed(self) -> bool:
        return self.error is None and not self.check_failures and not any(
            s.failures for s in self.steps)


@dataclass
class Context:
    """What an ``after:`` check receives: the run's server (local runs), store and calls."""

    server: LocalServer | None
    call: Call
    run: Run

    @property
    def app(self) -> Any:
        return self.server.app if self.server else None

    @property
    def store(self) -> Any:
        return self.server.store if self.server else None


def run_scenario(scenario: Scenario, url: str | None = None, secret: str | None = None,
                 agent: Any = None, config: dict | None = None) -> Run:
    """Run ``scenario`` against ``url`` (signed with ``secret``), or else against a local
    server of its own (``agent`` and ``config`` as for ``LocalServer``)."""
    run = Run(scenario)
    started = time.monotonic()
    server = None
    try:
        if url is None:
            offset = scenario.clock - time.time() if scenario.clock is not None else 0.0
            server = LocalServer(agent=scenario.agent or agent,
                                 config={**(config or {}), **scenario.config},
                                 clock_offset=offset)
            call = server.call(**_call_options(scenario))
        else:
            if scenario.uses_local_server:
                raise ScenarioError("tool, no_tool, text-channel and after: expectations need "
                                    "the local server (run without --url)")
            call = Call(url, secret or "", **_call_options(scenario))
        with call:
            _play(scenario, call, run)
            context = Context(server, call, run)
            for check in scenario.after:
                run.check_failures += _run_check(check, context)
    except ScenarioError as exc:
        run.error = str(exc)
    except Exception:
        run.error = traceback.format_exc(limit=5)
    finally:
        if server is not None:
            server.close()
        run.seconds = time.monotonic() - started
    return run


def run_all(scenarios: list[Scenario], *, url: str | None = None, secret: str | None = None,
            agent: Any = None, config: dict | None = None, parallel: int = 4,
            repeat: int = 1) -> list[Run]:
    """Every scenario ``repeat`` times, ``parallel`` at once; runs in scenario order."""
    jobs = [s for s in scenarios for _ in range(repeat)]
    with ThreadPoolExecutor(max_workers=max(1, parallel)) as pool:
        return list(pool.map(lambda s: run_scenario(s, url, secret, agent, config), jobs))


def _call_options(scenario: Scenario) -> dict:
    options: dict[str, Any] = {"channel": scenario.channel, "caller": scenario.caller,
                               "callee": scenario.callee, "agent_id": scenario.agent_id}
    return options


def _play(scenario: Scenario, call: Call, run: Run) -> None:
    for step in scenario.turns:
        if step.kind == "end":
            status = call.end()
            problems = [] if status == 200 else [f"call_ended got HTTP {status}"]
            run.steps.append(StepResult(step, None, problems))
            continue
        answer = call.retry() if step.kind == "retry" else call.say(step.text, step.channel)
        run.steps.append(StepResult(step, answer, failures(step.expect, answer)))


def _run_check(check: Any, context: Context) -> list[str]:
    try:
        outcome = check.resolve()(context, **check.args)
    except AssertionError as exc:
        return [f"check {check.target} failed: {exc or 'assertion failed'}"]
    except ScenarioError:
        raise
    except Exception as exc:
        return [f"check {check.target} raised {type(exc).__name__}: {exc}"]
    if outcome is False:
        return [f"check {check.target} returned False"]
    return []
