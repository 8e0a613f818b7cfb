"""Watching a gevent worker's event loop for blocks.

Code that runs without yielding (CPU-heavy work, a wait in C) stops every call the worker
holds. gevent's monitor thread notices a loop that has not switched greenlets for longer than
LOOP_BLOCK_THRESHOLD; each such block is counted and logged with the stack that blocked.
"""

import logging
import time
import warnings

from app.metrics import LOOP_BLOCKS

log = logging.getLogger(__name__)

_blocks = 0
_hub = None  # the watched loop's hub
_in_block = False  # reported, and the loop has not run since
_ended = float("-inf")  # when the loop last ran again after a block (monotonic)


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

    global _hub
    _hub = gevent.get_hub()
    gevent.config.max_blocking_time = threshold
    gevent.config.print_blocking_reports = False  # logged through logging instead, below
    events.subscribers.append(_on_event)
    gevent.config.monitor_thread = True
    try:
        with warnings.catch_warnings():
            # Memory monitoring would need psutil; only blocks are watched here.
            warnings.filterwarnings("ignore", message="Unable to monitor memory usage")
            return _hub.start_periodic_monitoring_thread() is not None
    finally:
        # Only this loop: the hubs of native threads (the SQLite store's) run no greenlets.
        gevent.config.monitor_thread = False


def _on_event(event):
    from gevent.events import EventLoopBlocked

    if not isinstance(event, EventLoopBlocked) or event.hub is not _hub:
        return
    global _blocks, _in_block
    # The monitor reports a long block once per period, and a report it began while the
    # loop was blocked may arrive just after the loop ran again.
    if _in_block or time.monotonic() - _ended < 2 * event.blocking_time:
        return
    _in_block = True
    _blocks += 1  # only the monitor thread writes it
    # This runs in the monitor thread: the loop writes the line and counts the block once it
    # is free, which also ends the block.
    threshold = event.blocking_time
    event.hub.loop.run_callback_threadsafe(_report, time.monotonic() - threshold, threshold,
                                           event.info)


def _report(started, threshold, info):
    global _in_block, _ended
    _in_block, _ended = False, time.monotonic()
    LOOP_BLOCKS.inc()
    log.warning("event loop blocked for at least %.3fs (threshold %.3fs), block #%d in this "
                "process; blocking stack:\n%s", time.monotonic() - started, threshold, _blocks,
                "\n".join(info))
