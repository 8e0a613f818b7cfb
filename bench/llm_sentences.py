"""How long a model's sentence takes to reach the caller once the model has written it.

A scripted model server (a process of its own) streams OpenAI-style SSE chunks, one token
every ``--token-ms``, and notes the instant it sent the chunk that completes each sentence
(the first token of the next sentence, or the finish chunk for the last one): that is when
the sentence splitter can release it. gunicorn (one gevent worker) runs the LLM agent
against that server; this process posts voice turns and notes when each NDJSON line
arrives. The added latency of a sentence = its line's arrival - that release instant (all
three processes read the machine's one monotonic clock). Figures per concurrency level:
p50, p99, max, in ms, for the agent path and, as the harness's own share, for the same
script read straight from the model server ("direct": the model's own timing as a client
sees it).

    .venv/bin/python bench/llm_sentences.py --json bench/results/llm.json
"""

import argparse
import json
import multiprocessing
import socket
import socketserver
import time
from concurrent.futures import ThreadPoolExecutor

import requests
from _server import (
    SECRET,
    add_common_options,
    describe_source,
    fmt,
    gunicorn,
    percentile,
    server_env,
    source_tree,
    write_results,
)

from app.simulator import iter_ndjson, new_call_id, payload, signed_request

SENTENCES = ["Your order 4521 shipped yesterday by FedEx.", "It should arrive on Thursday.",
             "The tracking number is in your email.", "Is there anything else I can do?"]


def tokens_of(sentences):
    """(token, index of the sentence it releases or None) pairs: the first token of sentence
    k + 1 completes sentence k."""
    out = []
    for k, sentence in enumerate(sentences):
        words = sentence.split(" ")
        for i, word in enumerate(words):
            token = word if k == 0 and i == 0 else " " + word
            out.append((token, k - 1 if i == 0 and k > 0 else None))
    return out


class ModelServer(socketserver.ThreadingTCPServer):
    """Streams the script for every chat completion; ``released[tag]`` lists the send instant
    of each sentence's releasing chunk, where ``tag`` is the caller's words."""

    daemon_threads = True
    allow_reuse_address = True

    def __init__(self, token_seconds, released):
        super().__init__(("127.0.0.1", 0), ModelHandler)
        self.token_seconds = token_seconds
        self.released = released

    @property
    def url(self):
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class ModelHandler(socketserver.StreamRequestHandler):
    def handle(self):
        self.connection.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        length = 0
        while (line := self.rfile.readline()) not in (b"\r\n", b"\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        body = json.loads(self.rfile.read(length))
        tag = body["messages"][-1]["content"]
        sock, pace = self.connection, self.server.token_seconds
        sock.sendall(b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\n"
                     b"Transfer-Encoding: chunked\r\nConnection: close\r\n\r\n")
        released = []

        def event(data):
            data = f"data: {data}\n\n".encode()
            sock.sendall(b"%x\r\n%s\r\n" % (len(data), data))  # one HTTP chunk per event

        def send(delta, finish=None):
            event(json.dumps({"id": "c", "object": "chat.completion.chunk", "created": 0,
                              "model": "m", "choices": [{"index": 0, "delta": delta,
                                                         "finish_reason": finish}]}))
            return time.monotonic()

        for token, completes in tokens_of(SENTENCES):
            time.sleep(pace)
            sent = send({"content": token})
            if completes is not None:
                released.append(sent)
        time.sleep(pace)
        released.append(send({}, "stop"))
        event("[DONE]")  # at once, as a model server does: nothing slow in between
        sock.sendall(b"0\r\n\r\n")
        self.server.released[tag] = released  # the client waits for it (see `run_level`)


def serve_model(token_seconds, released, ready):
    """The model server's process (apart from the client, as a real one would be)."""
    model = ModelServer(token_seconds, released)
    ready.send(model.url)
    model.serve_forever(0.05)


def one_turn(url, index):
    """Post a voice turn; returns (caller's words, [arrival instant of each line])."""
    words = f"turn {index} where is my order"
    raw, headers = signed_request(SECRET, payload("voice", words, callId=new_call_id()))
    arrivals = []
    with requests.post(url, data=raw, headers=headers, stream=True, timeout=60) as response:
        response.raise_for_status()
        for line in iter_ndjson(response):
            arrivals.append((time.monotonic(), json.loads(line)))
    return words, arrivals


def direct_turn(model_url, index):
    """The same script read straight from the model server, as SSE: (tag, [arrival instant
    of each releasing chunk]), the harness's own share of the figures."""
    words = f"direct {index}"
    body = {"model": "m", "stream": True, "messages": [{"role": "user", "content": words}]}
    releasing = [i for i, (_, completes) in enumerate(tokens_of(SENTENCES))
                 if completes is not None]
    arrivals = []
    with requests.post(model_url + "/chat/completions", json=body, stream=True,
                       timeout=60) as response:
        for number, line in enumerate(iter_ndjson(response)):
            if line.startswith(b"data: {") and (number in releasing
                                                or b'"stop"' in line):
                arrivals.append((time.monotonic(), {"text": SENTENCES[len(arrivals)]}))
    return words, [(0.0, {}), *arrivals]


def run_level(url, released, concurrency, turns, turn=one_turn):
    """``turns`` turns, ``concurrency`` at a time; added latency of every sentence (ms) and
    the count of turns whose lines were not the scripted ones."""
    with ThreadPoolExecutor(concurrency) as pool:
        results = list(pool.map(lambda i: turn(url, i), range(turns)))
    wanted = {words for words, _ in results}
    until = time.monotonic() + 5
    while not wanted <= set(released.keys()) and time.monotonic() < until:
        time.sleep(0.01)  # the model server notes a script's instants after its last byte
    added, wrong, released_at = [], 0, dict(released)
    for words, arrivals in results:
        texts = [obj.get("text") for _, obj in arrivals[1:]]
        released = released_at.get(words)
        if texts != SENTENCES or released is None or len(released) != len(SENTENCES):
            wrong += 1
            continue
        added += [(at - sent) * 1000 for (at, _), sent in zip(arrivals[1:], released,
                                                              strict=True)]
    return sorted(added), wrong


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--concurrency", type=int, nargs="+", default=[1, 10, 50])
    parser.add_argument("--turns", type=int, default=100, help="turns per level")
    parser.add_argument("--token-ms", type=float, default=20.0, help="model pace per token")
    add_common_options(parser)
    args = parser.parse_args()

    manager = multiprocessing.Manager()
    released = manager.dict()
    ready, child_end = multiprocessing.Pipe()
    model = multiprocessing.Process(target=serve_model, daemon=True,
                                    args=(args.token_ms / 1000, released, child_end))
    model.start()
    model_url = ready.recv()
    env = server_env(args, LLM_BASE_URL=model_url, LLM_API_KEY="bench", LLM_MODEL="scripted",
                     VOICE_TIMEOUT="60")
    rows = []
    try:
        with source_tree(args.rev) as cwd, gunicorn(1, env, args.database_url, cwd=cwd) as server:
            url = server.url + "/webhook"
            run_level(url, released, 4, 8)  # warm-up: imports, connections, the first queries
            print(f"{'path':>6} {'concurrent':>10} {'turns':>6} {'sentences':>9} {'p50 ms':>7} "
                  f"{'p99 ms':>7} {'max ms':>7} {'wrong':>5}")
            for level in args.concurrency:
                for path, target, turn in (("direct", model_url, direct_turn),
                                           ("agent", url, one_turn)):
                    added, wrong = run_level(target, released, level, args.turns, turn)
                    row = {"path": path, "concurrency": level, "turns": args.turns,
                           "sentences": len(added), "p50_ms": percentile(added, 50),
                           "p99_ms": percentile(added, 99),
                           "max_ms": added[-1] if added else None, "wrong_turns": wrong}
                    rows.append(row)
                    print(f"{path:>6} {level:>10} {args.turns:>6} {len(added):>9} "
                          f"{fmt(row['p50_ms']):>7} {fmt(row['p99_ms']):>7} "
                          f"{fmt(row['max_ms']):>7} {wrong:>5}")
    finally:
        model.terminate()
        model.join(5)
        manager.shutdown()
    write_results(args, describe_source(args.rev), rows, {}, token_ms=args.token_ms)


if __name__ == "__main__":
    main()
