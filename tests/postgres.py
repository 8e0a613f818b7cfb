"""A throwaway PostgreSQL server for the tests: initdb into a temporary folder, started with
pg_ctl on a free loopback port, trust authentication, removed afterwards.

The server runs as the ``postgres`` OS user (initdb refuses root). Missing binaries make the
fixtures fail rather than skip: PostgreSQL support is tested on every run.

Test modules load the fixtures with ``pytest_plugins = ["tests.postgres"]`` and use only
fixtures (importing this module directly would defeat pytest's assertion rewriting):
``pg_server`` (the shared server), ``pg_url`` (a fresh database on it),
``pg_own_server`` (a server of the test's own, which it may stop and start) and
``database_url`` (a test run on each backend: a fresh SQLite file, then a fresh database on
``pg_server``).
"""

import contextlib
import glob
import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from pathlib import Path

import psycopg
import pytest

from tests.servers import free_port

RUN_AS = "postgres"
# Durability off: a test server has nothing worth an fsync; many connections: several
# gunicorn workers and job workers each hold a pool.
SERVER_OPTIONS = (
    "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
    "-c max_connections=300 -c shared_buffers=32MB"
)


def bin_dir():
    """The newest /usr/lib/postgresql/*/bin holding initdb; fails the test when there is none."""
    found = sorted(glob.glob("/usr/lib/postgresql/*/bin/initdb"),
                   key=lambda p: int(Path(p).parent.parent.name))
    if not found:
        pytest.fail("PostgreSQL server binaries not found under /usr/lib/postgresql/*/bin: "
                    "install the postgresql package (.ci/run does)")
    return Path(found[-1]).parent


def _as_server_user(cmd):
    """Run as the postgres OS user when we are root (initdb and postgres refuse root)."""
    if os.geteuid() == 0:
        return ["runuser", "-u", RUN_AS, "--", *cmd]
    return cmd


class PostgresServer:
    """One PostgreSQL cluster; ``start()``/``stop()`` may be called again (same port)."""

    def __init__(self, options=SERVER_OPTIONS):
        self.bin = bin_dir()
        self.options = options
        self.port = free_port()
        self.root = Path(tempfile.mkdtemp(prefix="agentphone-pg-"))
        self.data = self.root / "data"
        self.sockets = self.root / "sockets"
        self.logfile = self.root / "server.log"
        self.sockets.mkdir()
        if os.geteuid() == 0:
            user = pwd.getpwnam(RUN_AS)
            for path in (self.root, self.sockets):
                os.chown(path, user.pw_uid, user.pw_gid)
        try:
            self._run([self.bin / "initdb", "-D", self.data, "-U", "postgres", "-A", "trust",
                       "-E", "UTF8", "--no-locale", "--no-sync"])
        except BaseException:
            shutil.rmtree(self.root, ignore_errors=True)
            raise

    def _run(self, cmd, check=True):
        result = subprocess.run(_as_server_user([str(c) for c in cmd]), capture_output=True,
                                text=True, check=False, timeout=60)
        if check and result.returncode != 0:
            raise RuntimeError(f"{' '.join(map(str, cmd))} failed ({result.returncode}):\n"
                               f"{result.stdout}\n{result.stderr}\n{self.log()}")
        return result

    def log(self):
        try:
            return self.logfile.read_text(errors="replace")[-3000:]
        except OSError:
            return ""

    def url(self, dbname="postgres", scheme="postgresql"):
        return f"{scheme}://postgres@127.0.0.1:{self.port}/{dbname}"

    @property
    def running(self):
        return self._run([self.bin / "pg_ctl", "-D", self.data, "status"],
                         check=False).returncode == 0

    def start(self):
        options = f"-p {self.port} -h 127.0.0.1 -k {self.sockets} {self.options}"
        self._run([self.bin / "pg_ctl", "-D", self.data, "-l", self.logfile, "-o", options,
                   "-w", "-t", "30", "start"])

    def stop(self, mode="fast"):
        """Stop the server; ``fast`` disconnects clients, ``immediate`` is like a crash."""
        if self.data.exists() and self.running:
            self._run([self.bin / "pg_ctl", "-D", self.data, "-m", mode, "-w", "-t", "30",
                       "stop"])

    def destroy(self):
        try:
            self.stop("immediate")
        finally:
            shutil.rmtree(self.root, ignore_errors=True)

    def create_database(self):
        name = f"t_{uuid.uuid4().hex[:12]}"
        with psycopg.connect(self.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        return name

    def drop_database(self, name):
        with contextlib.suppress(psycopg.Error), \
                psycopg.connect(self.url(), autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@contextlib.contextmanager
def running_server():
    """A started server, always stopped and removed afterwards."""
    server = PostgresServer()
    try:
        server.start()
        yield server
    finally:
        server.destroy()


_shared = {}


@pytest.fixture(scope="session")
def pg_server(request):
    """The session's PostgreSQL server, stopped when the session ends. Tests must not stop
    it: ``pg_own_server`` gives a server of their own."""
    if "server" not in _shared:
        server = PostgresServer()
        request.config.add_cleanup(server.destroy)
        _shared["server"] = server
        server.start()
    server = _shared["server"]
    if not server.running:
        server.start()
    return server


@pytest.fixture
def pg_own_server():
    """A started server for this test alone (it may stop and start it); removed after."""
    with running_server() as server:
        yield server


@pytest.fixture
def pg_url(pg_server):
    """A fresh, empty database on the session server; dropped after the test."""
    name = pg_server.create_database()
    yield pg_server.url(name)
    pg_server.drop_database(name)


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request, tmp_path):
    """The URL of a fresh, empty database on each backend in turn."""
    if request.param == "sqlite":
        return "sqlite:///" + str(tmp_path / "test.db")
    return request.getfixturevalue("pg_url")

