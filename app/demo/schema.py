"""The demo business's tables and seed data, tracked apart from the core schema.

``DemoRecords`` adds them to the app's database (``store.add_schema``), so a database only has
them where the demo agent runs. Databases created by 0.1.0 already hold these tables and rows
(core migration 2 made them then): every statement here leaves existing tables and rows as
they are, and the seed appointment is only written into an empty calendar, so migration 1
adopts them without undoing a cancellation. Append migrations; never edit one that has shipped.
"""

VERSION_TABLE = "demo_schema_version"

MIGRATIONS = [
    # 1: customers, their orders, a Monday-to-Saturday calendar and its appointments, seeded.
    """
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
        SELECT 'monday', '09:00', 'Maria Garcia', '+15550002222', 'booked', 0, 0
        WHERE NOT EXISTS (SELECT 1 FROM demo_appointments)
    """,
]
