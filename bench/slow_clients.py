"""Signed deliveries served while slow and partial-body clients hold connections (1 worker).

N attackers connect at once: half send headers and one byte of a 100 kB body, half drip their
headers one byte every 0.25 s. Meanwhile one signed SMS delivery is posted every 0.1 s for
``--duration`` seconds; its latency is recorded. Also: how long until the server has closed
every attacker (the read deadline), and how many were still open at the end.
"""

import argparse
import contextlib
import socket
import statistics
import threading
import time

import requests
from _server import SECRET, gunicorn, raise_fd_limit, source_tree

from app.simulator import payload, signed_request

PARTIAL = (b"POST /webhook HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
           b"Content-Length: 100000\r\n\r\n{")
DRIP = b"POST /webhook HTTP/1.1\r\nHost: x\r\nX-Slow: " + b"a" * 4000


def attack(port, count):
    partial, dripping = [], []
    for i in range(count):
        sock = socket.create_connection(("127.0.0.1", port), timeout=5)
        if i % 2:
            sock.sendall(PARTIAL)
            partial.append(sock)
        else:
            dripping.append(sock)
    return partial, dripping


def drip(socks, stop):
    sent = 0
    while not stop.wait(0.25) and sent < len(DRIP):
        for sock in socks:
            with contextlib.suppress(OSError):
                sock.send(DRIP[sent:sent + 1])
        sent += 1


def watch_closed(socks, closed_at, started, stop):
    """Record, per socket, when the server closed it (EOF or reset), until ``stop``."""
    for sock in socks:
        sock.setblocking(False)
    pending = set(socks)
    while pending and not stop.is_set():
        for sock in list(pending):
            try:
                if sock.recv(65536) == b"":
                    raise ConnectionResetError
            except BlockingIOError:
                continue
            except OSError:
                closed_at.append(time.monotonic() - started)
                pending.discard(sock)
        time.sleep(0.05)


def run(args):
    latencies, statuses, closed_at = [], [], []
    with gunicorn(1, {"LOG_LEVEL": "WARNING", "GUNICORN_ACCESS_LOG": ""}, cwd=args.tree) as srv:
        url = f"http://127.0.0.1:{srv.port}/webhook"
        partial, dripping = attack(srv.port, args.clients)
        started = time.monotonic()
        stop = threading.Event()
        threads = [threading.Thread(target=drip, args=(dripping, stop), daemon=True),
                   threading.Thread(target=watch_closed, args=(partial + dripping, closed_at,
                                                               started, stop), daemon=True)]
        for thread in threads:
            thread.start()
        while time.monotonic() - started < args.duration:
            raw, headers = signed_request(SECRET, payload("sms", "hello"))
            t0 = time.monotonic()
            try:
                statuses.append(requests.post(url, data=raw, headers=headers,
                                              timeout=10).status_code)
                latencies.append(time.monotonic() - t0)
            except requests.RequestException:
                statuses.append("error")
            time.sleep(0.1)
        stop.set()
        for thread in threads:
            thread.join(5)
        for sock in partial + dripping:
            sock.close()
    ok = sorted(latencies)
    p99 = ok[min(len(ok) - 1, int(len(ok) * 0.99))] if ok else float("nan")
    print(f"attackers {args.clients}, deliveries {len(statuses)}: "
          f"{statuses.count(200)} x 200, others {[s for s in statuses if s != 200][:5]}")
    if ok:
        print(f"delivery latency ms: median {statistics.median(ok) * 1000:.1f}  "
              f"p99 {p99 * 1000:.1f}  max {ok[-1] * 1000:.1f}")
    dropped = sorted(closed_at)
    print(f"attackers closed by the server: {len(dropped)} of {args.clients}"
          + (f", last at {dropped[-1]:.1f} s" if dropped else ""))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--clients", type=int, default=400, help="slow clients (half each kind)")
    parser.add_argument("--duration", type=float, default=15, help="seconds of deliveries")
    parser.add_argument("--rev", help="serve this git revision (or a directory) instead")
    args = parser.parse_args()
    raise_fd_limit(args.clients * 2 + 256)
    with source_tree(args.rev) as args.tree:
        run(args)


if __name__ == "__main__":
    main()
