"""NDJSON lines for voice replies (SPEC 2.2, Q14): one JSON object and a newline, nothing else."""

import json


def line(obj):
    return json.dumps(obj, ensure_ascii=False, separators=(",", ":")) + "\n"


def interim(text):
    return line({"text": text, "interim": True})
