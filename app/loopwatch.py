"""Watching a gevent worker's event loop for blocks.

Code that runs without yielding (CPU-heavy work, a wait in C) stops every call the worker
holds. gevent's monitor thread notices a loop that has not switched greenlets for longer than
LOOP_BLOCK_THRESHOLD; each such block is counted and logged with the stack that blocked.
"""

import logging
import warnings

log = logging.getLogger(__name__)

_blocks = 0


def blocked_count() -> int:
    """How many blocks of this process's event loop have been seen since it started."""
    return _blocks


def start(threshold: float) -> bool:
    """Watch this process's gevent loop (call it in each worker, after the fork); a threshold
    of 0 turns the watch off. True when the monitor thread runs."""
    if threshold <= 0:
        return False
    import gevent
    from gevent import events

    gevent.config.max_blocking_time = threshold
    gevent.config.monitor_thread = True
    gevent.config.print_blocking_reports = False  # logged through logging instead, below
    events.subscribers.append(_on_event)
    with warnings.catch_warnings():
        # Memory monitoring would need psutil; only blocks are watched here.
        warnings.filterwarnings("ignore", message="Unable to monitor memory usage")
        return gevent.get_hub().start_periodic_monitoring_thread() is not None


def _on_event(event):
    from gevent.events import EventLoopBlocked

    if not isinstance(event, EventLoopBlocked):
        return
    global _blocks
    _blocks += 1  # only the monitor thread writes it
    # This runs in the monitor thread: the log line is written by the loop once it is free,
    # since logging's locks are greenlet locks under gevent.
    event.hub.loop.run_callback_threadsafe(_report, event.blocking_time, event.info)


def _report(threshold, info):
    log.warning("event loop blocked for more than %.3fs (%d blocks so far); blocking stack:\n%s",
                threshold, _blocks, "\n".join(info))
