"""Log lines are never lost to characters the output cannot encode."""

import ast
import io
import logging
import re
import subprocess
import sys

import pytest

from app import logs
from app.logs import EscapingStreamHandler
from tests.servers import ROOT


def test_lone_surrogate_in_a_log_message_is_escaped_not_dropped():
    out = io.TextIOWrapper(io.BytesIO(), encoding="utf-8", errors="strict")
    handler = EscapingStreamHandler(out)
    log = logging.getLogger("tests.escaping")
    log.addHandler(handler)
    log.propagate = False
    try:
        log.warning("text %r and %s", "a\ud800b", "c\udfffd")
        log.warning("next line")
    finally:
        log.removeHandler(handler)
        log.propagate = True
    out.flush()
    lines = out.buffer.getvalue().decode("utf-8").splitlines()
    assert lines == ["text 'a\\ud800b' and c\\udfffd", "next line"]


def test_ascii_stream_gets_escapes_for_any_non_ascii():
    out = io.TextIOWrapper(io.BytesIO(), encoding="ascii", errors="strict")
    handler = EscapingStreamHandler(out)
    handler.emit(logging.makeLogRecord({"msg": "caf\u00e9 \ud83d"}))
    out.flush()
    assert out.buffer.getvalue() == b"caf\\xe9 \\ud83d\n"


def test_the_app_log_keeps_a_line_with_a_lone_surrogate(tmp_path):
    code = (
        "import logging\n"
        "from app import create_app\n"
        "create_app({'WEBHOOK_SECRETS': ('whsec_x',), 'JOB_RUNNER': False,"
        f" 'DATABASE_URL': 'sqlite:///{tmp_path}/events.db'}})\n"
        "logging.getLogger('app.x').warning('caller said %s', 'hi \\ud800 there')\n"
        "logging.getLogger('app.x').warning('after')\n"
    )
    result = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                            timeout=60, check=False, env={"PYTHONIOENCODING": "utf-8:strict",
                                                           "PATH": "/usr/bin:/bin"})
    assert result.returncode == 0, result.stderr
    assert b"caller said hi \\ud800 there" in result.stderr
    assert b"after" in result.stderr
    assert b"Logging error" not in result.stderr


def test_access_lines_read_the_same_as_gunicorns_own_for_any_format(monkeypatch):
    import datetime
    import types

    from gunicorn import glogging
    from gunicorn.config import Config

    from app.gunicorn_worker import AppLogger

    cfg = Config()
    # Every atom gunicorn documents but the time (``t``), and names it does not know.
    cfg.set("access_log_format", '%(h)s %(l)s "%(r)s" %(s)s %(m)s %(U)s %(q)s %(H)s %(b)s '
                                 "%(B)s %(f)s %(T)s %(D)s %(M)sms %(L)s %(a)s %(u)s %(p)s "
                                 "%({x-webhook-id}i)s %({X-Repeated}i)s %({Content-Type}o)s "
                                 "%({wsgi.url_scheme}e)s %({x-missing}i)s %(Z)s")
    resp = types.SimpleNamespace(status="200 OK", sent=12, headers=[
        ("Content-Type", "application/json"), ("X-Other", "y")])
    req = types.SimpleNamespace(headers=[("X-WEBHOOK-ID", 'whd_"1"'), ("HOST", "x"),
                                         ("X-REPEATED", "first"), ("X-REPEATED", "last")])
    environ = {"REMOTE_ADDR": "127.0.0.1", "REQUEST_METHOD": "POST", "RAW_URI": '/webhook?"',
               "SERVER_PROTOCOL": "HTTP/1.1", "HTTP_USER_AGENT": 'ua/1 "quoted"',
               "HTTP_AUTHORIZATION": "Basic dXNlcjpwdw==", "wsgi.url_scheme": "http",
               "PATH_INFO": "/webhook", "QUERY_STRING": '"', "OTHER": "z"}
    took = datetime.timedelta(seconds=1, microseconds=12_345)
    gunicorns, ours = object.__new__(glogging.Logger), object.__new__(AppLogger)
    gunicorns.cfg = ours.cfg = cfg

    expected = cfg.access_log_format % glogging.SafeAtoms(
        gunicorns.atoms(resp, req, environ, took))
    assert ours.access_line(resp, req, environ, took) == expected
    assert expected.startswith('127.0.0.1 - "POST /webhook?\\" HTTP/1.1" 200 POST /webhook \\" '
                               "HTTP/1.1 12 12 - 1 1012345 1012ms 1.012345 "
                               'ua/1 \\"quoted\\" user <')
    assert expected.endswith('whd_\\"1\\" last application/json http - -')

    # The deployed format's atoms are made on their own: gunicorn's full set is never built.
    def no_full_set(*args):
        raise AssertionError("every atom made")

    monkeypatch.setattr(glogging.Logger, "atoms", no_full_set)
    conf = ast.parse((ROOT / "gunicorn.conf.py").read_text())
    cfg.set("access_log_format", next(
        ast.literal_eval(node.value) for node in conf.body if isinstance(node, ast.Assign)
        and getattr(node.targets[0], "id", None) == "access_log_format"))
    assert ours.access_line(resp, req, environ, took) == (
        'access 127.0.0.1 "POST /webhook?\\" HTTP/1.1" 200 12 1012ms delivery=whd_\\"1\\"')


@pytest.mark.parametrize("fmt", ["text", "json"])
def test_line_times_read_as_the_standard_formatters_across_seconds(fmt):
    ours, standard = logs.formatter(fmt), logging.Formatter()
    for created in (1_736_942_400.25, 1_736_942_400.999, 1_736_942_401.0004, 1_736_942_400.5):
        record = logging.LogRecord("app.x", logging.INFO, __file__, 1, "hi", (), None)
        record.created, record.msecs = created, (created - int(created)) * 1000
        assert ours.formatTime(record) == standard.formatTime(record)
        assert ours.formatTime(record, "%H:%M") == standard.formatTime(record, "%H:%M")


def test_configure_gives_handlers_made_before_gevent_patched_a_native_lock():
    import _thread
    import threading

    handler = EscapingStreamHandler(io.StringIO())
    handler.lock = threading._PyRLock()  # what gevent's patch_all leaves on existing handlers
    access = logging.getLogger("gunicorn.access")
    access.addHandler(handler)
    try:
        logs.configure()
        assert isinstance(handler.lock, type(_thread.RLock()))
        assert handler in logging._at_fork_reinit_lock_weakset  # re-made after a fork
    finally:
        access.removeHandler(handler)


@pytest.mark.parametrize("value", ["x", None])
def test_bind_refuses_a_field_it_does_not_know(value):
    with pytest.raises(KeyError):
        logs.bind(delivery=value)


def _direct_logger(name, fmt, stream):
    logger = logging.getLogger(name)
    logger.propagate = False
    handler = EscapingStreamHandler(stream)
    handler.setFormatter(logs.formatter(fmt))
    handler.addFilter(logs.ContextFilter())
    logger.handlers[:] = [handler]
    logger.setLevel(logging.INFO)
    return logger, handler


@pytest.mark.parametrize("fmt", ["text", "json"])
@pytest.mark.parametrize("bound", [{}, {"delivery_id": "whd_1", "channel": "sms", "attempt": 2}])
@pytest.mark.parametrize("message", ['access 127.0.0.1 "POST /webhook" 200 %s 5ms',
                                     "caf\u00e9 \udce9"])
def test_a_direct_line_is_the_line_the_logging_module_makes(fmt, bound, message):
    """logs.info writes, without a LogRecord, what logger.info would: the same text or the
    same JSON object with its keys in the same order (only the time may differ)."""
    import json

    stream = io.TextIOWrapper(io.BytesIO(), encoding="ascii", newline="\n")
    logger, _ = _direct_logger(f"test.direct.{fmt}", fmt, stream)
    logs.bind(**bound)
    try:
        logs.info(logger, message)
        logger.info("%s", message)
    finally:
        logs.clear()
    stream.flush()
    direct, standard = stream.buffer.getvalue().decode("ascii").splitlines()
    if fmt == "text":
        stamp = r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} "
        assert re.match(stamp, direct) and re.match(stamp, standard)
        assert direct[24:] == standard[24:]
    else:
        ours, theirs = json.loads(direct), json.loads(standard)
        assert list(ours) == list(theirs)
        assert re.fullmatch(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3}", ours.pop("time"))
        theirs.pop("time")
        assert ours == theirs
    if "\udce9" in message:
        assert "\\udce9" in direct  # escaped as the handler escapes any line


def test_a_direct_line_takes_the_logging_path_when_more_than_the_app_handler_is_set():
    """A filter of its own, a second handler or propagation: logs.info is logger.info."""
    stream, other = io.StringIO(), io.StringIO()
    logger, handler = _direct_logger("test.direct.other", "text", stream)
    handler.addFilter(lambda record: "secret" not in record.getMessage())
    logs.info(logger, "a secret line")
    logs.info(logger, "a plain line")
    assert "secret" not in stream.getvalue() and "a plain line" in stream.getvalue()
    logger.addHandler(logging.StreamHandler(other))
    logs.info(logger, "to both")
    assert "to both" in stream.getvalue() and "to both" in other.getvalue()
    logger.setLevel(logging.WARNING)
    logs.info(logger, "below the level")
    assert "below the level" not in stream.getvalue() + other.getvalue()


def test_a_direct_line_is_not_made_where_a_record_would_carry_more(monkeypatch):
    """A record factory of its own (tracing adds ids) or a date format: the logging path."""
    logger, handler = _direct_logger("test.direct.more", "json", io.StringIO())
    assert logs._sole_handler(logger) is handler
    base = logging.getLogRecordFactory()

    def traced(*args, **kwargs):
        record = base(*args, **kwargs)
        record.trace_id = "abc123"
        return record

    monkeypatch.setattr(logging, "_logRecordFactory", traced)
    assert logs._sole_handler(logger) is None
    logs.info(logger, "traced")
    assert '"trace_id": "abc123"' in handler.stream.getvalue()
    monkeypatch.setattr(logging, "_logRecordFactory", base)
    monkeypatch.setattr(handler.formatter, "datefmt", "%H:%M")
    assert logs._sole_handler(logger) is None
