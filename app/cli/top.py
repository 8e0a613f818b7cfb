"""`agentphone top`: the console's "Now" page in the terminal, refreshed in place."""

import time

import click

from app.cli.base import uses
from app.console import figures

CLEAR = "\x1b[H\x1b[2J"


def render(now):
    """The "Now" figures as lines of text."""
    lines = [
        time.strftime("agentphone top  %H:%M:%S", time.localtime(now["at"])),
        "",
        f"  voice turns in flight   {len(now['in_flight'])}",
        f"  deliveries per minute   {now['per_minute']}",
        f"  first line p50 / p99    {figures.ms(now['p50'])} / {figures.ms(now['p99'])}",
        f"  fallbacks (5 min)       {now['fallbacks']}",
        f"  jobs pending / dead     {now['pending_jobs']} / {now['dead_jobs']}",
        f"  store                   {now['store']['state']}",
        f"  platform API            {now['api']['state']}",
        "",
    ]
    for turn in now["in_flight"][:15]:
        lines.append(f"  {turn['elapsed']:5.1f} s  {turn['call_id'] or '-':<24} "
                     f"{(turn['said'] or '')[:60]}")
    return lines


@click.command("top")
@click.option("--interval", default=2.0, show_default=True, type=click.FloatRange(0.1, 60),
              help="Seconds between refreshes.")
@click.option("--once", is_flag=True, help="Print one frame and exit.")
def top(interval, once):
    """Voice turns in flight, traffic, latency and jobs, from the store; Ctrl-C leaves."""
    api = {"state": "ok" if uses().settings.get("AGENTPHONE_API_KEY") else "not configured"}
    try:
        while True:
            frame = "\n".join(render(figures.now(uses().store(), api)))
            click.echo(frame if once else CLEAR + frame)
            if once:
                return
            time.sleep(interval)
    except KeyboardInterrupt:
        click.echo()
