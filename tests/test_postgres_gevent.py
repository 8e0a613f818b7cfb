"""psycopg under gevent: two greenlets' `pg_sleep(0.5)` must overlap (one gunicorn worker
serves thousands of greenlets; a blocking wait would stall all of them).

Each case runs in a fresh interpreter, since what psycopg does depends on whether gevent
patched the standard library before psycopg was imported.
"""

import json
import subprocess
import sys

import pytest

from tests.servers import ROOT

SCRIPT = """
import json, sys, time
order, url = sys.argv[1], sys.argv[2]
if order == "patch-first":          # what gunicorn's gevent worker does
    from gevent import monkey; monkey.patch_all()
    import psycopg
else:                               # psycopg imported before patching (e.g. --preload)
    import psycopg
    from gevent import monkey; monkey.patch_all()
import gevent
import psycopg.waiting

def raw():
    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("SELECT pg_sleep(0.5)")

def timed(fn):
    started = time.monotonic()
    gevent.joinall([gevent.spawn(fn) for _ in range(2)], raise_error=True)
    return time.monotonic() - started

result = {"wait_before_store": psycopg.waiting.wait.__name__}
if order == "import-first":
    result["raw_before_store"] = timed(raw)
from app.store.postgres import PostgresStore

pytest_plugins = ["tests.postgres"]  # pg_server, pg_url
store = PostgresStore(url, min_size=0)
store.ping()
result["store"] = timed(lambda: store._one("SELECT pg_sleep(0.5)"))
result["raw"] = timed(raw)
result["wait"] = psycopg.waiting.wait.__name__
store.close()
print(json.dumps(result))
"""


def run(order, url):
    out = subprocess.run([sys.executable, "-c", SCRIPT, order, url], capture_output=True,
                         text=True, timeout=60, check=False, cwd=ROOT)
    assert out.returncode == 0, out.stderr[-3000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_psycopg_yields_to_other_greenlets(pg_url):
    result = run("patch-first", pg_url)
    assert result["wait_before_store"] == "wait_poll"  # psycopg chose gevent's poll itself
    assert result["store"] < 0.9, result  # overlapped: 0.5 s, not 1.0 s
    assert result["raw"] < 0.9, result


@pytest.mark.slow
def test_store_repairs_waiting_when_psycopg_was_imported_first(pg_url):
    result = run("import-first", pg_url)
    # The finding: psycopg's C wait function, chosen at import, blocks the whole hub...
    assert result["wait_before_store"] == "wait_c"
    assert result["raw_before_store"] >= 0.95, result
    # ...and the store switches psycopg to cooperative waiting when it is created.
    assert result["wait"] == "wait_poll"
    assert result["store"] < 0.9, result
    assert result["raw"] < 0.9, result
