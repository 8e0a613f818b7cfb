"""NDJSON lines for voice replies (contract 2.2, D14): one JSON object and a newline,
nothing else."""

import json
from collections.abc import Iterable

from flask import Response

WRITE_KEY = "agentphone.write"


def line(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def interim(text):
    return line({"text": text, "interim": True})


class Body(map):
    """A WSGI body: NDJSON ``lines`` (str) encoded as UTF-8, closed with ``lines``.

    Served as is (``direct_passthrough``), with ``map``'s C ``__next__``: Werkzeug's wrapping
    iterators would deepen the stack a held stream's greenlet saves on every switch."""

    __slots__ = ("_lines",)

    def __new__(cls, lines):
        body = super().__new__(cls, str.encode, lines)
        body._lines = lines  # not a bound method of it: one lives as long as the stream
        return body

    def close(self):
        close = getattr(self._lines, "close", None)
        if close is not None:
            close()


class StreamResponse(Response):
    """The streamed NDJSON reply to a voice turn, made of ``lines`` (str).

    It keeps the server's ``write`` callable (PEP 3333) in the WSGI environ under WRITE_KEY,
    so that a line can be sent while the body iterator is busy."""

    default_mimetype = "application/x-ndjson"

    def __init__(self, lines: Iterable[str]) -> None:
        # Proxies must pass each line on at once: no buffering (nginx), no compression or
        # other transformation (HAProxy, CDNs), which would hold lines until the end.
        super().__init__(Body(lines), headers={"X-Accel-Buffering": "no",
                                               "Cache-Control": "no-cache, no-transform"},
                         direct_passthrough=True)

    def __call__(self, environ, start_response):
        app_iter, status, headers = self.get_wsgi_response(environ)
        environ[WRITE_KEY] = start_response(status, headers)
        return app_iter
