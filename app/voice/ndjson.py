"""NDJSON lines for voice replies (SPEC 2.2, Q14): one JSON object and a newline, nothing else."""

import json


def line(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def interim(text):
    return line({"text": text, "interim": True})


class Body(map):
    """A WSGI body: NDJSON ``lines`` (str) encoded as UTF-8, closed with ``lines``.

    Served as is (``direct_passthrough``) instead of through Werkzeug's ClosingIterator and
    ``iter_encoded``: those are two Python-level iterators between the server and a voice
    turn's generator, each one more C stack level that a held stream's greenlet saves on every
    switch. ``map``'s ``__next__`` is C and adds no Python frame."""

    __slots__ = ("close",)

    def __new__(cls, lines):
        body = super().__new__(cls, str.encode, lines)
        if hasattr(lines, "close"):
            body.close = lines.close
        return body
