"""Versioned schema shared by every backend; `{types}` are filled in per dialect.

Append a migration to add or change tables; never edit one that has shipped. A package with
tables of its own keeps its migrations next to its code and adds them with
``store.add_schema`` (see app/demo/schema.py). No semicolons inside literals: statements are
split on them.
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
    # 2: the agent's records: per-call context, sent replies (outbox), call records and
    # reactions. Up to 0.1.0 it also created the demo business's tables: they now belong to
    # app/demo, whose own migrations adopt them in place where they exist.
    """
    CREATE TABLE IF NOT EXISTS agent_sessions (
        session_id TEXT PRIMARY KEY,
        state TEXT NOT NULL,
        updated_at {real} NOT NULL
    );
    CREATE INDEX IF NOT EXISTS agent_sessions_updated_at ON agent_sessions (updated_at);
    CREATE TABLE IF NOT EXISTS outbox (
        delivery_id TEXT PRIMARY KEY,
        status TEXT NOT NULL,
        to_number TEXT,
        body TEXT NOT NULL,
        message_id TEXT,
        error TEXT,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL
    );
    CREATE TABLE IF NOT EXISTS call_records (
        call_id TEXT PRIMARY KEY,
        agent_id TEXT,
        from_number TEXT,
        to_number TEXT,
        direction TEXT,
        status TEXT,
        started_at TEXT,
        ended_at TEXT,
        duration_seconds {real},
        disconnection_reason TEXT,
        transcript TEXT NOT NULL,
        summary TEXT,
        sentiment TEXT,
        successful INTEGER,
        delivery_id TEXT,
        created_at {real} NOT NULL
    );
    CREATE INDEX IF NOT EXISTS call_records_created_at ON call_records (created_at);
    CREATE TABLE IF NOT EXISTS reactions (
        delivery_id TEXT PRIMARY KEY,
        conversation_id TEXT,
        message_id TEXT,
        reaction_type TEXT,
        from_number TEXT,
        direction TEXT,
        created_at {real} NOT NULL
    );
    """,
    # 3: a voice claim names its holder (a process) and the attempt, renewed by a heartbeat
    # while the turn runs, so that a retry can take over a turn whose worker died.
    """
    ALTER TABLE deliveries ADD COLUMN owner TEXT;
    ALTER TABLE deliveries ADD COLUMN attempt INTEGER NOT NULL DEFAULT 0;
    ALTER TABLE deliveries ADD COLUMN heartbeat_at {real}
    """,
    # 4: webhook signing secrets the CLI stored (`agentphone webhook set|rotate`): several
    # per account or agent while a rotated one is in its grace period.
    """
    CREATE TABLE IF NOT EXISTS webhook_secrets (
        secret TEXT PRIMARY KEY,
        scope TEXT NOT NULL,
        webhook_id TEXT,
        url TEXT,
        created_at {real} NOT NULL,
        expires_at {real}
    );
    CREATE INDEX IF NOT EXISTS webhook_secrets_scope ON webhook_secrets (scope)
    """,
    # 5: the console's log of recent deliveries (written in batches, pruned like delivery ids).
    """
    CREATE TABLE IF NOT EXISTS delivery_log (
        id TEXT PRIMARY KEY,
        delivery_id TEXT NOT NULL,
        event TEXT NOT NULL,
        channel TEXT,
        agent_id TEXT,
        call_id TEXT,
        conversation_id TEXT,
        outcome TEXT NOT NULL,
        status INTEGER,
        said TEXT,
        answered TEXT,
        received_at {real} NOT NULL,
        first_line_ms {real},
        final_ms {real}
    );
    CREATE INDEX IF NOT EXISTS delivery_log_received_at ON delivery_log (received_at, outcome);
    CREATE INDEX IF NOT EXISTS delivery_log_call ON delivery_log (call_id, received_at);
    CREATE INDEX IF NOT EXISTS delivery_log_channel
        ON delivery_log (channel, received_at, first_line_ms);
    CREATE INDEX IF NOT EXISTS delivery_log_in_flight ON delivery_log (received_at)
        WHERE outcome = 'in-flight';
    CREATE INDEX IF NOT EXISTS delivery_log_failures ON delivery_log (received_at)
        WHERE status >= 400 OR outcome IN ('deadline', 'agent_error');
    CREATE INDEX IF NOT EXISTS jobs_by_status ON jobs (status, id);
    CREATE INDEX IF NOT EXISTS outbox_by_status ON outbox (status, updated_at)
    """,
    # 6: the job that wrote each reply outbox row, so that a reply whose fate is unknown can
    # be listed with its job and resent from it.
    """
    ALTER TABLE outbox ADD COLUMN job_id INTEGER
    """,
    # 7: the signed bytes (timestamp and body) of accepted deliveries, kept while a copy
    # could still pass verification, so that a copy under another delivery id is refused.
    """
    CREATE TABLE IF NOT EXISTS signed_requests (
        digest TEXT PRIMARY KEY,
        delivery_id TEXT NOT NULL,
        expires_at {real} NOT NULL
    );
    CREATE INDEX IF NOT EXISTS signed_requests_expires_at ON signed_requests (expires_at)
    """,
    # 8: the delivery log's call and voice indexes hold only the rows they serve: a text's row
    # is written to two fewer indexes (~22 % less of its insert). The voice index ends with
    # the channel, always 'voice' in it, so that it covers the first-line latency query.
    """
    DROP INDEX IF EXISTS delivery_log_call;
    CREATE INDEX IF NOT EXISTS delivery_log_call_id ON delivery_log (call_id, received_at)
        WHERE call_id IS NOT NULL;
    DROP INDEX IF EXISTS delivery_log_channel;
    CREATE INDEX IF NOT EXISTS delivery_log_voice
        ON delivery_log (received_at, first_line_ms, channel) WHERE channel = 'voice'
    """,
]


def statements(migration, types):
    """Split one migration into single statements for drivers that run one at a time."""
    return [s.strip() for s in migration.format(**types).split(";") if s.strip()]
