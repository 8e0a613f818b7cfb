"""`agentphone simulate`: post a signed delivery like the platform and show the reply."""

import time

import click
import requests

from app import config, simulator
from app.cli.base import uses
from app.cli.output import echo


def default_url():
    """The local server's webhook: http://127.0.0.1:$PORT/webhook."""
    return f"http://127.0.0.1:{config.env('PORT')}/webhook"


@click.command("simulate")
@click.option("--url", default=default_url, show_default="http://127.0.0.1:$PORT/webhook",
              help="The running server's webhook URL.")
@click.option("--sms", "kind", flag_value="sms", help="Send an inbound SMS instead.")
@click.option("--call-ended", "kind", flag_value="call_ended", help="Send a call-ended event.")
@click.option("--voice", "kind", flag_value="voice", default=True, help="A voice turn (default).")
@click.option("--text", default=None, help="What the caller says or texts.")
@click.option("--id", "delivery_id", default=None, help="X-Webhook-ID (default: random).")
@click.option("--call-id", default=None,
              help="callId of a voice turn or call end; reuse one to continue a call "
                   "(default: a new call each time).")
@click.option("--secret", default=None,
              help="Signing secret (default: AGENTPHONE_WEBHOOK_SECRET, the newest stored one, "
                   "or the development secret with AGENTPHONE_DEV=1).")
@click.option("--agent-id", default=None,
              help="The delivery's agentId (picks the agent behind a server with AGENTS).")
def simulate(url, kind, text, delivery_id, call_id, secret, agent_id):
    """Sign and post a sample delivery; print each NDJSON line with its arrival time."""
    secret = secret or uses().webhook_secret()
    data = {} if kind == "sms" else {"callId": call_id or simulator.new_call_id()}
    body = simulator.payload(kind, text, **data)
    if agent_id:
        body["agentId"] = agent_id
    raw, headers = simulator.signed_request(secret, body, delivery_id)
    call = f"  callId: {data['callId']}" if data else ""
    echo(f"POST {url}  {kind}  X-Webhook-ID: {headers['X-Webhook-ID']}{call}")
    started = time.monotonic()
    try:
        with requests.post(url, data=raw, headers=headers, stream=True, timeout=(5, 150)) as resp:
            ms = (time.monotonic() - started) * 1000
            echo(f"{ms:7.1f} ms  HTTP {resp.status_code} {resp.headers.get('Content-Type')}")
            for raw_line in simulator.iter_ndjson(resp):
                ms = (time.monotonic() - started) * 1000
                echo(f"{ms:7.1f} ms  {raw_line.decode('utf-8', 'replace')}")
    except requests.RequestException as exc:
        raise click.ClickException(f"could not reach {url}: {exc}") from exc
    if resp.status_code >= 400:
        raise click.ClickException(f"server answered {resp.status_code}")
