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
    # 2: the agent's records: per-call context, sent replies (outbox), call records,
    # reactions, and the demo business (customers, orders, a weekly calendar, appointments).
    # No semicolons inside literals: statements are split on them.
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
    CREATE TABLE IF NOT EXISTS demo_customers (
        id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        phone TEXT NOT NULL UNIQUE,
        email TEXT,
        notes TEXT
    );
    CREATE TABLE IF NOT EXISTS demo_orders (
        id TEXT PRIMARY KEY,
        customer_id TEXT NOT NULL,
        item TEXT NOT NULL,
        status TEXT NOT NULL,
        detail TEXT NOT NULL
    );
    CREATE INDEX IF NOT EXISTS demo_orders_customer ON demo_orders (customer_id);
    CREATE TABLE IF NOT EXISTS demo_slots (
        day TEXT NOT NULL,
        slot_time TEXT NOT NULL,
        day_index INTEGER NOT NULL,
        PRIMARY KEY (day, slot_time)
    );
    CREATE TABLE IF NOT EXISTS demo_appointments (
        id {serial},
        day TEXT NOT NULL,
        slot_time TEXT NOT NULL,
        name TEXT NOT NULL,
        phone TEXT,
        status TEXT NOT NULL DEFAULT 'booked',
        delivery_id TEXT UNIQUE,
        cancel_delivery_id TEXT,
        created_at {real} NOT NULL,
        updated_at {real} NOT NULL
    );
    CREATE UNIQUE INDEX IF NOT EXISTS demo_appointments_one_per_slot
        ON demo_appointments (day, slot_time) WHERE status = 'booked';
    CREATE INDEX IF NOT EXISTS demo_appointments_phone ON demo_appointments (phone);
    INSERT INTO demo_customers (id, name, phone, email, notes) VALUES
        ('cus_1', 'Jane Doe', '+15559876543', 'jane@example.com', 'Prefers mornings'),
        ('cus_2', 'Sam Patel', '+15550001111', 'sam@example.com', 'Loyalty member'),
        ('cus_3', 'Maria Garcia', '+15550002222', 'maria@example.com', NULL),
        ('cus_4', 'Lee Chen', '+15550003333', 'lee@example.com', 'Allergic to latex')
        ON CONFLICT DO NOTHING;
    INSERT INTO demo_orders (id, customer_id, item, status, detail) VALUES
        ('4521', 'cus_1', 'a pair of running shoes', 'shipped',
            'It shipped yesterday by FedEx, due Thursday'),
        ('4522', 'cus_2', 'a gift card', 'delivered', 'It was delivered by email on Monday'),
        ('4523', 'cus_3', 'a rain jacket', 'processing', 'It is being packed, ships tomorrow'),
        ('4524', 'cus_1', 'two water bottles', 'backordered', 'It is back-ordered until month end')
        ON CONFLICT DO NOTHING;
    INSERT INTO demo_slots (day, slot_time, day_index) VALUES
        ('monday', '09:00', 1), ('monday', '10:00', 1), ('monday', '11:00', 1),
        ('monday', '14:00', 1), ('monday', '15:00', 1), ('monday', '16:00', 1),
        ('tuesday', '09:00', 2), ('tuesday', '10:00', 2), ('tuesday', '11:00', 2),
        ('tuesday', '14:00', 2), ('tuesday', '15:00', 2), ('tuesday', '16:00', 2),
        ('wednesday', '09:00', 3), ('wednesday', '10:00', 3), ('wednesday', '11:00', 3),
        ('wednesday', '14:00', 3), ('wednesday', '15:00', 3), ('wednesday', '16:00', 3),
        ('thursday', '09:00', 4), ('thursday', '10:00', 4), ('thursday', '11:00', 4),
        ('thursday', '14:00', 4), ('thursday', '15:00', 4), ('thursday', '16:00', 4),
        ('friday', '09:00', 5), ('friday', '10:00', 5), ('friday', '11:00', 5),
        ('friday', '14:00', 5), ('friday', '15:00', 5), ('friday', '16:00', 5),
        ('saturday', '10:00', 6), ('saturday', '11:00', 6), ('saturday', '12:00', 6)
        ON CONFLICT DO NOTHING;
    INSERT INTO demo_appointments (day, slot_time, name, phone, status, created_at, updated_at)
        VALUES ('monday', '09:00', 'Maria Garcia', '+15550002222', 'booked', 0, 0)
        ON CONFLICT DO NOTHING
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
]


def statements(migration, types):
    """Split one migration into single statements for drivers that run one at a time."""
    return [s.strip() for s in migration.format(**types).split(";") if s.strip()]
