"""Background tasks that work under both gunicorn's gevent worker and the threaded dev server.

Under gevent (monkey-patched) a task is a greenlet and can be killed; under plain threads it
is a daemon thread, stopped by raising Cancelled in it (at its next Python instruction: a
wait inside C, such as a blocking read, finishes first).
"""

import ctypes
import threading


class Cancelled(BaseException):
    """Raised inside a cancelled thread (BaseException: `except Exception` does not stop it)."""


def gevent_active():
    try:
        from gevent import monkey
    except ImportError:
        return False
    return monkey.is_module_patched("threading")


class Task:
    """A function running concurrently; `cancel()` stops it as soon as the runtime allows."""

    def __init__(self, fn, *args, **kwargs):
        self.cancelled = threading.Event()
        self.done = threading.Event()
        self.value = None
        self.error = None
        self._fn, self._args, self._kwargs = fn, args, kwargs
        if gevent_active():
            import gevent

            self._greenlet = gevent.spawn(self._main)
        else:
            self._greenlet = None
            self._thread = threading.Thread(target=self._main, daemon=True)
            self._thread.start()

    def _main(self):
        try:
            self.value = self._fn(*self._args, **self._kwargs)
        except Cancelled:
            pass
        except Exception as exc:
            self.error = exc
        finally:
            self.done.set()

    def join(self, timeout=None):
        """Wait for the result; True when the task finished in time."""
        return self.done.wait(timeout)

    def cancel(self):
        self.cancelled.set()
        if self.done.is_set():
            return
        if self._greenlet is not None:
            # kill raises GreenletExit inside the task; block=False: never wait on a stuck tool.
            self._greenlet.kill(block=False)
        else:
            ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(self._thread.ident),
                                                       ctypes.py_object(Cancelled))


def spawn(fn, *args, **kwargs):
    return Task(fn, *args, **kwargs)
