"""`?` -> `%s` translation for psycopg, and the PostgreSQL store's URL handling."""

import pytest

from app.store import open_store
from app.store.postgres import PostgresStore, translate_placeholders

pytest_plugins = ["tests.postgres"]  # pg_server, pg_url


@pytest.mark.parametrize(("sql", "expected"), [
    ("SELECT 1", "SELECT 1"),
    ("UPDATE t SET a = ? WHERE id = ?", "UPDATE t SET a = %s WHERE id = %s"),
    ("SELECT '?' , ?", "SELECT '?' , %s"),
    ("SELECT 'it''s ?', ?", "SELECT 'it''s ?', %s"),
    ("SELECT \"odd?name\" FROM t WHERE x = ?", "SELECT \"odd?name\" FROM t WHERE x = %s"),
    ("SELECT E'\\'?', ?", "SELECT E'\\'?', %s"),
    ("SELECT 'a\\', ?", "SELECT 'a\\', %s"),  # standard strings: backslash is literal
    ("SELECT ? -- why?\n, ?", "SELECT %s -- why?\n, %s"),
    ("SELECT /* ? */ ?", "SELECT /* ? */ %s"),
    ("SELECT 5 % ?, '100%'", "SELECT 5 %% %s, '100%%'"),
    ("SELECT '?", "SELECT '?"),  # unterminated: left alone
])
def test_translate_placeholders(sql, expected):
    assert translate_placeholders(sql) == expected


def test_translated_literals_reach_the_server_unchanged(pg_url):
    store = open_store(pg_url)
    try:
        row = store._one("SELECT '?', 'it''s 100%', E'\\'?', ? || '%', 7 % ?", ("x", 3))
        assert row == ("?", "it's 100%", "'?", "x%", 1)
    finally:
        store.close()


@pytest.mark.parametrize("scheme", ["postgres", "postgresql"])
def test_both_url_schemes(pg_server, pg_url, scheme):
    store = open_store(pg_url.replace("postgresql://", f"{scheme}://", 1))
    try:
        assert isinstance(store, PostgresStore)
        store.migrate()
        assert store.claim_voice("whd_1", "agent.message", "w1") is True
    finally:
        store.close()


def test_url_parameters_win_over_defaults():
    store = PostgresStore("postgres://u@db.example:5433/app?connect_timeout=9&sslmode=require")
    assert "connect_timeout=9" in store.conninfo
    assert "sslmode=require" in store.conninfo
    assert "keepalives=1" in store.conninfo
    assert "host=db.example" in store.conninfo and "port=5433" in store.conninfo
