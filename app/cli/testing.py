"""`agentphone call` and `agentphone test`: talk to an agent, or play scenario files, through
the real webhook path (a server started in this process, or a running one with --url);
`agentphone call NUMBER` places a real outbound call through the API instead."""

import sys
from pathlib import Path

import click

from app.cli.base import uses

url_option = click.option(
    "--url", default=None,
    help="A running server's webhook URL (default: start one in this process).")
secret_option = click.option(
    "--secret", default=None,
    help="Signing secret for --url (default: AGENTPHONE_WEBHOOK_SECRET).")
factory_option = click.option(
    "--factory", default=None,
    help="module:callable making the agent to serve (default: the AGENT setting, else the "
         "built-in one). Ignored with --url.")


def _secret(url, secret):
    if url is None:
        return None
    return secret or uses().webhook_secret()


@click.command("test")
@click.argument("paths", nargs=-1, type=click.Path(exists=True, path_type=Path))
@url_option
@secret_option
@factory_option
@click.option("--junit", "junit_path", type=click.Path(dir_okay=False, path_type=Path),
              default=None, help="Also write a JUnit XML report here (for CI).")
@click.option("--repeat", default=1, show_default=True, type=click.IntRange(1, 1000),
              help="Run each scenario this many times: flakiness and latency percentiles.")
@click.option("--parallel", default=4, show_default=True, type=click.IntRange(1, 64),
              help="Scenarios run at the same time.")
def test(paths, url, secret, factory, junit_path, repeat, parallel):
    """Play scenario files (YAML) and report every expectation that failed; exit 1 then.

    PATHS are files or directories (searched for *.yaml); default: ./scenarios.
    """
    from app.testing import report, runner, scenario

    try:
        scenarios = scenario.discover(list(paths) or [Path("scenarios")])
    except scenario.ScenarioError as exc:
        raise click.UsageError(str(exc)) from exc
    runs = runner.run_all(scenarios, url=url, secret=_secret(url, secret), agent=factory,
                          parallel=parallel, repeat=repeat)
    click.echo(report.text(runs, color=sys.stdout.isatty()), nl=False)
    if junit_path is not None:
        junit_path.write_text(report.junit(runs), encoding="utf-8")
    if not all(run.passed for run in runs):
        sys.exit(1)


HELP = ("Type what the caller says. /sms texts instead, /voice talks again, /retry repeats "
        "the last delivery, /end hangs up (agent.call_ended), /quit leaves.")


@click.command("call")
@click.argument("number", required=False)
@url_option
@secret_option
@factory_option
@click.option("--agent", "--agent-id", "agent_id", default="agt_demo", show_default=True,
              help="The AgentPhone agent id: it picks the agent behind a server with AGENTS, "
                   "and places the call with NUMBER.")
@click.option("--caller", default="+15559876543", show_default=True,
              help="The caller's number (an interactive call).")
@click.option("--sms", "start_texting", is_flag=True, help="Start by texting instead.")
@click.option("--greeting", default=None, help="With NUMBER: what the agent says on answer.")
@click.option("--from-number-id", default=None, help="With NUMBER: the agent's number to use.")
def call(number, url, secret, factory, agent_id, caller, start_texting, greeting,
         from_number_id):
    """An interactive call in the terminal: every reply line with its time in ms.

    With NUMBER (E.164), place a real outbound call from agent --agent instead, for
    reminders and call-backs; its turns then come to this server's webhook.
    """
    if number is not None:
        _place_call(number, agent_id, greeting, from_number_id)
        return
    from app.testing.call import Call
    from app.testing.local import LocalServer

    server = None
    if url is None:
        server = LocalServer(agent=factory)
        conversation = server.call(caller=caller, agent_id=agent_id, on_line=_show_line)
        where = f"local server ({type(server.agent_for(agent_id)).__name__})"
    else:
        conversation = Call(url, _secret(url, secret), caller=caller, agent_id=agent_id,
                            on_line=_show_line)
        where = url
    if start_texting:
        conversation.channel = "sms"
    click.echo(f"Calling {where} as {caller}, call id {conversation.call_id}.")
    click.echo(HELP)
    try:
        _converse(conversation)
    finally:
        conversation.close()
        if server is not None:
            server.close()


def _place_call(number, agent_id, greeting, from_number_id):
    from app.cli.api import api_client

    with api_client() as client:
        placed = client.create_call(agent_id, number, initial_greeting=greeting,
                                    from_number_id=from_number_id)
    click.echo(f"calling {placed.to_number or number} from {placed.from_number or agent_id}: "
               f"{placed.id} ({placed.status})")


def _converse(conversation):
    while True:
        try:
            said = input("sms> " if conversation.channel != "voice" else "you> ")
        except (EOFError, KeyboardInterrupt):
            click.echo()
            return
        said = said.strip()
        if not said:
            continue
        if said == "/quit":
            return
        if said == "/end":
            click.echo(f"[call ended: HTTP {conversation.end()}]")
            return
        if said in ("/sms", "/voice"):
            conversation.channel = said[1:]
            click.echo(f"[now {'texting' if said == '/sms' else 'talking'}]")
            continue
        try:
            answer = conversation.retry() if said == "/retry" else conversation.say(said)
        except RuntimeError as exc:
            click.echo(f"[{exc}]")
            continue
        for use in answer.tool_calls:
            args = ", ".join(f"{k}={v!r}" for k, v in use.arguments.items())
            click.echo(f"          [tool {use.name}({args})]")
        if answer.error:
            click.echo(f"[{answer.error}]")
        elif answer.status != 200:
            click.echo(f"[HTTP {answer.status}]")
        if answer.action == "hangup":
            click.echo("[the agent hung up]")
            return


def _show_line(line):
    events = []
    if line.data.get("action") == "transfer":
        events.append("[transfer to a person]")
    if line.data.get("hangup"):
        events.append("[hang up]")
    if line.data.get("digits"):
        events.append(f"[digits {line.data['digits']}]")
    mark = "~" if line.interim else " "
    click.echo(f"{line.ms:7.0f} ms {mark} {line.text}" + "".join(" " + e for e in events))
