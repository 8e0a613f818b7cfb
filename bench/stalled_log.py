"""A log reader that stops reading: does the server still answer?

One gunicorn gevent worker (job runner on, INFO lines and access lines as deployed) writes its
output to a pipe that nothing reads until the load is over; a pipe holds 64 KiB, some 130
texts' lines. Texts are sent one at a time over one kept-alive connection, with a voice turn
after every ``--texts / --voice`` of them. A request unanswered after ``--timeout`` seconds
ends the run (the worker has stopped). Then the pipe is read to its end and the server
stopped.

Reported: texts answered and their ack p50 / p99 / max, voice turns answered and their
first-line and final-line p50 / p99, the access lines that reached the pipe, and the lines the
server says it dropped.

    .venv/bin/python bench/stalled_log.py                 # the working tree
    .venv/bin/python bench/stalled_log.py --rev d4d4096   # before the log writer thread
"""

import argparse
import re
import threading
import time

import requests
from _server import SECRET, announce_source, fmt, gunicorn, percentile, source_tree

from app.simulator import payload, signed_request
from tests.servers import post_stream


def load(server, texts, voices, timeout):
    """Send the texts and voice turns; returns their timings until the first one unanswered."""
    acks, firsts, finals, error = [], [], [], None
    every = max(1, texts // max(voices, 1)) if voices else None
    url = server.url + "/webhook"
    with requests.Session() as session:
        for i in range(texts):
            raw, headers = signed_request(SECRET, payload("sms", f"hello {i}"))
            started = time.perf_counter()
            try:
                resp = session.post(url, data=raw, headers=headers, timeout=timeout)
            except requests.RequestException as exc:
                error = f"text {i + 1}: {type(exc).__name__}"
                break
            acks.append((time.perf_counter() - started) * 1000)
            if resp.status_code != 200:
                error = f"text {i + 1}: HTTP {resp.status_code}"
                break
            if every and (i + 1) % every == 0 and len(firsts) < voices:
                raw, headers = signed_request(SECRET, payload(
                    "voice", "What are your hours?", callId=f"call_{i}"))
                try:
                    _, lines = post_stream(url, raw, headers, timeout=timeout)
                except requests.RequestException as exc:
                    error = f"voice turn {len(firsts) + 1}: {type(exc).__name__}"
                    break
                firsts.append(lines[0][0] * 1000)
                finals.append(lines[-1][0] * 1000)
    return acks, firsts, finals, error


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--texts", type=int, default=2000)
    parser.add_argument("--voice", type=int, default=50, help="voice turns among the texts")
    parser.add_argument("--timeout", type=float, default=10.0,
                        help="seconds a request may go unanswered before the run ends")
    parser.add_argument("--rev", help="serve this git revision instead of the working tree")
    args = parser.parse_args()

    announce_source(args.rev)
    output = []
    with source_tree(args.rev) as tree, gunicorn(
            1, {"LOG_LEVEL": "INFO", "DEMO_TOOL_LATENCY": "0"}, cwd=tree,
            output_pipe=True) as server:
        acks, firsts, finals, error = load(server, args.texts, args.voice, args.timeout)
        # Read to the end, also while the server stops: lines written at exit need a reader.
        reader = threading.Thread(target=lambda: output.append(server.output.read()))
        reader.start()
    reader.join(30)
    log = output[0].decode(errors="replace") if output else ""
    dropped = sum(int(n) for n in re.findall(r"(\d+) log lines dropped", log))

    acks.sort()
    firsts.sort()
    finals.sort()
    print(f"texts answered {len(acks)} of {args.texts}: ack p50 {fmt(percentile(acks, 50), '.2f')}"
          f" / p99 {fmt(percentile(acks, 99), '.2f')} / max {fmt(acks[-1] if acks else None)} ms")
    print(f"voice turns answered {len(finals)} of {args.voice}: first line p50 "
          f"{fmt(percentile(firsts, 50), '.2f')} / p99 {fmt(percentile(firsts, 99), '.2f')} ms, "
          f"final line p50 {fmt(percentile(finals, 50))} / p99 {fmt(percentile(finals, 99))} ms")
    print(f"access lines read from the pipe {log.count(' access ')}, lines dropped {dropped}")
    if error:
        print(f"stopped: {error} unanswered after {args.timeout:.0f} s")


if __name__ == "__main__":
    main()
