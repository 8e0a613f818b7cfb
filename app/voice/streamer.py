"""Streams one voice turn as NDJSON: an interim line at once, the agent's sentences as they
come, a filler line after each long silence, then exactly one final line before the deadline,
whatever the agent does."""

import contextlib
import dataclasses
import enum
import logging
import queue
import socket
import time
from collections.abc import Callable, Iterator, Mapping
from typing import Any

from app.agent.base import Agent, Reply, Turn
from app.metrics import FINAL_LINE, FIRST_LINE, IN_FLIGHT, VOICE_OUTCOMES
from app.runtime import gevent_active, spawn, yield_to_waiting
from app.voice.hangup import peer_closed
from app.voice.ndjson import WRITE_KEY, interim, line

log = logging.getLogger(__name__)

LATE_TEXT = "Sorry, that is taking longer than it should. Could you say that again in a moment?"
ERROR_TEXT = "Sorry, something went wrong on my side. Could you say that again?"
POLL_SECONDS = 0.25
YIELD_LIMIT_SECONDS = 0.05  # the longest a turn lets newer callers' interim lines go first

#: ``report(outcome, first_line_seconds, final_line_seconds, final_text)``
Report = Callable[[str, float | None, float | None, str | None], object]
#: ``claim(until)``: the ``(agent, on_final)`` to run, or None (see ``stream_turn``)
Claimer = Callable[[float], "tuple[Agent, Callable[[dict[str, Any]], object] | None] | None"]


class _Kind(enum.Enum):
    """What a chunk source reports besides a chunk (kind None)."""

    WAIT = "wait"  # nothing yet; look at the deadline again
    LATE = "late"
    GONE = "gone"  # the caller hung up
    ENDED = "ended"  # the agent stopped without a final Reply
    FAILED = "failed"
    SILENT = "silent"  # the turn has said nothing for the filler interval


_WAIT, _LATE, _GONE, _ENDED, _FAILED, _SILENT = _Kind


def deadline_for(voice_timeout: float) -> float:
    """Seconds we allow a turn: the platform's timeout less a margin for network and TTS."""
    return max(voice_timeout - 5.0, voice_timeout * 0.8)


def stream_turn(agent: Agent, turn: Turn, deadline: float,
                on_final: Callable[[dict[str, Any]], object] | None = None,
                sock: socket.socket | None = None, clock: Callable[[], float] = time.monotonic,
                filler_after: float = 0.0, environ: Mapping[str, Any] | None = None,
                arrived: float | None = None, report: Report | None = None,
                claim: Claimer | None = None) -> Iterator[str]:
    """Yield the NDJSON lines of one turn. ``on_final(line_dict)`` records the final line;
    ``sock`` is the caller's connection, watched so that a hang-up cancels the work.

    After ``filler_after`` seconds in which nothing was said (the agent's ``filler_after``
    wins when set; 0 = never) the agent's ``filler`` line is spoken. Under gevent it is sent
    through the server's ``write`` in ``environ`` (see ``StreamResponse``) while the agent's
    work goes on.

    ``arrived`` (``clock()`` when the request came in) starts the latency figures, which
    ``report(outcome, first_line_seconds, final_line_seconds, final_text)`` receives at the
    end.

    ``claim(until)``, when given, is called after the interim line, so that a slow store never
    leaves the caller silent: it returns the ``(agent, on_final)`` to run, or None when the
    turn could not be claimed by ``until`` (monotonic); the caller then hears the fallback and
    no agent runs.
    """
    started = clock()
    turn = dataclasses.replace(turn, deadline=started + deadline)
    arrived = started if arrived is None else arrived
    source: Any = None  # an InlineSource or a PumpedSource once the agent runs
    final = first = None
    outcome = "answered"
    if agent.filler_after is not None:
        filler_after = agent.filler_after
    IN_FLIGHT.inc()
    try:
        yield interim(_acknowledgement(agent, turn))
        # The generator resumes once the server has handed that line to the socket.
        first = clock() - arrived
        FIRST_LINE.observe(first)
        # The rest waits while other callers' interim lines go out: theirs are the silence.
        yield_to_waiting(YIELD_LIMIT_SECONDS)
        if claim is not None:
            claimed = claim(started + deadline)
            if claimed is None:
                log.warning("voice turn %s: not claimed before the deadline, sending fallback",
                            turn.delivery_id)
                final, outcome = Reply(LATE_TEXT), "store_unavailable"
            else:
                agent, on_final = claimed
        if final is None and gevent_active():
            write = (environ or {}).get(WRITE_KEY)
            source = InlineSource(agent, turn, sock, filler_after if write else 0.0, write)
        elif final is None:
            source = PumpedSource(agent, turn, sock, filler_after)
        while final is None:
            remaining = started + deadline - clock()
            kind, chunk = source.next(remaining) if remaining > 0 else (_LATE, None)
            if kind is _WAIT:
                continue
            if kind is _SILENT:
                text = _filler(agent, turn, source.fillers)
                if text:
                    yield interim(text)
                continue
            if kind is _LATE:
                log.warning("voice turn %s: no reply after %.1fs, sending fallback",
                            turn.delivery_id, deadline)
                final, outcome = Reply(LATE_TEXT), "deadline"
            elif kind is _GONE:
                log.info("voice turn %s: caller disconnected, work cancelled", turn.delivery_id)
                return
            elif kind is _FAILED:
                log.error("voice turn %s: agent failed", turn.delivery_id, exc_info=chunk)
                final, outcome = Reply(ERROR_TEXT), "agent_error"
            elif kind is _ENDED:
                log.error("voice turn %s: agent ended without a final Reply", turn.delivery_id)
                final, outcome = Reply(ERROR_TEXT), "agent_error"
            elif isinstance(chunk, Reply):
                final = chunk
            elif isinstance(chunk, str) and chunk.strip():
                yield interim(chunk.strip())
    finally:
        if source is not None:
            source.close()
        if final is None:  # the caller hung up, or the connection closed under us
            # A reply is recorded anyway, so that a retry replays at once.
            _record(on_final, Reply(LATE_TEXT), turn)
            _ended(report, "hangup", first, None, None)
    # DEBUG: the access line that follows tells the delivery id and (about) the duration.
    log.debug("voice turn %s answered in %.0f ms", turn.delivery_id,
              (clock() - started) * 1000)
    done = None
    try:
        yield line(final.to_line())
        done = clock() - arrived
        FINAL_LINE.observe(done)
    finally:
        # Recorded once the line is out: the caller never waits on the store for it.
        _record(on_final, final, turn)
        _ended(report, outcome, first, done, final.text)


def _ended(report, outcome, first, final, text):
    IN_FLIGHT.dec()
    VOICE_OUTCOMES.labels(outcome).inc()
    if report is not None:
        report(outcome, first, final, text)


class InlineSource:
    """gevent: the agent runs in the request's own greenlet, interrupted by a timer at the
    deadline or by a watcher on the caller's socket (a poll every POLL_SECONDS once the caller
    has sent bytes that wait for the server). No second greenlet, task or queue per
    held call: those were most of a held stream's memory. For the same reason the timers and
    the watcher are made once per turn, not per chunk, and only interrupt the greenlet while
    it is inside the agent (never while it writes a line to the caller).

    A filler line cannot come out of this greenlet while it is inside the agent, so the
    silence timer has a short-lived greenlet send it with the server's ``write``; the
    request's greenlet waits for that write to finish before it sends anything itself."""

    __slots__ = ("_agent", "_chunks", "_ends", "_filler_after", "_greenlet", "_in_agent",
                 "_late", "_poller", "_quiet_until", "_sock", "_timer", "_turn", "_watcher",
                 "_write", "_writer", "fillers")

    def __init__(self, agent, turn, sock, filler_after=0.0, write=None):
        self._agent, self._turn = agent, turn
        self._chunks = agent.respond(turn)
        self._sock = sock
        self._filler_after, self._write = filler_after, write
        self._greenlet = self._timer = self._watcher = self._writer = self._poller = None
        self._ends = self._quiet_until = 0.0
        self._in_agent = self._late = False
        self.fillers = 0

    def next(self, timeout):
        if self._timer is None:
            self._start(timeout)
        if self._late:  # the timer went off while a line was being written
            return _LATE, None
        if self._watcher is not None:
            self._watcher.start(self._readable)
        self._in_agent = True
        try:
            chunk = next(self._chunks)
        except StopIteration:
            return _ENDED, None
        except _Interrupt as interrupt:
            return interrupt.kind, None
        except Exception as exc:
            return _FAILED, exc
        finally:
            self._in_agent = False
            if self._watcher is not None:
                self._watcher.stop()
            if self._poller is not None:
                self._poller.stop()
            if self._writer is not None:
                self._writer.join()  # a filler on its way goes out before anything else
        if self._filler_after > 0:  # the agent spoke: silence counts from now
            self._quiet_until = time.monotonic() + self._filler_after
            self._arm()
        return None, chunk

    def _start(self, timeout):
        import gevent

        self._greenlet = gevent.getcurrent()
        now = time.monotonic()
        self._ends = now + timeout  # what is left of the deadline, for the turn
        self._quiet_until = now + self._filler_after
        self._arm()
        if self._sock is not None:
            self._watcher = gevent.get_hub().loop.io(self._sock.fileno(), 1)

    def _arm(self):
        """(Re)start the turn's one timer: for the deadline, or for the next filler when that
        comes first (one timer rather than one each: a held call keeps its timers)."""
        import gevent

        if self._timer is not None:
            self._timer.close()
        now = time.monotonic()
        wait, then = self._ends - now, self._deadline
        if self._filler_after > 0 and self._quiet_until - now < wait:
            wait, then = self._quiet_until - now, self._silent
        self._timer = gevent.get_hub().loop.timer(max(wait, 0.0))
        self._timer.start(then)

    def _deadline(self):
        self._late = True
        if self._in_agent:
            self._greenlet.throw(_Interrupt(_LATE))

    def _silent(self):
        self._quiet_until += self._filler_after
        self._arm()  # the next filler, or the deadline
        # Outside the agent a line is being written: the silence is over anyway.
        if self._in_agent and self._writer is None:
            import gevent

            self._writer = gevent.spawn(self._say_filler)

    def _say_filler(self):
        """Runs in a greenlet of its own: the agent's filler() is its code, not the hub's."""
        try:
            if not self._in_agent:
                return  # the agent spoke meanwhile: the silence is over
            self.fillers += 1
            text = _filler(self._agent, self._turn, self.fillers)
            if text:
                with contextlib.suppress(OSError):  # a hang-up: the watcher ends the turn
                    self._write(interim(text).encode())
        finally:
            self._writer = None

    def _readable(self):
        # Level-triggered: bytes the caller sent ahead (a pipelined request), left for the
        # server, would wake it without end; watch by polling instead for the rest of the step.
        self._watcher.stop()
        if self._poller is None:
            import gevent

            self._poller = gevent.get_hub().loop.timer(POLL_SECONDS, POLL_SECONDS)
        self._poller.start(self._poll)
        self._poll()

    def _poll(self):
        if peer_closed(self._sock):
            self._poller.stop()
            self._greenlet.throw(_Interrupt(_GONE))

    def close(self):
        self._chunks.close()
        for watcher in (self._timer, self._watcher, self._poller):
            if watcher is not None:
                watcher.close()


class PumpedSource:
    """Threads (the dev server): a thread cannot be interrupted, so the agent runs in a task
    of its own and hands chunks over a queue; the socket is polled while waiting, and a
    silence longer than ``filler_after`` is reported as such."""

    def __init__(self, agent, turn, sock, filler_after=0.0):
        self._queue = queue.Queue()
        self._sock = sock
        self._filler_after = filler_after
        self._spoke = time.monotonic()
        self._task = spawn(_pump, agent, turn, self._queue)
        self.fillers = 0

    def next(self, timeout):
        if self._filler_after > 0:
            silent_for = time.monotonic() - self._spoke
            if silent_for >= self._filler_after:
                self._spoke = time.monotonic()
                self.fillers += 1
                return _SILENT, None
            timeout = min(timeout, self._filler_after - silent_for)
        try:
            item = self._queue.get(timeout=min(timeout, POLL_SECONDS))
        except queue.Empty:
            return (_GONE if self._sock is not None and peer_closed(self._sock) else _WAIT), None
        self._spoke = time.monotonic()
        return item

    def close(self):
        self._task.cancel()


class _Interrupt(BaseException):
    """Thrown into the agent's frames (BaseException: agents catching Exception don't stop
    it)."""

    def __init__(self, kind):
        super().__init__(kind)
        self.kind = kind


def _acknowledgement(agent, turn):
    try:
        return agent.acknowledge(turn)
    except Exception:
        log.exception("voice turn %s: acknowledge() failed", turn.delivery_id)
        return Agent.acknowledgement


def _filler(agent, turn, count):
    try:
        return agent.filler(turn, count)
    except Exception:
        log.exception("voice turn %s: filler() failed", turn.delivery_id)
        return None


def _pump(agent, turn, chunks):
    try:
        for chunk in agent.respond(turn):
            chunks.put((None, chunk))
            if isinstance(chunk, Reply):
                return
        chunks.put((_ENDED, None))
    except Exception as exc:
        chunks.put((_FAILED, exc))


def _record(on_final, reply, turn):
    if on_final is None:
        return
    try:
        on_final(reply.to_line())
    except Exception:
        # The caller still gets the line; only a retry's replay is lost.
        log.exception("voice turn %s: could not store the final line", turn.delivery_id)
