"""Scenario results for people (a text report) and for CI (JUnit XML)."""

from __future__ import annotations

import math
import xml.etree.ElementTree as ET
from collections import defaultdict

from app.testing.runner import Run


def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` from 0 to 100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


def text(runs: list[Run], color: bool = False) -> str:
    """The report: each scenario's verdict; for a failure, what fell short and the
    conversation up to that point; with repeats, flakiness and per-turn latency."""
    out: list[str] = []
    for runs_of_one in _grouped(runs):
        first = runs_of_one[0]
        passed = sum(r.passed for r in runs_of_one)
        verdict = "PASS" if passed == len(runs_of_one) else "FAIL"
        if color:
            verdict = f"\x1b[{32 if verdict == 'PASS' else 31}m{verdict}\x1b[0m"
        seconds = sum(r.seconds for r in runs_of_one) / len(runs_of_one)
        tally = f"  passed {passed}/{len(runs_of_one)}" if len(runs_of_one) > 1 else ""
        flaky = "  (flaky)" if 0 < passed < len(runs_of_one) else ""
        out.append(f"{verdict}  {first.scenario.name}  ({first.scenario.path})  "
                   f"{seconds:.1f} s{tally}{flaky}")
        failed = next((r for r in runs_of_one if not r.passed), None)
        if failed is not None:
            out += _explain(failed)
        if len(runs_of_one) > 1:
            out += _latency(runs_of_one)
    total = len(_grouped(runs))
    bad = sum(1 for g in _grouped(runs) if not all(r.passed for r in g))
    out.append("")
    out.append(f"{total} scenario{'s' * (total != 1)}: {total - bad} passed, {bad} failed")
    return "\n".join(out) + "\n"


def junit(runs: list[Run]) -> str:
    """JUnit XML: a test suite per scenario file, a test case per scenario run."""
    suites = ET.Element("testsuites")
    by_file: dict[str, list[Run]] = defaultdict(list)
    for run in runs:
        by_file[str(run.scenario.path)].append(run)
    for path, file_runs in by_file.items():
        failed = [r for r in file_runs if not r.passed]
        suite = ET.SubElement(suites, "testsuite", name=path, tests=str(len(file_runs)),
                              failures=str(len(failed)), errors="0",
                              time=f"{sum(r.seconds for r in file_runs):.3f}")
        for run in file_runs:
            case = ET.SubElement(suite, "testcase", classname=path, name=run.scenario.name,
                                 time=f"{run.seconds:.3f}")
            if not run.passed:
                problems = _problems(run)
                failure = ET.SubElement(case, "failure", message=problems[0] if problems else "")
                failure.text = "\n".join(_explain(run))
    ET.indent(suites)
    return ET.tostring(suites, encoding="unicode", xml_declaration=True) + "\n"


def _grouped(runs: list[Run]) -> list[list[Run]]:
    groups: dict[int, list[Run]] = {}
    for run in runs:
        groups.setdefault(id(run.scenario), []).append(run)
    return list(groups.values())


def _problems(run: Run) -> list[str]:
    found = [run.error] if run.error else []
    for index, step in enumerate(run.steps, 1):
        found += [f"turn {index}: {problem}" for problem in step.failures]
    return found + run.check_failures


def _explain(run: Run) -> list[str]:
    out: list[str] = []
    if run.error:
        out += ["      " + line for line in run.error.rstrip().splitlines()]
    for index, step in enumerate(run.steps, 1):
        if step.failures:
            out.append(f"      turn {index} ({step.step.describe()}):")
            out += [f"        x {problem}" for problem in step.failures]
            out.append("      conversation so far:")
            out += _conversation(run, index)
            break
    out += [f"      x {problem}" for problem in run.check_failures]
    return out


def _conversation(run: Run, upto: int) -> list[str]:
    lines: list[str] = []
    for step in run.steps[:upto]:
        if step.answer is None:
            lines.append("        caller  (hangs up: call_ended)")
            continue
        retry = "  (retried delivery)" if step.step.kind == "retry" else ""
        lines.append(f"        caller  {step.answer.said}{retry}")
        for line in step.answer.lines:
            mark = " (interim)" if line.interim else ""
            extra = "".join(f" [{key}: {line.data[key]}]" for key in ("action", "hangup", "digits")
                            if key in line.data)
            lines.append(f"        agent  {line.ms:6.0f} ms  {line.text}{mark}{extra}")
        for use in step.answer.tool_calls:
            lines.append(f"        tool   {use.name}({_args(use.arguments)})"
                         + (f" -> error {use.error}" if use.error else ""))
    return lines


def _latency(runs: list[Run]) -> list[str]:
    firsts: dict[int, list[float]] = defaultdict(list)
    finals: dict[int, list[float]] = defaultdict(list)
    for run in runs:
        for index, step in enumerate(run.steps, 1):
            if step.answer is not None and step.answer.first_line_ms is not None:
                firsts[index].append(step.answer.first_line_ms)
            if step.answer is not None and step.answer.final_ms is not None:
                finals[index].append(step.answer.final_ms)
    out = []
    for index in sorted(set(firsts) | set(finals)):
        parts = []
        for label, values in (("first line", firsts[index]), ("final", finals[index])):
            if values:
                parts.append(f"{label} p50 {percentile(values, 50):.0f} ms "
                             f"p99 {percentile(values, 99):.0f} ms")
        out.append(f"      turn {index}: " + ", ".join(parts))
    return out


def _args(arguments: dict) -> str:
    return ", ".join(f"{k}={v!r}" for k, v in arguments.items())
