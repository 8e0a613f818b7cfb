"""Noticing a caller who hung up while the agent is still working."""

import select
import socket

try:
    from gevent.monkey import get_original

    # The unpatched select: it is called from gevent's hub, where the patched one may not run.
    _select = get_original("select", "select")
except ImportError:
    _select = select.select


def caller_socket(environ):
    """The client connection, where the server exposes it (gunicorn, Werkzeug's dev server)."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def peer_closed(sock):
    """True when the client has closed its end: readable, with nothing to read. Never blocks."""
    try:
        if not _select([sock.fileno()], [], [], 0)[0]:
            return False
        # gevent's socket object would wait on EAGAIN; peek on the real one underneath.
        raw = getattr(sock, "_sock", sock)
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
