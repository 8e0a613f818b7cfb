"""Turning streamed model text into speakable sentences (pure functions, no I/O).

``SentenceStream`` takes tokens as they arrive and hands back each sentence as soon as it
is known to be complete, so the caller hears the first sentence while the model is still
writing the second. ``speakable`` strips what must never reach text-to-speech: markdown,
XML/tool-call markup, code, emoji.
"""

import re
import unicodedata

# Words that end with a period without ending the sentence ("Dr. Lee", "approx. 5").
_ABBREVIATIONS = """
    mr mrs ms dr prof sr jr st mt ft vs etc e.g i.e approx appt dept est min max no nos
    tel ext jan feb mar apr jun jul aug sep sept oct nov dec mon tue tues wed thu thur
    thurs fri sat sun ave blvd rd hwy co corp inc ltd fig vol
"""
ABBREVIATIONS = frozenset(_ABBREVIATIONS.split())
# Abbreviations that end a sentence when a capitalised word follows ("at 5 p.m. See you").
SOFT_ABBREVIATIONS = frozenset({"etc", "a.m", "p.m", "inc", "ltd", "co", "corp", "no"})
TERMINATORS = ".!?…"
OPENERS = "(\"'\u201c\u2018"
CLOSERS = "\"')]}\u201d\u2019\u00bb*_`"  # quotes, brackets, closing emphasis
SOFT_LIMIT = 240  # a sentence longer than this is cut at a comma/semicolon for TTS

MASK = "\x01"
_SPACE = re.compile(r"\s")


def split_sentences(text):
    """All sentences of a finished text (the last one may lack a terminator)."""
    stream = SentenceStream()
    return [*stream.feed(text), *filter(None, [stream.flush()])]


class SentenceStream:
    """Feed text fragments; get back complete, cleaned sentences as early as possible.

    A boundary is a terminator run (``.``, ``!``, ``?``, ``…``) plus closing quotes, then
    whitespace, then the next visible character, which decides doubtful cases (an
    abbreviation, an ellipsis in mid-thought). Text inside unfinished markup (an open code
    fence, ``<think>``/``<tool_call>`` block, ``<tag``, JSON object or array) is held until
    the markup closes.
    """

    def __init__(self):
        self.buffer = ""

    def feed(self, fragment):
        self.buffer += fragment or ""
        out = []
        while True:
            end = _boundary(self.buffer, final=False)
            if end is None:
                break
            sentence, self.buffer = self.buffer[:end], self.buffer[end:]
            text = speakable(sentence)
            if text:
                out.append(text)
        return out

    def flush(self):
        """The rest of the text, cleaned (call when the stream ends)."""
        rest, self.buffer = self.buffer, ""
        parts = []
        while rest:
            end = _boundary(rest, final=True)
            if end is None:
                parts.append(rest)
                break
            parts.append(rest[:end])
            rest = rest[end:]
        return " ".join(filter(None, (speakable(p) for p in parts)))


def _safe_length(text):
    """How much of ``text`` lies before any unfinished markup."""
    limit = len(text)
    fences = [m.start() for m in re.finditer(r"```", text)]
    if len(fences) % 2:
        limit = min(limit, fences[-1])
    for m in _BLOCK_OPEN.finditer(text):
        closing = re.compile(r"</\s*" + re.escape(m.group(1)) + r"\s*>", re.I)
        if not closing.search(text, m.end()):
            limit = min(limit, m.start())
            break
    for start, end in _json_spans(text[:limit]):
        if end is None:
            limit = start
    lt = text.rfind("<", 0, limit)
    if lt != -1 and ">" not in text[lt:limit] and re.match(r"<[/!|a-zA-Z]?", text[lt:]):
        limit = min(limit, lt)
    return limit


def _mask(text):
    """``text`` with every finished markup span replaced by MASK characters (same length),
    so that periods inside a tool call or code block are never taken for sentence ends."""
    for pattern in (_BLOCKS, _CLOSED_FENCE, _SPECIAL_TOKEN, _TAG):
        text = pattern.sub(lambda m: MASK * len(m.group(0)), text)
    for start, end in _json_spans(text):
        if end is not None:
            text = text[:start] + MASK * (end - start) + text[end:]
    return text


def _json_spans(text):
    """``(start, end)`` of each JSON-like object or array in ``text`` (brackets balanced,
    strings skipped); ``end`` is None for one still open at the end of the text."""
    spans, pos = [], 0
    while (match := _JSON_OPEN.search(text, pos)) is not None:
        depth, in_string, escaped, end = 0, False, False, None
        for i in range(match.start(), len(text)):
            ch = text[i]
            if escaped:
                escaped = False
            elif in_string:
                escaped = ch == "\\"
                in_string = ch != '"'
            elif ch == '"':
                in_string = True
            elif ch in "{[":
                depth += 1
            elif ch in "}]":
                depth -= 1
                if depth == 0:
                    end = i + 1
                    break
        spans.append((match.start(), end))
        if end is None:
            return spans
        pos = end
    return spans


def _boundary(text, final):
    """End index (exclusive) of the first complete sentence in ``text``, else None."""
    safe = _safe_length(text)
    text = _mask(text)
    i = 0
    while i < safe:
        ch = text[i]
        if ch == "\n":
            if text[:i].strip() and (final or text[i + 1:safe].strip()):
                return i + 1
            i += 1
            continue
        if ch not in TERMINATORS:
            i += 1
            continue
        run_end = i
        while run_end < safe and text[run_end] in TERMINATORS:
            run_end += 1
        end = run_end
        while end < safe and text[end] in CLOSERS:
            end += 1
        if end >= safe:
            # Complete when the text ends here (final) or markup starts right after it.
            done = (final and end == len(text)) or end == safe < len(text)
            return end if done and text[:end].strip() else None
        if not _SPACE.match(text[end]):
            i = end  # "3.5", "e.g.x", "?!" inside a word: not a boundary
            continue
        rest = text[end:safe]
        nxt = rest.lstrip()
        if not nxt:
            # Only markup (or nothing yet) follows: complete if markup or the end follows.
            return end if final or safe < len(text) else None
        if _ends_sentence(text[:i], text[i:run_end], nxt[0]):
            return end
        i = end
    if len(text[:safe]) > SOFT_LIMIT:
        cut = max(text.rfind(", ", 0, SOFT_LIMIT), text.rfind("; ", 0, SOFT_LIMIT))
        if cut > 40:
            return cut + 2
    return None


def _ends_sentence(before, run, nxt):
    if "!" in run or "?" in run or nxt == MASK:
        return True
    if run in ("...", "…") or len(run) > 1:
        # "Let me see... Yes" ends; "well... maybe" does not.
        return nxt.isupper() or nxt.isdigit() or nxt in OPENERS
    if before.split("\n")[-1].strip().isdigit():
        return False  # a numbered list item: "1. Monday"
    word = re.split(r"\s", before)[-1].lstrip(OPENERS + "[*_`").lower()
    if len(word) == 1 and word.isalpha():
        return False  # an initial: "J. Smith"
    if word in SOFT_ABBREVIATIONS:
        if word == "no":
            return not nxt.isdigit()
        return nxt.isupper()
    if word in ABBREVIATIONS:
        return False
    return not nxt.islower()  # lower case next: most likely an abbreviation we do not know


# -- cleaning -------------------------------------------------------------------------------

_BLOCK_OPEN = re.compile(
    r"<\s*(think|thinking|tool_call|tool_calls|function_calls?|function|tool|invoke|"
    r"antml:[a-z_]+|reasoning|scratchpad)\b[^>]*>",
    re.I,
)
_BLOCKS = re.compile(
    r"<\s*(think|thinking|tool_call|tool_calls|function_calls?|function|tool|invoke|"
    r"antml:[a-z_]+|reasoning|scratchpad)\b[^>]*>.*?</\s*\1\s*>",
    re.I | re.S,
)
_UNCLOSED = re.compile(_BLOCK_OPEN.pattern + r".*$|<[^<>]*$", re.I | re.S)
_CLOSED_FENCE = re.compile(r"```.*?```", re.S)
_FENCED = re.compile(r"```.*?(```|$)", re.S)
_SPECIAL_TOKEN = re.compile(r"<\|[^|>]*\|>")
# "{" anywhere; "[" only where JSON would follow (not "[Dr. Lee](...)" or "[sic]").
_JSON_OPEN = re.compile(r"\{|\[(?=\s*(?:[{\[\"\d\]-]|$))")
_KEY_LINE = re.compile(r"""^\s*[-*•]?\s*["'][^"'\n]{1,60}["']\s*:""")
_DATA_MARKS = frozenset('"{}[]:,;=<>\\/~^')
_TAG = re.compile(r"</?[a-zA-Z][\w:.-]*(\s[^<>]*)?/?>")
_IMAGE = re.compile(r"!\[([^\]]*)\]\([^)]*\)")
_LINK = re.compile(r"\[([^\]]+)\]\([^)]*\)")
_BOLD = re.compile(r"(\*\*|__)(.+?)\1")
_ITALIC = re.compile(r"(?<![\w*])([*_])(?!\s)(.+?)(?<!\s)\1(?![\w*])")
_CODE = re.compile(r"`([^`]*)`")
_LINE_MARKERS = re.compile(r"^\s*(#{1,6}\s+|>\s?|[-*+•]\s+|\d{1,3}[.)]\s+)", re.M)
_RULE = re.compile(r"^\s*([-*_=|:]\s*){3,}$", re.M)
_TABLE_PIPES = re.compile(r"\s*\|\s*")
_REPEATED_COMMAS = re.compile(r",(\s*,)+")
_STRAY = re.compile(r"[*_#`~<>{}\[\]|\\^]")
_SPACES = re.compile(r"\s+")
_SPACE_BEFORE_PUNCT = re.compile(r"\s+([,.!?;:])")
_KEEP_SYMBOLS = frozenset("°©®™€£¥$%&@+=/")


def speakable(text):
    """``text`` with markup removed; "" when nothing worth saying is left."""
    text = _BLOCKS.sub(" ", text)
    text = _UNCLOSED.sub(" ", text)
    text = _FENCED.sub(" ", text)
    text = _SPECIAL_TOKEN.sub(" ", text)
    text = _TAG.sub(" ", text)
    for start, end in reversed(_json_spans(text)):
        text = text[:start] + " " + (text[end:] if end is not None else "")
    text = "\n".join(line for line in text.split("\n") if not _data_line(line))
    text = _IMAGE.sub(" ", text)
    text = _LINK.sub(r"\1", text)
    text = _RULE.sub(" ", text)
    text = _LINE_MARKERS.sub("", text)
    text = _BOLD.sub(r"\2", text)
    text = _ITALIC.sub(r"\2", text)
    text = _CODE.sub(r"\1", text)
    if "|" in text:
        text = _REPEATED_COMMAS.sub(",", _TABLE_PIPES.sub(", ", text))
    text = _STRAY.sub(" ", text)
    text = "".join(ch for ch in text if _speakable_char(ch))
    text = _SPACES.sub(" ", text)
    text = _SPACE_BEFORE_PUNCT.sub(r"\1", text).strip(" ,")
    return text if any(ch.isalnum() for ch in text) else ""


def _speakable_char(ch):
    if ch in _KEEP_SYMBOLS or ch.isspace():
        return True
    category = unicodedata.category(ch)
    if category in ("So", "Cs", "Co", "Cn") or category == "Cf":
        return False  # emoji and pictographs, joiners, variation selectors, private use
    return not (category == "Sk" and ord(ch) > 0x2000)  # skin-tone modifiers


def _data_line(line):
    """A JSON-ish line (``"time slot":``, ``"day": "23",``, ``},``), not words to say."""
    if _KEY_LINE.match(line):
        return True
    return sum(ch in _DATA_MARKS for ch in line) > sum(ch.isalnum() for ch in line)
