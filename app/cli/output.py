"""Printing text that came from elsewhere (the API, the database) without letting it drive the
terminal."""

import re

import click

# OSC (title, hyperlink, clipboard) up to BEL or ST; CSI (colour, cursor, erase); other ESC
# sequences; then any other C0 control but tab and newline, DEL and C1 controls.
_CONTROLS = re.compile(
    r"\x1b\][^\x07\x1b]*(?:\x07|\x1b\\)?"
    r"|\x1b\[[0-?]*[ -/]*[@-~]?"
    r"|\x1b[ -/]*[0-~]?"
    r"|[\x00-\x08\x0b-\x1f\x7f-\x9f]"
)


def terminal_safe(text: str) -> str:
    """``text`` without escape sequences and control characters (newline and tab stay)."""
    return _CONTROLS.sub("", text)


def echo(text: str) -> None:
    """click.echo of ``text`` made terminal-safe, whether or not the output is a terminal."""
    click.echo(terminal_safe(text))
