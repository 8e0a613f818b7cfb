"""The sentence splitter and the markup filter that stand between a model and the caller."""

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from app.agent.speech import SentenceStream, speakable, split_sentences


@pytest.mark.parametrize(("text", "sentences"), [
    ("Hello there. How can I help?", ["Hello there.", "How can I help?"]),
    ("Dr. Lee sees you at 3.5 past. Mr. and Mrs. Smith too!",
     ["Dr. Lee sees you at 3.5 past.", "Mr. and Mrs. Smith too!"]),
    ("It costs $3.50, i.e. cheap. E.g. tea.", ["It costs $3.50, i.e. cheap.", "E.g. tea."]),
    ("Well... maybe. Let me see... Yes, Tuesday works.",
     ["Well... maybe.", "Let me see...", "Yes, Tuesday works."]),
    ("Wait… What? Really?! Ok.", ["Wait…", "What?", "Really?!", "Ok."]),
    ("J. R. Smith called. No. 5 is free. No. It is not.",
     ["J. R. Smith called.", "No. 5 is free.", "No.", "It is not."]),
    ("See you at 5 p.m. Thanks. Open 9 a.m. to noon.",
     ["See you at 5 p.m.", "Thanks.", "Open 9 a.m. to noon."]),
    ('He said "come in." Then left.', ['He said "come in."', "Then left."]),
    ("Version 2.0.1 is out. Visit example.com today.",
     ["Version 2.0.1 is out.", "Visit example.com today."]),
    ("No terminator at the end", ["No terminator at the end"]),
    ("", []),
])
def test_split_sentences(text, sentences):
    assert split_sentences(text) == sentences


@pytest.mark.parametrize(("raw", "spoken"), [
    ("**Great** news: your _order_ is `4521`.", "Great news: your order is 4521."),
    ("## Opening hours\n- Monday: 9 to 5\n- Tuesday: 9 to 5", "Opening hours Monday: 9 to 5 "
                                                             "Tuesday: 9 to 5"),
    ("1. Call us\n2. Visit", "Call us Visit"),
    ("See [our site](https://example.com) ![logo](x.png)", "See our site"),
    ("Sure! 🎉👍🏽 Booked ✅", "Sure! Booked"),
    ("It is 20°C & sunny", "It is 20°C & sunny"),
    ('<tool_call>{"name": "book", "arguments": {"day": "monday"}}</tool_call>', ""),
    ("<think>the user wants. a slot</think>Monday works.", "Monday works."),
    ('{"name": "lookup_order", "arguments": {"order_id": "4521"}}', ""),
    ("Here:\n```python\nprint('x')\n```\nDone.", "Here: Done."),
    ("<|im_start|>assistant Hi<|im_end|>", "assistant Hi"),
    ("| Day | Time |\n|---|---|\n| Mon | 9 |", "Day, Time, Mon, 9"),
    ("***", ""),
    ("Hi <b>there</b> , friend", "Hi there, friend"),
])
def test_speakable_strips_markup(raw, spoken):
    assert speakable(raw) == spoken


def test_stream_releases_each_sentence_once_the_next_one_starts():
    stream = SentenceStream()
    assert stream.feed("Your order 45") == []
    assert stream.feed("21 shipped.") == []  # could still be "shipped.com" or an abbreviation
    assert stream.feed(" It") == ["Your order 4521 shipped."]
    assert stream.feed(" arrives Thursday") == []
    assert stream.flush() == "It arrives Thursday"
    assert stream.flush() == ""


def test_stream_holds_unfinished_markup():
    stream = SentenceStream()
    assert stream.feed("Let me check. <tool_call>{\"day\": \"mon. tue\"") == ["Let me check."]
    assert stream.feed("}</tool") == []
    assert stream.feed("_call> Done. Bye") == ["Done."]
    assert stream.flush() == "Bye"
    stream = SentenceStream()
    assert stream.feed("Okay. <think>the caller wants. something") == ["Okay."]
    assert stream.flush() == ""  # an unclosed block is never spoken


def test_long_run_on_sentence_is_cut_at_a_comma():
    stream = SentenceStream()
    text = "We have a lot of options for you today, " * 8
    out = stream.feed(text)
    assert out and all(len(s) <= 240 for s in out)


@settings(max_examples=60, deadline=None)
@given(st.lists(st.sampled_from(["Hi", " Dr. Lee", ".", " 3.5", "...", " ok", "!", " Yes",
                                 "?", " **bold**", " 🎉", "\n", " no", " e.g.", " A"]),
                max_size=25),
       st.data())
def test_any_chunking_gives_the_same_sentences(pieces, data):
    text = "".join(pieces)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=8)))
    stream, out, last = SentenceStream(), [], 0
    for cut in [*cuts, len(text)]:
        out += stream.feed(text[last:cut])
        last = cut
    rest = stream.flush()
    assert [*out, *([rest] if rest else [])] == split_sentences(text)


MULTI_LINE_JSON = '{\n  "day": "23",\n  "time slot": "10:00",\n  "ok": [1, 2]\n}'


@pytest.mark.parametrize(("raw", "spoken"), [
    (f"Here it is.\n{MULTI_LINE_JSON}\nAnything else?", "Here it is. Anything else?"),
    ('Booked [\n  {"day": "mon"}\n] for you.', "Booked for you."),
    ('The note says {"a": "x } y"} here.', "The note says here."),
    ('"time slot":', ""),
    ('"day": "23",', ""),
    ("},", ""),
    ("See [Dr. Lee](http://x) at [10].", "See Dr. Lee at."),
])
def test_speakable_drops_json_and_data_lines(raw, spoken):
    assert speakable(raw) == spoken


def test_stream_holds_multi_line_json_and_never_speaks_it():
    stream, out = SentenceStream(), []
    for piece in ["Sure, here are the details.\n", *MULTI_LINE_JSON.split("\n"),
                  "\nWould that work? Bye"]:
        out += stream.feed(piece + ("\n" if piece.startswith(" ") else ""))
    assert out == ["Sure, here are the details.", "Would that work?"]
    assert stream.flush() == "Bye"
    stream = SentenceStream()
    assert stream.feed('Okay. {"day": "mon. tue",\n "x": 1') == ["Okay."]
    assert stream.flush() == ""  # JSON never closed: dropped, not spoken


def test_key_and_punctuation_lines_outside_json_are_not_spoken():
    text = 'Your booking:\n"day": "23",\n"time slot":\n"10",\n},\nSee you then.'
    assert split_sentences(text) == ["Your booking:", "See you then."]
