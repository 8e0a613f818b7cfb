"""Server-sent events: a parser following the WHATWG event-stream rules, and the typed
transcript events AgentPhone sends over it (contract 4.4, D26)."""

import codecs
import json
import logging
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

from app.agentphone.errors import StreamLimitError
from app.agentphone.models import StreamConnected, StreamEnded, TranscriptTurn

log = logging.getLogger(__name__)

MAX_LINE = 1 << 20  # characters in one line; a transcript turn is far shorter
MAX_EVENT = 1 << 20  # characters in the data lines of one event
_LINE_END = re.compile("\r\n|\r|\n")


@dataclass(frozen=True)
class SSEEvent:
    """One dispatched event: its type (`message` by default), its data lines joined with
    newlines, and the last event id and retry delay (ms) the stream set."""

    event: str
    data: str
    id: str | None = None
    retry: int | None = None


class SSEParser:
    """Incremental event-stream parser: feed bytes or text, get complete events back.

    Lines end with CRLF, LF or CR (a CR at the end of one chunk may be the first half of a
    CRLF split across chunks, so it is held until the next chunk or `close`). Work is linear
    in the input, and a line longer than `max_line` characters or an event whose data lines
    add up to more than `max_event` raises StreamLimitError instead of growing without end.
    """

    def __init__(self, max_line: int = MAX_LINE, max_event: int = MAX_EVENT) -> None:
        self.max_line = max_line
        self.max_event = max_event
        self._decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        self._partial: list[str] = []  # pieces of a line whose end has not arrived yet
        self._partial_len = 0
        self._held_cr = False
        self._first = True
        self._data: list[str] = []
        self._data_len = 0
        self._event = ""
        self._last_id: str | None = None
        self._retry: int | None = None

    def feed(self, chunk: bytes | str) -> list[SSEEvent]:
        """Events completed by `chunk` (bytes or str).

        :raises StreamLimitError: a line or an event is longer than the parser accepts.
        """
        text = self._decoder.decode(chunk) if isinstance(chunk, bytes) else chunk
        if self._first and text:
            text = text.removeprefix("\ufeff")
            self._first = False
        if self._held_cr:
            text, self._held_cr = "\r" + text, False
        if text.endswith("\r"):
            text, self._held_cr = text[:-1], True
        events = []
        pos = 0
        for match in _LINE_END.finditer(text):
            event = self.feed_line(self._take_line(text[pos:match.start()]))
            pos = match.end()
            if event is not None:
                events.append(event)
        if pos < len(text):
            self._partial.append(text[pos:])
            self._partial_len += len(text) - pos
            self._check_line(self._partial_len)
        return events

    def close(self) -> list[SSEEvent]:
        """End of stream: a trailing event without its blank line is discarded (per the spec)."""
        tail = self._decoder.decode(b"", final=True)
        # A held CR is a line end after all; "\r" + "\n" is read as one terminator.
        return self.feed(tail + ("\n" if self._held_cr or tail.endswith("\r") else ""))

    def _take_line(self, end: str) -> str:
        if not self._partial:
            self._check_line(len(end))
            return end
        self._check_line(self._partial_len + len(end))
        line = "".join(self._partial) + end
        self._partial, self._partial_len = [], 0
        return line

    def _check_line(self, length: int) -> None:
        if length > self.max_line:
            raise StreamLimitError(f"event stream line longer than {self.max_line} characters")

    def feed_line(self, line: str) -> SSEEvent | None:
        """Process one line (without its terminator); returns an event at a blank line.

        :raises StreamLimitError: the event's data lines add up to more than `max_event`.
        """
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment, e.g. ": heartbeat"
        name, sep, value = line.partition(":")
        if sep and value.startswith(" "):
            value = value[1:]
        if name == "data":
            self._data_len += len(line) + 1
            if self._data_len > self.max_event:
                raise StreamLimitError(
                    f"event stream event larger than {self.max_event} characters")
            self._data.append(value)
        elif name == "event":
            self._event = value
        elif name == "id" and "\0" not in value:
            self._last_id = value
        elif name == "retry" and value.isascii() and value.isdigit():
            self._retry = int(value)
        return None

    def _dispatch(self) -> SSEEvent | None:
        data, event = self._data, self._event
        self._data, self._data_len, self._event = [], 0, ""
        if not data:
            return None
        return SSEEvent(event=event or "message", data="\n".join(data), id=self._last_id,
                        retry=self._retry)


def parse_sse(chunks: Iterable[bytes | str]) -> Iterator[SSEEvent]:
    """Yield SSEEvents from an iterable of byte/str chunks.

    :raises StreamLimitError: a line or an event is longer than the parser accepts.
    """
    parser = SSEParser()
    for chunk in chunks:
        yield from parser.feed(chunk)
    yield from parser.close()


TranscriptEvent = StreamConnected | TranscriptTurn | StreamEnded

_TRANSCRIPT_EVENTS: dict[str, type[TranscriptEvent]] = {
    "connected": StreamConnected, "turn": TranscriptTurn, "ended": StreamEnded,
}


def transcript_event(event: SSEEvent) -> TranscriptEvent | None:
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
    if isinstance(typed, TranscriptTurn) and (typed.role is None or typed.content is None):
        return None  # contract D26: a turn needs at least role and content
    return typed
