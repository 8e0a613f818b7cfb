"""Versioned schema shared by every backend; `{types}` are filled in per dialect.

Append a migration to add or change tables; never edit one that has shipped.
"""

MIGRATIONS = [
    # 1: delivery ids (idempotency), cached voice replies, durable jobs.
    """
    CREATE TABLE IF NOT EXISTS deliveries (
        id TEXT PRIMARY KEY,
        event TEXT NOT NULL,
        received_at {real} NOT NULL
    );
    CREATE INDEX IF NOT EXISTS deliveries_received_at ON deliveries (received_at);
    CREATE TABLE IF NOT EXISTS voice_replies (
        delivery_id TEXT PRIMARY KEY,
        reply TEXT NOT NULL,
        created_at {real} NOT NULL
    );
    CREATE TABLE IF NOT EXISTS jobs (
        id {serial},
        delivery_id TEXT UNIQUE,
        kind TEXT NOT NULL,
        payload TEXT NOT NULL,
        status TEXT NOT NULL DEFAULT 'pending',
        attempts INTEGER NOT NULL DEFAULT 0,
        run_at {real} NOT NULL,
        lease_until {real},
        worker TEXT,
        last_error TEXT,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL
    );
    CREATE INDEX IF NOT EXISTS jobs_due ON jobs (status, run_at);
    """,
]


def statements(migration, types):
    """Split one migration into single statements for drivers that run one at a time."""
    return [s.strip() for s in migration.format(**types).split(";") if s.strip()]
