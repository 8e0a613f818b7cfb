"""`agentphone calls|transcript|deliveries|webhook test|send`: the REST API from a shell.

Tables for people by default, `--json` for scripts. API failures go to stderr with their
field details and exit with status 1.
"""

import contextlib
import json

import click

from app.agentphone import AgentPhoneError
from app.agentphone.models import StreamConnected, StreamEnded, TranscriptTurn
from app.cli.base import uses
from app.cli.output import echo, terminal_safe

json_option = click.option("--json", "as_json", is_flag=True, help="Print JSON instead of a table.")


class APICommandError(click.ClickException):
    """An AgentPhoneError shown the way click shows errors: on stderr, exit status 1."""

    def __init__(self, error):
        super().__init__(terminal_safe(str(error)))
        self.error = error


@contextlib.contextmanager
def api_client():
    """A client from the settings (only the API key is required); API errors become
    APICommandError."""
    try:
        with uses().api_client() as client:
            yield client
    except AgentPhoneError as error:
        raise APICommandError(error) from error


def format_table(headers, rows):
    """Rows (sequences of values) under headers, columns padded to fit; None prints as "-"."""
    cells = [[("-" if v is None else terminal_safe(str(v))) for v in row] for row in rows]
    widths = [max([len(h), *(len(r[i]) for r in cells)]) for i, h in enumerate(headers)]
    lines = [headers, *cells]
    return "\n".join("  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip()
                     for line in lines)


def echo_json(value):
    echo(json.dumps(value, indent=2, sort_keys=False))


@click.command("calls")
@click.option("--status", type=click.Choice(["completed", "in-progress", "failed"]),
              help="Only calls with this status.")
@click.option("--limit", type=click.IntRange(1), default=20, show_default=True,
              help="How many calls to show (newest first).")
@click.option("--local", is_flag=True,
              help="List the call records this server stored from agent.call_ended events "
                   "instead of asking the API.")
@json_option
def calls(status, limit, local, as_json):
    """List calls from the AgentPhone API (or, with --local, from this server's database)."""
    if local:
        records = uses().store().call_records(limit=limit, status=status)
        if as_json:
            echo_json(records)
            return
        echo(format_table(
            ["ID", "STATUS", "FROM", "TO", "ENDED", "SECONDS", "SENTIMENT", "SUCCESS", "SUMMARY"],
            [[r["call_id"], r["status"], r["from_number"], r["to_number"], r["ended_at"],
              None if r["duration_seconds"] is None else f"{r['duration_seconds']:g}",
              r["sentiment"], {True: "yes", False: "no"}.get(r["successful"]),
              (r["summary"] or "")[:60] or None] for r in records],
        ))
        echo(f"{len(records)} stored call(s)")
        return
    with api_client() as client:
        found = list(client.paginate(client.list_calls, status=status, limit=min(limit, 100),
                                     max_items=limit))
    if as_json:
        echo_json([c.raw for c in found])
        return
    echo(format_table(
        ["ID", "STATUS", "DIRECTION", "FROM", "TO", "STARTED", "SECONDS"],
        [[c.id, c.status, c.direction, c.from_number, c.to_number, c.started_at,
          c.duration_seconds] for c in found],
    ))
    echo(f"{len(found)} call(s)")


def _echo_event(event):
    if isinstance(event, StreamConnected):
        echo(f"# call {event.call_id} ({event.status}, {event.direction}) "
             f"{event.from_number} -> {event.to_number}")
    elif isinstance(event, TranscriptTurn):
        echo(f"{event.role}: {event.content}")
    elif isinstance(event, StreamEnded):
        echo(f"# ended: {event.status}, {event.duration_seconds} s")


_EVENT_NAMES = {StreamConnected: "connected", TranscriptTurn: "turn", StreamEnded: "ended"}


@click.command("transcript")
@click.argument("call_id")
@click.option("--follow", "-f", is_flag=True,
              help="Stream the transcript live until the call ends.")
@json_option
def transcript(call_id, follow, as_json):
    """Print a call's transcript (or follow it live with --follow)."""
    with api_client() as client:
        if follow:
            for event in client.stream_transcript(call_id):
                if as_json:  # one JSON document per line, flushed as it comes
                    echo(json.dumps({"event": _EVENT_NAMES[type(event)],
                                     "data": event.raw}))
                else:
                    _echo_event(event)
            return
        entries = client.get_transcript(call_id)
    if as_json:
        echo_json([e.raw for e in entries])
        return
    for entry in entries:
        echo(f"user: {entry.transcript}")
        if entry.response:
            echo(f"agent: {entry.response}")


@click.command("deliveries")
@click.option("--failed", is_flag=True, help="Only deliveries that failed.")
@click.option("--hours", type=click.IntRange(1, 168), help="Look back this many hours.")
@click.option("--limit", type=click.IntRange(1), default=50, show_default=True,
              help="How many deliveries to read.")
@json_option
def deliveries(failed, hours, limit, as_json):
    """Recent webhook deliveries and their success statistics."""
    with api_client() as client:
        found = list(client.paginate(client.list_deliveries, hours=hours, limit=min(limit, 100),
                                     max_items=limit))
        stats = client.delivery_stats(hours=hours)
    if failed:
        found = [d for d in found if d.status == "failed"]
    if as_json:
        echo_json({"deliveries": [d.raw for d in found], "stats": stats.raw})
        return
    echo(format_table(
        ["ID", "EVENT", "CHANNEL", "STATUS", "HTTP", "ATTEMPTS", "NEXT RETRY", "ERROR"],
        [[d.id, d.event_type, d.channel, d.status, d.http_status, d.attempt_count,
          d.next_retry_at, (d.error_message or "")[:40] or None] for d in found],
    ))
    rate = "-" if stats.success_rate is None else f"{stats.success_rate:g}%"
    echo(f"\n{'last ' + str(hours) + ' h' if hours else 'stats'}: {stats.total} total, "
         f"{stats.success} delivered, {stats.failed} failed, {stats.pending} pending; "
         f"success rate {rate}")


@click.group("webhook")
def webhook():
    """Webhook tools."""


def mask(secret):
    """A secret as it may be shown: its prefix and last four characters."""
    if not secret:
        return "-"
    return f"{secret[:6]}…{secret[-4:]}" if len(secret) > 14 else "…"


def _keep(hook, agent_id, verb, as_json):
    """Store the webhook's new secret and say so, the secret masked."""
    _store_secret(hook, agent_id)
    if as_json:
        echo_json({**hook.raw, "secret": mask(hook.secret)})
    else:
        click.echo(_describe(hook, agent_id, verb))


def _store_secret(hook, agent_id):
    from app.store.secrets import ACCOUNT

    uses().store().add_webhook_secret(agent_id or ACCOUNT, hook.secret,
                                      uses().settings["SECRET_GRACE"], hook.id, hook.url)


def _describe(hook, agent_id, verb):
    scope = f"agent {agent_id}" if agent_id else "the account"
    grace = uses().settings["SECRET_GRACE"]
    return (f"{verb} the webhook of {scope}: {hook.url} ({hook.id}); its new secret "
            f"{mask(hook.secret)} is stored and valid now; the previous one stays valid for "
            f"{grace:g} s.")


@webhook.command("set")
@click.argument("url")
@click.option("--agent", "--agent-id", "agent_id",
              help="An agent's own webhook instead of the account's.")
@click.option("--context-limit", type=click.IntRange(0, 50),
              help="Messages of recent history each delivery carries (platform default 10).")
@click.option("--timeout", type=click.IntRange(5, 120),
              help="Seconds the platform waits for a voice reply (VOICE_TIMEOUT should match).")
@json_option
def webhook_set(url, agent_id, context_limit, timeout, as_json):
    """Create or replace the webhook at URL and store its signing secret.

    Every process of this server picks the secret up within seconds, without a restart;
    the secret is never printed. The platform sends every event type to the webhook.
    """
    with api_client() as client:
        hook = client.set_webhook(url, context_limit=context_limit, timeout=timeout,
                                  agent_id=agent_id)
    _keep(hook, agent_id, "set", as_json)


@webhook.command("rotate")
@click.option("--agent", "--agent-id", "agent_id",
              help="An agent's own webhook instead of the account's.")
@json_option
def webhook_rotate(agent_id, as_json):
    """Re-create the webhook with the same settings to get a new signing secret.

    The new secret is valid at once; the old one keeps working for SECRET_GRACE seconds,
    so that deliveries signed before the change and still being retried get through.
    """
    with api_client() as client:
        current = client.get_webhook(agent_id=agent_id)
        if current is None:
            raise click.ClickException("no webhook to rotate: create one with `webhook set URL`")
        hook = client.set_webhook(current.url, context_limit=current.context_limit,
                                  timeout=current.timeout, agent_id=agent_id)
    _keep(hook, agent_id, "rotated", as_json)


@webhook.command("show")
@json_option
def webhook_show(as_json):
    """The webhooks configured on the platform and the secrets this server accepts (masked)."""
    import time

    with api_client() as client:
        account = client.get_webhook()
        agents = list(client.paginate(client.list_agents, limit=100))
        own = [(a.id, client.get_webhook(agent_id=a.id)) for a in agents]
    hooks = [("account", account)] + [(agent, hook) for agent, hook in own if hook is not None]
    stored = uses().store().webhook_secrets()
    now = time.time()
    configured = uses().settings["WEBHOOK_SECRETS"]
    if as_json:
        echo_json({
            "webhooks": [{"scope": scope, **(hook.raw if hook else {}),
                          "secret": mask(hook.secret) if hook else None}
                         for scope, hook in hooks],
            "accepted_secrets": [{"source": "environment", "secret": mask(s)}
                                 for s in configured]
            + [{"source": "store", "scope": s.scope, "secret": mask(s.secret),
                "expires_in": None if s.expires_at is None else round(s.expires_at - now)}
               for s in stored],
        })
        return
    click.echo(format_table(
        ["SCOPE", "ID", "URL", "STATUS", "TIMEOUT", "CONTEXT", "SECRET"],
        [[scope, hook.id, hook.url, hook.status, hook.timeout, hook.context_limit,
          mask(hook.secret)] if hook else [scope, None, "(none)", None, None, None, None]
         for scope, hook in hooks],
    ))
    click.echo("\nsecrets this server accepts:")
    click.echo(format_table(
        ["SOURCE", "SCOPE", "SECRET", "VALID"],
        [["environment", "-", mask(s), "until removed"] for s in configured]
        + [["store", s.scope, mask(s.secret),
            "until rotated" if s.expires_at is None else f"{s.expires_at - now:.0f} s more"]
           for s in stored],
    ))


@webhook.command("test")
@click.option("--agent-id", help="Agent named in the sample payload.")
@json_option
def webhook_test(agent_id, as_json):
    """Ask AgentPhone to send a sample event to the configured webhook."""
    with api_client() as client:
        result = client.test_webhook(agent_id=agent_id)
    if as_json:
        echo_json(result.raw)
    elif result.success:
        echo(f"webhook test delivered: HTTP {result.http_status}")
    if not result.success:
        raise click.ClickException(terminal_safe(
            f"webhook test failed: HTTP {result.http_status}: {result.error_message or '-'}"
        ))


@click.command("send")
@click.argument("to")
@click.argument("text")
@click.option("--agent-id", help="Sending agent (its first number unless --number-id); "
                                 "default: the account's agent, when it has only one.")
@click.option("--number-id", help="Number to send from.")
@json_option
def send(to, text, agent_id, number_id, as_json):
    """Send an SMS/iMessage TEXT to TO (E.164 number, email or group id)."""
    with api_client() as client:
        if not (agent_id or number_id):
            agent_id = only_agent(client)
        sent = client.send_message(agent_id=agent_id, to_number=to, body=text,
                                   number_id=number_id)
    if as_json:
        echo_json(sent.raw)
    else:
        echo(f"{sent.status or 'sent'}: {sent.id} via {sent.channel} "
             f"{sent.from_number} -> {sent.to_number}")


def only_agent(client):
    """The id of the account's one agent; a usage error naming them when there are more."""
    page = client.list_agents(limit=10)
    if len(page.items) == 1 and not page.has_more:
        return page.items[0].id
    if not page.items:
        raise click.UsageError("this account has no agent to send from: create one, or give "
                               "--number-id")
    listed = ", ".join(agent.id for agent in page.items) + (", ..." if page.has_more else "")
    raise click.UsageError(f"this account has {page.total or len(page.items)} agents "
                           f"({listed}): give --agent-id or --number-id")
