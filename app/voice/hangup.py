"""Noticing a caller who hung up while the agent is still working."""

import select
import socket
from collections.abc import Mapping
from typing import Any

try:
    from gevent.monkey import get_original

    # The unpatched calls: they are made from gevent's hub, where the patched ones may not run.
    # gevent also takes a list of names; its stubs know only one name.
    _select, _poll = get_original("select", ["select", "poll"])  # type: ignore[arg-type]
except ImportError:
    _select, _poll = select.select, getattr(select, "poll", None)

if hasattr(select, "POLLRDHUP"):
    # Linux reports the caller's FIN even behind bytes not read yet (a pipelined request).
    _CLOSED = select.POLLRDHUP | select.POLLHUP | select.POLLERR | select.POLLNVAL
else:
    _CLOSED = 0  # elsewhere a peek sees the FIN only once the bytes before it are read


def caller_socket(environ: Mapping[str, Any]) -> socket.socket | None:
    """The client connection, where the server exposes it (gunicorn, Werkzeug's dev server)."""
    return environ.get("gunicorn.socket") or environ.get("werkzeug.socket")


def peer_closed(sock):
    """True when the client has closed its end, even if it sent bytes we have not read (they
    are left for the server). Never blocks."""
    try:
        if _CLOSED:
            poller = _poll()
            poller.register(sock.fileno(), _CLOSED)
            return any(mask & _CLOSED for _, mask in poller.poll(0))
        if not _select([sock.fileno()], [], [], 0)[0]:
            return False
        # gevent's socket object would wait on EAGAIN; peek on the real one underneath.
        raw = getattr(sock, "_sock", sock)
        return raw.recv(1, socket.MSG_PEEK | socket.MSG_DONTWAIT) == b""
    except BlockingIOError:
        return False
    except (OSError, ValueError):
        return True
