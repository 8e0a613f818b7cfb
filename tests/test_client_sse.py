import itertools
import json
import logging
import time

import pytest
from hypothesis import given
from hypothesis import strategies as st

from app.agentphone import APIConnectionError, NotFoundError, StreamLimitError
from app.agentphone.models import StreamConnected, StreamEnded, TranscriptTurn
from app.agentphone.sse import SSEEvent, SSEParser, parse_sse, transcript_event
from tests.fake_agentphone import (  # noqa: F401
    api_fixture,
    dropped_sse,
    fake_api_fixture,
    json_reply,
    make_api_fixture,
    sse_reply,
)

PATH = "/v1/calls/call_1/transcript/stream"
CONNECTED = ('event: connected\ndata: {"callId":"call_1","status":"in-progress",'
             '"agentId":"agt_1","agentName":"Support","direction":"inbound",'
             '"fromNumber":"+15559876543","toNumber":"+15551234567",'
             '"startedAt":"2025-01-15T14:00:00Z"}\n\n')
ENDED = ('event: ended\ndata: {"callId":"call_1","status":"completed",'
         '"endedAt":"2025-01-15T14:05:30Z","durationSeconds":330}\n\n')
HEARTBEAT = ": heartbeat\n\n"


def turn(n, role="user"):
    data = json.dumps({"role": role, "content": f"line {n}",
                       "createdAt": f"2025-01-15T14:00:{n:02}Z"})
    return f"event: turn\ndata: {data}\n\n"


def contents(events):
    return [e.content if isinstance(e, TranscriptTurn) else type(e).__name__ for e in events]


# -- the parser ----------------------------------------------------------------------------

def test_parser_fields_comments_and_multiline_data():
    text = (": comment\n"
            "event: turn\nid: 7\nretry: 3000\ndata: {\"a\":\ndata:  1}\n\n"
            "data\n\n"                       # a field with no colon: empty value
            "event: x\nretry: soon\nnot-a-field: y\ndata:plain\n\n"
            "event: dangling\n\n"            # no data: not dispatched
            "data: unterminated")            # no blank line at the end: discarded
    assert list(parse_sse([text.encode()])) == [
        SSEEvent("turn", '{"a":\n 1}', "7", 3000),
        SSEEvent("message", "", "7", 3000),
        SSEEvent("x", "plain", "7", 3000),
    ]


@pytest.mark.parametrize("newline", ["\n", "\r\n", "\r"])
def test_parser_line_endings(newline):
    text = f"event: turn{newline}data: a{newline}data: b{newline}{newline}"
    assert list(parse_sse([text])) == [SSEEvent("turn", "a\nb")]


def test_parser_bom_and_split_utf8():
    raw = "\ufeffdata: caf\u00e9\n\n".encode()
    assert list(parse_sse(raw[i:i + 1] for i in range(len(raw)))) == [SSEEvent("message", "café")]


def test_parser_crlf_split_across_chunks():
    parser = SSEParser()
    assert parser.feed(b"data: a\r") == []
    assert parser.feed(b"\n\r") == []
    assert parser.feed(b"\ndata: b\n\n") == [SSEEvent("message", "a"), SSEEvent("message", "b")]


def test_an_unterminated_4_mib_line_fails_fast_with_a_limit_error():
    parser = SSEParser()
    line = b"data: " + b"x" * (4 << 20)
    started = time.monotonic()
    with pytest.raises(StreamLimitError, match="line longer than"):
        for i in range(0, len(line), 65536):  # as the client reads: what has arrived
            parser.feed(line[i:i + 65536])
    assert time.monotonic() - started < 2.0  # a generous bound: once took 43 s


def test_a_million_data_lines_without_a_blank_line_hit_the_event_limit():
    parser = SSEParser()
    chunk = b"data: x\n" * 10_000
    fed = []
    with pytest.raises(StreamLimitError, match="event larger than"):
        for _ in range(100):  # a million lines in all
            parser.feed(chunk)
            fed.append(len(chunk))
    assert sum(fed) <= parser.max_event  # it stopped at the limit, not at the end


def test_limits_count_per_line_and_per_event_not_per_stream():
    parser = SSEParser(max_line=100, max_event=250)
    events = parser.feed(("data: " + "y" * 94 + "\n\n").encode() * 50)  # lines of 100
    events += parser.feed(b": " + b"c" * 98 + b"\ndata: a\ndata: b\n\n")
    assert len(events) == 51
    assert events[-1] == SSEEvent("message", "a\nb")
    with pytest.raises(StreamLimitError):
        parser.feed(("data: " + "y" * 95 + "\n").encode())
    with pytest.raises(StreamLimitError):
        SSEParser(max_line=100, max_event=250).feed(("data: " + "z" * 90 + "\n").encode() * 3)


STREAM = (CONNECTED + HEARTBEAT + turn(1) + "data: orphan\r\n\r\n" + turn(2, "agent")
          + "event: future\ndata: {}\n\n" + ENDED).replace("\n", "\r\n").encode()


@given(st.lists(st.integers(min_value=0, max_value=len(STREAM)), max_size=12))
def test_parser_result_does_not_depend_on_chunking(cuts):
    bounds = [0, *sorted(cuts), len(STREAM)]
    chunks = [STREAM[a:b] for a, b in itertools.pairwise(bounds)]
    assert list(parse_sse(chunks)) == list(parse_sse([STREAM]))


@pytest.mark.parametrize(("event", "expected"), [
    (SSEEvent("turn", '{"role":"user","content":"hi","extra":1}'), TranscriptTurn),
    (SSEEvent("turn", '{"role":"user"}'), None),  # contract D26: needs role and content
    (SSEEvent("turn", "not json"), None),
    (SSEEvent("turn", "[1]"), None),
    (SSEEvent("ended", "{}"), StreamEnded),
    (SSEEvent("message", "{}"), None),
])
def test_transcript_event_typing(event, expected):
    typed = transcript_event(event)
    assert (type(typed) if typed is not None else None) is expected


# -- the stream over HTTP ------------------------------------------------------------------

def test_stream_yields_typed_events_and_stops_after_ended(fake_api, api):
    multiline = 'event: turn\ndata: {"role": "agent",\ndata: "content": "two lines"}\n\n'
    fake_api.on("GET", PATH, sse_reply(CONNECTED, HEARTBEAT, turn(1), 0.05, HEARTBEAT,
                                       multiline, "event: future\ndata: {}\n\n", ENDED,
                                       turn(9)))
    events = list(api.stream_transcript("call_1"))
    assert contents(events) == ["StreamConnected", "line 1", "two lines", "StreamEnded"]
    connected, ended = events[0], events[-1]
    assert isinstance(connected, StreamConnected)
    assert (connected.agent_name, connected.from_number) == ("Support", "+15559876543")
    assert (ended.status, ended.duration_seconds) == ("completed", 330)
    headers = fake_api.last("GET", PATH).headers
    assert headers["Accept"] == "text/event-stream"


def test_reconnects_after_a_dropped_connection_without_repeating_turns(fake_api, api, caplog):
    caplog.set_level(logging.INFO, "app.agentphone.client")
    fake_api.on("GET", PATH,
                dropped_sse(CONNECTED, turn(1), turn(2, "agent")),
                sse_reply(CONNECTED, turn(1), turn(2, "agent"), turn(3), ENDED))
    events = list(api.stream_transcript("call_1"))
    assert contents(events) == ["StreamConnected", "line 1", "line 2", "line 3", "StreamEnded"]
    assert fake_api.count("GET", PATH) == 2
    assert "stream interrupted" in caplog.text


def test_reconnects_when_the_server_closes_before_ended(fake_api, api):
    fake_api.on("GET", PATH, sse_reply(CONNECTED, turn(1)),
                sse_reply(CONNECTED, turn(1), ENDED))
    assert contents(api.stream_transcript("call_1")) == ["StreamConnected", "line 1",
                                                         "StreamEnded"]


def test_a_silent_connection_times_out_and_reconnects(fake_api, make_api):
    fake_api.on("GET", PATH, sse_reply(CONNECTED, turn(1), 3.0, ENDED),
                sse_reply(CONNECTED, turn(1), turn(2), ENDED))
    started = time.monotonic()
    events = list(make_api().stream_transcript("call_1", quiet_timeout=0.3))
    assert contents(events) == ["StreamConnected", "line 1", "line 2", "StreamEnded"]
    assert 0.3 <= time.monotonic() - started < 2.5


def test_heartbeats_keep_a_quiet_call_alive(fake_api, api):
    fake_api.on("GET", PATH, sse_reply(CONNECTED, *[0.1, HEARTBEAT] * 5, turn(1), ENDED))
    events = list(api.stream_transcript("call_1", quiet_timeout=0.4))
    assert contents(events) == ["StreamConnected", "line 1", "StreamEnded"]
    assert fake_api.count("GET", PATH) == 1


def test_gives_up_after_max_reconnects(fake_api, api):
    fake_api.on("GET", PATH, sse_reply(CONNECTED, turn(1)))
    with pytest.raises(APIConnectionError, match="lost after 2 reconnects"):
        list(api.stream_transcript("call_1", max_reconnects=2))
    assert fake_api.count("GET", PATH) == 3


def test_http_error_before_the_stream_is_raised_at_once(fake_api, api):
    fake_api.on("GET", PATH, json_reply({"detail": "Call not found"}, 404))
    with pytest.raises(NotFoundError, match="Call not found"):
        list(api.stream_transcript("call_1"))
    assert fake_api.count("GET", PATH) == 1


def test_an_oversized_event_ends_the_stream_with_a_limit_error_without_reconnecting(
        fake_api, api):
    fake_api.on("GET", PATH, sse_reply(CONNECTED, "event: turn\ndata: " + "x" * (2 << 20)))
    events = []
    with pytest.raises(StreamLimitError):
        events.extend(api.stream_transcript("call_1"))
    assert contents(events) == ["StreamConnected"]
    assert fake_api.count("GET", PATH) == 1
