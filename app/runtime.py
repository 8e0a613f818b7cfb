"""The concurrency runtime: background tasks under gunicorn's gevent worker or plain threads.

Under gevent (monkey-patched) a task is a greenlet and can be killed; under plain threads it
is a daemon thread, stopped by raising Cancelled in it (at its next Python instruction: a
wait inside C, such as a blocking read, finishes first).
"""

import collections
import ctypes
import os
import threading
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Generic, TypeVar

if TYPE_CHECKING:
    from gevent import Greenlet

T = TypeVar("T")


_pid = [os.getpid()]
os.register_at_fork(after_in_child=lambda: _pid.__setitem__(0, os.getpid()))


def current_pid() -> int:
    """This process's id, as ``os.getpid()``, kept up to date at fork instead of asked of the
    kernel (a system call) each time: per-process state checks it on every delivery."""
    return _pid[0]


class ProcessThread:
    """A native thread (never a greenlet, even under gevent) running ``target``, started by
    `ensure` once in each process: threads do not cross a fork."""

    def __init__(self, target: Callable[[], None]) -> None:
        self._target = target
        self._pid = 0

    def ensure(self) -> bool:
        """Start the thread unless this process has it; False if no thread can be started."""
        if self._pid != current_pid():
            from gevent.monkey import get_original

            try:
                get_original("_thread", "start_new_thread")(self._target, ())
            except RuntimeError:
                return False
            self._pid = current_pid()
        return True


class Cancelled(BaseException):
    """Raised inside a cancelled thread (BaseException: `except Exception` does not stop it)."""


def gevent_active() -> bool:
    """Whether threading is monkey-patched by gevent (tasks are greenlets then)."""
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


class Task(Generic[T]):
    """A function running concurrently; `cancel()` stops it as soon as the runtime allows.

    Once `done` is set, `value` is what the function returned, or `error` what it raised.
    """

    def __init__(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> None:
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.value: T | None = None
        self.error: Exception | None = None
        self._fn, self._args, self._kwargs = fn, args, kwargs
        self._greenlet: Greenlet[[], None] | None
        if gevent_active():
            import gevent

            self._greenlet = gevent.spawn(self._main)
        else:
            self._greenlet = None
            self._ended = False
            self._lock = threading.Lock()
            self._thread = threading.Thread(target=self._main, daemon=True)
            self._thread.start()

    def _main(self):
        try:
            try:
                self.value = self._fn(*self._args, **self._kwargs)
            except Exception as exc:
                self.error = exc
            self._end()
        except Cancelled:
            self._end()  # raised once at most and never after _end(): nothing else can come
        finally:
            self.done.set()

    def _end(self):
        if self._greenlet is None:
            with self._lock:
                self._ended = True

    def join(self, timeout: float | None = None) -> bool:
        """Wait for the result; True when the task finished in time."""
        return self.done.wait(timeout)

    def cancel(self) -> None:
        """Stop the task: a greenlet is killed, a thread gets Cancelled raised in it."""
        if self._greenlet is not None:
            self.cancelled.set()
            if not self.done.is_set():
                # kill raises GreenletExit inside the task; block=False: never wait on a stuck
                # tool.
                self._greenlet.kill(block=False)
            return
        with self._lock:
            # Once at most, and never after the function returned (it would hit whatever the
            # thread runs next).
            if not (self._ended or self.cancelled.is_set()):
                ident = self._thread.ident
                assert ident is not None  # started in __init__
                ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(ident),
                                                           ctypes.py_object(Cancelled))
            self.cancelled.set()


def spawn(fn: Callable[..., T], *args: Any, **kwargs: Any) -> Task[T]:
    """Run ``fn(*args, **kwargs)`` concurrently; the Task holds its outcome."""
    return Task(fn, *args, **kwargs)


def yield_to_waiting(limit: float) -> None:
    """Under gevent, let the worker first serve what is waiting (a connection to accept, a
    request to read, a line to write), and go on when nothing is, or after about ``limit``
    seconds at most; return at once otherwise.

    Callers resume one per pass of the event loop, so that many released together never run
    back to back ahead of a request that has just arrived."""
    if not gevent_active():
        return
    waiting = _queue[0]
    if waiting is None or waiting.pid != current_pid():
        waiting = _queue[0] = _Waiting()
    waiting.wait(limit)


class _Waiting:
    """The greenlets in ``yield_to_waiting``, oldest first, and the two watchers that resume
    them: libev's idle watcher (nothing else pending) and a timer for those past their limit."""

    def __init__(self) -> None:
        from gevent import get_hub

        loop = get_hub().loop
        self.pid = current_pid()
        self.waiting: collections.deque = collections.deque()  # (resume by, Waiter)
        self.loop = loop
        self.idle = loop.idle()
        self.timer: Any = None
        self.check = 0.0

    def wait(self, limit: float) -> None:
        from gevent.hub import Waiter

        waiter: Waiter[None] = Waiter()
        if not self.waiting:
            self.idle.start(self._resume_one)
            # Overdue waiters are looked for four times per limit: none waits 1.25 x longer.
            if self.timer is None or self.check != limit / 4:
                self.check = limit / 4
                self.timer = self.loop.timer(self.check, self.check)
            self.timer.start(self._resume_overdue)
        self.waiting.append((time.monotonic() + limit, waiter))
        waiter.get()

    def _resume_overdue(self) -> None:
        now = time.monotonic()
        while self.waiting and self.waiting[0][0] <= now:
            self._resume_one()

    def _resume_one(self) -> None:
        if not self.waiting:  # resumed by the timer in the same pass of the loop
            return
        _, waiter = self.waiting.popleft()
        if not self.waiting:
            self.idle.stop()
            self.timer.stop()
        waiter.switch(None)


_queue: list[_Waiting | None] = [None]  # this process's; made again after a fork
