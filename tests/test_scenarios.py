"""Scenario files through the real webhook path: the demo's own, a failing one, repeats,
JUnit XML, a running server (--url), and the LLM agent against the fake model server."""

import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from click.testing import CliRunner

from app.cli import testing as cli_testing
from app.testing import ScenarioError, load, report, runner
from app.testing.scenario import similarity
from tests.fake_llm import fake_llm_fixture, text, tool_call  # noqa: F401

DEMO = Path(__file__).resolve().parents[1] / "app" / "demo" / "scenarios"
DATA = Path(__file__).resolve().parent / "data" / "scenarios"


@pytest.fixture(autouse=True)
def fast_demo(monkeypatch):
    monkeypatch.setenv("DEMO_TOOL_LATENCY", "0")


def invoke(*args):
    return CliRunner().invoke(cli_testing.test, [str(a) for a in args], catch_exceptions=False)


def test_demo_scenarios_pass_and_write_junit(tmp_path):
    xml = tmp_path / "report.xml"
    result = invoke(DEMO, "--junit", xml)
    assert result.exit_code == 0, result.output
    assert "0 failed" in result.output
    root = ET.parse(xml).getroot()
    cases = root.findall(".//testcase")
    assert len(cases) >= 14
    assert not root.findall(".//failure")
    assert {c.get("name") for c in cases} >= {"A retried turn books once", "Goodbye hangs up"}


def test_failing_scenario_reports_each_expectation_with_the_conversation(tmp_path):
    xml = tmp_path / "report.xml"
    result = invoke(DATA / "failing.yaml", "--junit", xml)
    assert result.exit_code == 1
    out = result.output
    assert "FAIL  Order status, wrongly expected" in out
    assert "x reply does not contain 'delivered today'" in out
    assert "x tool lookup_order was called with {'order_id': '4521'}" in out
    assert "conversation so far:" in out
    assert "caller  Where is my order 4521?" in out
    assert "I found order 4521" in out
    assert "tool   lookup_order(order_id='4521')" in out
    assert "1 scenario: 0 passed, 1 failed" in out
    failure = ET.parse(xml).getroot().find(".//failure")
    assert "delivered today" in failure.get("message")


def test_repeat_reports_flakiness_and_latency_percentiles(tmp_path):
    scenario = tmp_path / "flaky.yaml"
    scenario.write_text(
        "name: Says yes\nagent: tests.scenario_agents:flaky\n"
        "turns:\n  - say: well?\n    expect: {contains: 'yes'}\n")
    result = invoke(scenario, "--repeat", "4", "--parallel", "1")
    assert result.exit_code == 1
    assert "passed 2/4  (flaky)" in result.output
    assert "turn 1: first line p50" in result.output and "final p50" in result.output


def test_actions_digits_and_tools_of_a_custom_agent(tmp_path):
    scenario = tmp_path / "weather.yaml"
    scenario.write_text("""
name: Weather
agent: tests.scenario_agents:weather
turns:
  - say: weather tomorrow?
    expect:
      contains: [Checking the forecast, sunny in Paris]
      tool: {name: forecast, args: {city: paris}}
      action: none
  - say: press digits
    expect: {action: digits, digits: "1", no_tool: true}
""")
    result = invoke(scenario)
    assert result.exit_code == 0, result.output


def test_against_a_running_server(gunicorn, secret, tmp_path):
    server = gunicorn(workers=1, DEMO_TOOL_LATENCY=0)
    voice_only = tmp_path / "hours.yaml"
    voice_only.write_text("name: Hours\nturns:\n  - say: when are you open?\n"
                          "    expect: {contains: Monday to Friday, first_line_ms: 2000}\n")
    result = invoke(voice_only, "--url", server.url + "/webhook", "--secret", secret)
    assert result.exit_code == 0, result.output
    result = invoke(DATA / "failing.yaml", "--url", server.url + "/webhook", "--secret", secret)
    assert result.exit_code == 1
    assert "need the local server" in result.output


def test_llm_agent_scenario_against_the_fake_model_server(fake_llm, tmp_path):
    fake_llm.script(tool_call(0, "lookup_order", {"order_id": "4521"}))
    fake_llm.script(text("Your order 4521 shipped yesterday by FedEx."))
    scenario = tmp_path / "llm.yaml"
    scenario.write_text(f"""
name: LLM order lookup
config: {{LLM_BASE_URL: "{fake_llm.url}", LLM_API_KEY: sk-fake}}
turns:
  - say: Where is order 4521?
    expect:
      tool: {{name: lookup_order, args: {{order_id: "4521"}}}}
      contains: shipped yesterday
""")
    result = invoke(scenario)
    assert result.exit_code == 0, result.output
    assert fake_llm.requests[1]["messages"][-1]["role"] == "tool"


@pytest.mark.parametrize("content, message", [
    ("turns: []\nname: x\n", "turns must be a non-empty list"),
    ("name: x\nturns:\n  - say: hi\n    expect: {contain: hi}\n", "unknown key(s) contain"),
    ("name: x\nturns:\n  - say: hi\n    expect: {action: fly}\n", "action must be one of"),
    ("name: x\nturns:\n  - {say: hi, end: true}\n", "exactly one of say, retry, end"),
    ("name: x\nclock: yesterday\nturns: [hi]\n", "clock must be a UTC time"),
    ("name: x\nturns: [hi]\nbogus: 1\n", "unknown key(s) bogus"),
])
def test_invalid_scenario_files_name_the_place(tmp_path, content, message):
    path = tmp_path / "bad.yaml"
    path.write_text(content)
    with pytest.raises(ScenarioError, match=r"bad\.yaml") as error:
        load(path)
    assert message in str(error.value)
    result = invoke(path)
    assert result.exit_code == 2 and message in result.output


def test_clock_and_caller_variables_reach_the_agent(tmp_path):
    scenario = tmp_path / "vars.yaml"
    scenario.write_text("""
name: Known caller by text on a given day
caller: "+15559876543"
channel: sms
clock: 2025-01-15T14:00:00Z
turns:
  - say: who am I on file as?
    expect: {contains: Jane Doe}
""")
    [loaded] = load(scenario)
    assert loaded.clock == 1736949600
    [run] = runner.run_all([loaded], parallel=1)
    assert run.passed, report.text([run])


def test_similarity_is_word_based():
    assert similarity("We open at 9 AM", "we open at 9 am!") == 1.0
    assert similarity("We open at 9 AM", "Closed on Sundays") < 0.3


def test_the_readme_scenario_runs(tmp_path):
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text()
    section = readme.split("## Testing an agent the way a caller meets it", 1)[1]
    example = section.split("```yaml\n", 1)[1].split("```", 1)[0]
    (tmp_path / "example.yaml").write_text(example)
    (tmp_path / "checks.py").write_text((DEMO / "checks.py").read_text())
    result = invoke(tmp_path / "example.yaml")
    assert result.exit_code == 0, result.output
