"""A throwaway PostgreSQL server for the benchmarks' --database-url (loopback only).

    .venv/bin/python bench/postgres_server.py &      # prints one database URL per line, then waits
    .venv/bin/python bench/sms_acks.py --database-url "$(sed -n 1p bench/results/pg_urls.txt)"

Uses the test suite's launcher (tests/postgres.py: initdb in a temporary folder, run as the
`postgres` user, free loopback port). synchronous_commit=off matches SQLite's
synchronous=NORMAL in WAL mode: neither waits for a disk flush at each commit. Stops and
deletes everything on SIGTERM or Ctrl-C.
"""

import argparse
import signal
import sys
import time
from pathlib import Path

from _server import ROOT

from tests.postgres import PostgresServer

OPTIONS = "-c max_connections=300 -c shared_buffers=128MB -c synchronous_commit=off"


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--databases", type=int, default=4)
    parser.add_argument("--urls", default=str(ROOT / "bench" / "results" / "pg_urls.txt"))
    args = parser.parse_args()
    server = PostgresServer(options=OPTIONS)
    server.start()
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(0))
    try:
        urls = [server.url(server.create_database()) for _ in range(args.databases)]
        Path(args.urls).parent.mkdir(parents=True, exist_ok=True)
        Path(args.urls).write_text("\n".join(urls) + "\n")
        print("\n".join(urls), flush=True)
        while True:
            time.sleep(3600)
    except KeyboardInterrupt:
        pass
    finally:
        server.destroy()


if __name__ == "__main__":
    main()
