"""Server-sent events: a parser following the WHATWG event-stream rules, and the typed
transcript events AgentPhone sends over it (SPEC 4.4, Q26)."""

import codecs
import json
import logging
from dataclasses import dataclass

from app.agentphone.models import StreamConnected, StreamEnded, TranscriptTurn

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class SSEEvent:
    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental event-stream parser: feed bytes or text, get complete events back.

    Lines end with CRLF, LF or CR (a CR at the end of one chunk may be the first half of a
    CRLF split across chunks, so it is held until the next chunk or `close`).
    """

    def __init__(self):
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._buffer = ""
        self._first = True
        self._data = []
        self._event = ""
        self._last_id = None
        self._retry = None

    def feed(self, chunk):
        """Events completed by `chunk` (bytes or str)."""
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        self._buffer += text
        events = []
        for line in self._complete_lines():
            event = self.feed_line(line)
            if event is not None:
                events.append(event)
        return events

    def close(self):
        """End of stream: a trailing event without its blank line is discarded (per the spec)."""
        tail = self._decoder.decode(b"", final=True)
        # A held CR is a line end after all; "\r" + "\n" is read as one terminator.
        return self.feed(tail + ("\n" if (self._buffer + tail).endswith("\r") else ""))

    def _complete_lines(self):
        while True:
            cut = _line_end(self._buffer)
            if cut is None:
                return
            start, end = cut
            line, self._buffer = self._buffer[:start], self._buffer[end:]
            yield line

    def feed_line(self, line):
        """Process one line (without its terminator); returns an event at a blank line."""
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment, e.g. ": heartbeat"
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self):
        data, event = self._data, self._event
        self._data, self._event = [], ""
        if not data:
            return None
        return SSEEvent(event=event or "message", data="\n".join(data), id=self._last_id,
                        retry=self._retry)


def _line_end(buffer):
    """(start, end) of the first complete line terminator in `buffer`, or None."""
    for i, ch in enumerate(buffer):
        if ch == "\n":
            return i, i + 1
        if ch == "\r":
            if i + 1 == len(buffer):
                return None  # maybe CRLF split across chunks
            return (i, i + 2) if buffer[i + 1] == "\n" else (i, i + 1)
    return None


def parse_sse(chunks):
    """Yield SSEEvents from an iterable of byte/str chunks."""
    parser = SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


_TRANSCRIPT_EVENTS = {"connected": StreamConnected, "turn": TranscriptTurn, "ended": StreamEnded}


def transcript_event(event):
    """The typed transcript event for an SSEEvent, or None for unknown or malformed ones."""
    model = _TRANSCRIPT_EVENTS.get(event.event)
    if model is None:
        return None
    try:
        data = json.loads(event.data)
    except ValueError:
        log.warning("ignoring %s event with non-JSON data: %.200r", event.event, event.data)
        return None
    if not isinstance(data, dict):
        return None
    typed = model.from_dict(data)
    if model is TranscriptTurn and (typed.role is None or typed.content is None):
        return None  # Q26: a turn needs at least role and content
    return typed
