"""gunicorn's gevent worker with connection hygiene: a read deadline per request and a
connection cap answered with 503; a descriptor table sized for the cap at boot; and connection
greenlets that run the handler directly.

gunicorn bounds nothing but the wait for the next request on a kept-alive connection, so a
client sending headers or a body a byte at a time, or never finishing a body, would hold a
connection for as long as it liked; and once ``worker_connections`` are open, gevent stops
accepting, so new clients queue unanswered. Here every request must arrive (request line,
headers and body) within REQUEST_READ_TIMEOUT seconds of its first byte (of the accept, for a
connection's first request), or the connection is dropped; and a connection arriving when
``worker_connections`` are already open is answered 503 at once.
"""

import contextlib
import errno
import fcntl
import functools
import logging
import os
import re
import resource
import socket
import time
import traceback
from collections.abc import Callable
from typing import Any

from gevent.server import StreamServer
from gunicorn import glogging, util
from gunicorn.workers import ggevent
from gunicorn.workers.ggevent import GeventWorker

from app import logs

log = logging.getLogger("gunicorn.error")

# Extra greenlets that only answer 503 and close, so refusing never waits for a free slot.
REFUSAL_SLOTS = 1000
# Descriptors a worker holds besides its connections: listeners, store, logs, pipes.
OTHER_DESCRIPTORS = 256
REFUSAL_SECONDS = 1.0
_BUSY_BODY = (b'{"error": {"code": "SERVER_BUSY", '
              b'"message": "Too many open connections, retry later"}}')
BUSY_RESPONSE = (
    b"HTTP/1.1 503 Service Unavailable\r\nContent-Type: application/json\r\n"
    b"Retry-After: 1\r\nConnection: close\r\n"
    + f"Content-Length: {len(_BUSY_BODY)}\r\n\r\n".encode() + _BUSY_BODY
)


_HOLD = object()  # hold_head() was called: the next bytes sent are a response's head


class DeadlineSocket:
    """A client socket whose reads fail once the current request has taken ``limit`` seconds
    to arrive. The clock starts at once (a new connection owes its first request) and again
    at the first byte of each later request; `request_done` stops it while the response is
    written and the connection waits for the next request.

    After `hold_head`, the next bytes sent (gunicorn's status line and headers) wait for the
    bytes after them (the body's first) or for `request_done`, and go out in the same
    ``send``: one system call and one TCP segment fewer per response.

    While it waits for a next request, or for the first byte of its first, it is in ``idle``
    (a set the worker owns), so that a stopping worker can end the wait (`stop_waiting`)."""

    __slots__ = ("_conn", "_deadline", "_expired", "_fresh", "_held", "_idle", "_limit",
                 "_peer", "_timeout")

    def __init__(self, sock, limit, peer, idle=None):
        self._conn = sock
        self._limit = limit
        self._peer = peer
        self._idle = set() if idle is None else idle
        self._deadline = time.monotonic() + limit
        self._expired = False
        self._fresh = True  # nothing read yet
        self._held = None
        self._timeout = sock.gettimeout()

    def hold_head(self):
        """Keep the next bytes sent until more follow (see the class)."""
        self._held = _HOLD

    def sendall(self, data, *flags):
        held = self._held
        if held is _HOLD:
            if data[9:10] != b"1":  # an informational 1xx goes at once
                self._held = data
                return None
        elif held is not None:
            self._held = None
            data = held + data
        return self._conn.sendall(data, *flags)

    def recv(self, size, *flags):
        if self._deadline is None:  # between requests: the next one starts with its first byte
            self._idle.add(self)
            try:
                data = self._conn.recv(size, *flags)
            finally:
                self._idle.discard(self)
            self._deadline = time.monotonic() + self._limit
            return data
        remaining = self._deadline - time.monotonic()
        if remaining <= 0 or self._expired:
            self._expire()
        wait = remaining if self._timeout is None else min(self._timeout, remaining)
        self._conn.settimeout(wait)
        fresh = self._fresh
        if fresh:  # a connection that has sent nothing holds no request a stop would cut
            self._idle.add(self)
        try:
            data = self._conn.recv(size, *flags)
            self._fresh = False
            return data
        except TimeoutError:
            if time.monotonic() < self._deadline:
                raise  # the caller's own, shorter timeout
            self._expire()
        finally:
            if fresh:
                self._idle.discard(self)
            self._conn.settimeout(self._timeout)

    def _expire(self):
        if not self._expired:
            self._expired = True
            log.info("dropped %s: request not received within %g s", self._peer, self._limit)
            with contextlib.suppress(OSError):
                self._conn.shutdown(socket.SHUT_RDWR)
        # A reset to gunicorn (closes quietly) and to Werkzeug (a disconnected client).
        raise ConnectionResetError(errno.ECONNRESET, "request read deadline passed")

    def sendfile(self, file, offset=0, count=None):
        self._release()
        return self._conn.sendfile(file, offset, count)

    def send(self, data, *flags):
        self._release()
        return self._conn.send(data, *flags)

    def _release(self):
        held, self._held = self._held, None
        if held is not None and held is not _HOLD:
            # gunicorn may have closed the connection already (an error after the head).
            with contextlib.suppress(OSError):
                self._conn.sendall(held)

    def stop_waiting(self):
        """End the wait for a next request: it reads as the client's end of the connection."""
        # The OS socket's: gevent's own shutdown cancels the waiting read with EBADF, which
        # gunicorn logs as an error with a traceback (and with TLS drops the SSL object).
        with contextlib.suppress(OSError):
            getattr(self._conn, "_sock", self._conn).shutdown(socket.SHUT_RD)

    def drop_head(self):
        """Forget a held head: the response failed before any of its body was sent."""
        self._held = None

    def request_done(self):
        """The request has been handled: what is held is sent, and the next request gets a
        deadline of its own."""
        self._deadline = None
        self._release()

    def settimeout(self, timeout):
        self._timeout = timeout
        self._conn.settimeout(timeout)

    def setblocking(self, flag):
        self.settimeout(None if flag else 0.0)

    def gettimeout(self):
        return self._timeout

    def __getattr__(self, name):
        return getattr(self._conn, name)


class _DirectServer(StreamServer):
    """gevent's StreamServer, whose connection greenlets run the handler itself.

    gevent's own spawns a helper that calls ``handle(*args)``: one more interpreter level on
    every connection's C stack, which a held voice stream's greenlet saves at each switch.
    ``HygienicGeventWorker.handle`` closes the connection instead. gunicorn always gives it a
    pool to spawn in."""

    def do_handle(self, *args):
        try:
            self._spawn(self._handle, *args)
        except BaseException:
            self.do_close(*args)
            raise


# gunicorn's gevent worker makes its server from this name (there is no setting for it).
ggevent.StreamServer = _DirectServer  # type: ignore[attr-defined]


class HygienicGeventWorker(GeventWorker):
    """The gevent worker, with DeadlineSocket connections and a 503 past the cap."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.read_timeout = None  # from the app's config, once it is loaded
        self.connection_cap = self.worker_connections
        self.worker_connections += REFUSAL_SLOTS  # the accept pool: served plus refused
        self.open_connections = 0
        self.idle_connections = set()  # DeadlineSockets waiting for a (next) request

    def init_process(self):
        reserve_descriptors(self.worker_connections + OTHER_DESCRIPTORS)
        super().init_process()

    def load_wsgi(self):
        super().load_wsgi()
        self.read_timeout = self.wsgi.config["REQUEST_READ_TIMEOUT"]

    def handle(self, listener, client, addr):
        try:
            if self.open_connections >= self.connection_cap:
                self.refuse(client)
                return
            self.open_connections += 1
            if self.open_connections == self.connection_cap:
                self.log.warning("%d connections open: answering 503 to new ones",
                                 self.connection_cap)
            try:
                super().handle(listener, DeadlineSocket(client, self.read_timeout, addr,
                                                        self.idle_connections), addr)
            finally:
                self.open_connections -= 1
        finally:
            client.close()  # usually closed already; not if something failed first

    def handle_request(self, listener_name, req, sock, addr):
        sock.hold_head()
        try:
            return super().handle_request(listener_name, req, sock, addr)
        except StopIteration:  # gunicorn's "close the connection", after a response too
            raise
        except BaseException:
            sock.drop_head()  # gunicorn's error handling answers, or closes, as it sees fit
            raise
        finally:
            sock.request_done()

    def notify(self):
        """gunicorn's heartbeat, every second, also while a stopping worker waits for its
        connections: once it stops, connections idle between requests are ended, so that a
        client's kept-alive connection (or one that sent nothing yet) does not hold the stop
        for ``graceful_timeout``."""
        super().notify()
        if not self.alive:
            for conn in list(self.idle_connections):
                conn.stop_waiting()

    def refuse(self, client):
        """Answer 503 without reading the request, then close without a reset."""
        try:
            client.settimeout(REFUSAL_SECONDS)
            client.sendall(BUSY_RESPONSE)
        except OSError:
            util.close(client)
            return
        util.close_graceful(client, timeout=REFUSAL_SECONDS)


def reserve_descriptors(count: int) -> None:
    """Grow this process's descriptor table to ``count`` entries (at most the open-files
    limit); call it while the process has a single thread.

    Linux grows the table to the next power of two when a new descriptor does not fit, and
    in a process with threads it first waits out an RCU grace period, inside the ``accept``
    that needed the room: 11-17 ms here, with the whole worker stopped, at 64, 128, 256 and
    512 open connections. A table that is large from the start never grows again.
    """
    soft, _ = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY:
        count = min(count, soft)
    base = os.open(os.devnull, os.O_RDONLY | os.O_CLOEXEC)
    try:
        # F_DUPFD takes the lowest free descriptor at or above its argument: none is replaced.
        os.close(fcntl.fcntl(base, fcntl.F_DUPFD_CLOEXEC, count - 1))
    except OSError as exc:
        log.warning("could not reserve %d file descriptors: %s", count, exc)
    finally:
        os.close(base)


class AppLogger(glogging.Logger):
    """gunicorn's logger, writing access lines only when an access log is configured: with a
    ``logconfig_dict`` gunicorn would build and write every line even with none
    (``GUNICORN_ACCESS_LOG=""``). Each line makes only the atoms its format reads: gunicorn
    makes and escapes an atom of every header and environ key, for every request (~80 µs);
    and it goes straight to the app's handler (`logs.info`)."""

    _writes_access = False
    _format = ""

    def setup(self, cfg):
        super().setup(cfg)
        # Read once: each read of a gunicorn setting is a lookup through its Config.
        self._writes_access = bool(cfg.accesslog)
        self._format = cfg.access_log_format

    def access(self, resp, req, environ, request_time):
        if not self._writes_access:
            return
        try:
            logs.info(self.access_log,
                      _line_maker(self._format)(self, resp, req, environ, request_time))
        except Exception:
            self.error(traceback.format_exc())

    def access_line(self, resp, req, environ, request_time) -> str:
        """The line gunicorn's own ``access`` would write for this request."""
        return _line_maker(self.cfg.access_log_format)(self, resp, req, environ, request_time)


def _status(resp, environ, took, *_):
    status = resp.status
    return status.split(None, 1)[0] if isinstance(status, str) else status


def _sent(resp, environ, took, *_):
    return (getattr(resp, "sent", None) is not None and str(resp.sent)) or "-"


# The atoms of gunicorn's ``Logger.atoms`` that need only the response, the environ and the
# request time, made as it makes them (tests/test_logging.py compares the two). Every atom
# maker takes (resp, environ, took, req, logger, made): called directly, with no wrapper.
_SIMPLE_ATOMS = {
    "h": lambda resp, environ, took, *_: environ.get("REMOTE_ADDR", "-"),
    "l": lambda resp, environ, took, *_: "-",
    "r": lambda resp, environ, took, *_: (
        f"{environ['REQUEST_METHOD']} {environ['RAW_URI']} {environ['SERVER_PROTOCOL']}"),
    "s": _status,
    "m": lambda resp, environ, took, *_: environ.get("REQUEST_METHOD"),
    "U": lambda resp, environ, took, *_: environ.get("PATH_INFO"),
    "q": lambda resp, environ, took, *_: environ.get("QUERY_STRING"),
    "H": lambda resp, environ, took, *_: environ.get("SERVER_PROTOCOL"),
    "b": _sent,
    "B": lambda resp, environ, took, *_: getattr(resp, "sent", None),
    "f": lambda resp, environ, took, *_: environ.get("HTTP_REFERER", "-"),
    "a": lambda resp, environ, took, *_: environ.get("HTTP_USER_AGENT", "-"),
    "T": lambda resp, environ, took, *_: took.seconds,
    "D": lambda resp, environ, took, *_: took.seconds * 1000000 + took.microseconds,
    "M": lambda resp, environ, took, *_: took.seconds * 1000 + int(took.microseconds / 1000),
    "L": lambda resp, environ, took, *_: f"{took.seconds:d}.{took.microseconds:06d}",
}


@functools.lru_cache(maxsize=8)
def _line_maker(fmt: str) -> Callable[..., str]:
    """A function of (logger, resp, req, environ, request_time) making ``fmt``'s line with
    gunicorn's atoms as its ``SafeAtoms`` presents them (quotes escaped, "-" for unknown
    names): only the atoms ``fmt`` reads, each on its own where it can be (a request header,
    an atom of the response, environ and time), else from gunicorn's full set, made once."""
    makers = [(name, _atom_maker(name.lower() if name.startswith("{") else name))
              for name in dict.fromkeys(re.findall(r"%\(([^)]*)\)", fmt))]

    def line(logger, resp, req, environ, took):
        made: list[dict] = []  # gunicorn's full set, when an atom needs it
        values = {}
        for name, make in makers:
            value = make(resp, environ, took, req, logger, made)
            values[name] = value.replace('"', '\\"') if isinstance(value, str) else value
        return fmt % values

    return line


def _atom_maker(name: str) -> Callable[..., Any]:
    simple = _SIMPLE_ATOMS.get(name)
    if simple is not None:
        return simple
    if name.startswith("{") and name.endswith("}i"):
        header, size = name[1:-2], len(name) - 3

        def request_header(resp, environ, took, req, *_):
            headers = req.headers if hasattr(req, "headers") else req
            value = "-"
            for key, given in headers.items() if hasattr(headers, "items") else headers:
                if len(key) == size and key.lower() == header:
                    value = given  # the last of repeated headers, as in gunicorn's dict
            return value

        return request_header

    def from_full_set(resp, environ, took, req, logger, made):
        if not made:
            made.append(glogging.Logger.atoms(logger, resp, req, environ, took))
        return made[0].get(name, "-")

    return from_full_set
