"""The runtime's scheduling helpers, under a gevent-patched interpreter as in the worker."""

import json
import subprocess
import sys
import textwrap

from app.runtime import gevent_active, yield_to_waiting

SCRIPT = textwrap.dedent("""
    from gevent import monkey; monkey.patch_all()
    import json, sys, time
    import gevent
    from app.runtime import yield_to_waiting

    def later_work_waits_for_ready_greenlets():
        seen = []
        def turn():
            seen.append("turn yields")
            yield_to_waiting(1.0)
            seen.append("turn resumes")
        first = gevent.spawn(turn)
        gevent.sleep(0)  # the turn is waiting now; then three callers arrive
        others = [gevent.spawn(seen.append, f"caller {i}") for i in range(3)]
        gevent.joinall([first, *others])
        return seen

    def waiters_resume_one_per_pass():
        seen = []
        def turn(name):
            yield_to_waiting(1.0)
            seen.append(name)
            gevent.spawn(seen.append, f"arrived after {name}")
        gevent.joinall([gevent.spawn(turn, "a"), gevent.spawn(turn, "b")])
        gevent.sleep(0.01)
        return seen

    def a_busy_loop_delays_by_the_limit_at_most():
        state = {"busy": True, "resumed_while_busy": None}
        def busy():  # always something ready: the loop is never idle
            ends = time.monotonic() + 5
            while state["busy"] and time.monotonic() < ends:
                gevent.sleep(0)
            state["busy"] = False
        def turn():
            yield_to_waiting(0.05)
            state["resumed_while_busy"] = state["busy"]
            state["busy"] = False
        gevent.joinall([gevent.spawn(busy), gevent.spawn(turn)])
        return state["resumed_while_busy"]

    print(json.dumps([later_work_waits_for_ready_greenlets(), waiters_resume_one_per_pass(),
                      a_busy_loop_delays_by_the_limit_at_most()]))
""")


def test_yield_to_waiting_lets_ready_work_go_first_and_is_bounded():
    done = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True,
                          timeout=60, check=True)
    order, passes, bounded = json.loads(done.stdout)
    assert order == ["turn yields", "caller 0", "caller 1", "caller 2", "turn resumes"]
    assert passes == ["a", "arrived after a", "b", "arrived after b"]
    assert bounded is True


def test_yield_to_waiting_returns_at_once_without_gevent():
    assert not gevent_active()
    yield_to_waiting(60)  # would hang the test if it waited
