"""Streams one voice turn as NDJSON: an interim line at once, the agent's sentences as they
come, then exactly one final line before the deadline, whatever the agent does."""

import logging
import queue
import time

from app.agent.base import Agent, Reply
from app.tasks import spawn
from app.voice.ndjson import interim, line

log = logging.getLogger(__name__)

LATE_TEXT = "Sorry, that is taking longer than it should. Could you say that again in a moment?"
ERROR_TEXT = "Sorry, something went wrong on my side. Could you say that again?"
POLL_SECONDS = 0.25
_FAILED = object()
_ENDED = object()


def deadline_for(voice_timeout):
    """Seconds we allow a turn: the platform's timeout less a margin for network and TTS."""
    return max(voice_timeout - 5.0, voice_timeout * 0.8)


def stream_turn(agent, turn, deadline, on_final=None, peer_closed=None, clock=time.monotonic):
    """Yield the NDJSON lines of one turn. ``on_final(line_dict)`` records the final line;
    ``peer_closed()`` tells whether the caller's connection has gone."""
    started = clock()
    task = final = None
    try:
        yield interim(_acknowledgement(agent, turn))
        chunks = queue.Queue()
        task = spawn(_pump, agent, turn, chunks)
        while final is None:
            remaining = started + deadline - clock()
            if remaining <= 0:
                log.warning("voice turn %s: no reply after %.1fs, sending fallback",
                            turn.delivery_id, deadline)
                final = Reply(LATE_TEXT)
                break
            try:
                kind, chunk = chunks.get(timeout=min(remaining, POLL_SECONDS))
            except queue.Empty:
                if peer_closed is not None and peer_closed():
                    log.info("voice turn %s: caller disconnected, work cancelled",
                             turn.delivery_id)
                    return
                continue
            if kind is _FAILED:
                log.error("voice turn %s: agent failed", turn.delivery_id, exc_info=chunk)
                final = Reply(ERROR_TEXT)
            elif kind is _ENDED:
                log.error("voice turn %s: agent ended without a final Reply", turn.delivery_id)
                final = Reply(ERROR_TEXT)
            elif isinstance(chunk, Reply):
                final = chunk
            elif isinstance(chunk, str) and chunk.strip():
                yield interim(chunk.strip())
    finally:
        if task is not None:
            task.cancel()
        # Also when the stream is closed early, so that a retry replays at once.
        _record(on_final, final or Reply(LATE_TEXT), turn)
    log.info("voice turn %s answered in %.0f ms", turn.delivery_id, (clock() - started) * 1000)
    yield line(final.to_line())


def _acknowledgement(agent, turn):
    try:
        return agent.acknowledge(turn)
    except Exception:
        log.exception("voice turn %s: acknowledge() failed", turn.delivery_id)
        return Agent.acknowledgement


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
