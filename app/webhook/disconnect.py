"""Noticing a caller who hung up while the agent is still working."""

import select
import socket


def peer_closed_check(environ):
    """A function telling whether the client closed its connection, when the server exposes
    the socket (gunicorn does); otherwise disconnects surface on the next write."""
    sock = environ.get("gunicorn.socket")
    if sock is None:
        return None

    def peer_closed():
        try:
            # Readable with nothing to peek at means EOF. A zero timeout never blocks, also
            # under gevent, where the socket's own recv would wait instead of failing.
            readable, _, _ = select.select([sock], [], [], 0)
            return bool(readable) and sock.recv(1, socket.MSG_PEEK) == b""
        except (OSError, ValueError):
            return True

    return peer_closed
