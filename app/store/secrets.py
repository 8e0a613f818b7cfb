"""Store operations for webhook signing secrets: the ones `agentphone webhook set|rotate`
received from the platform, each valid until its grace period after a rotation runs out.

Mixed into SQLStore. A scope is ``account`` for the account webhook, else the agent id.
"""

from dataclasses import dataclass

from app.store.records import SQLRepository

ACCOUNT = "account"


@dataclass(frozen=True)
class StoredSecret:
    """One signing secret and how long it stays valid (``expires_at`` None: until rotated)."""

    secret: str
    scope: str
    webhook_id: str | None
    url: str | None
    created_at: float
    expires_at: float | None

    def live(self, now: float) -> bool:
        return self.expires_at is None or self.expires_at > now


class SecretsMixin(SQLRepository):
    def add_webhook_secret(self, scope: str, secret: str, grace: float,
                           webhook_id: str | None = None, url: str | None = None) -> None:
        """Store the new ``secret`` of ``scope``; the scope's other live secrets stay valid
        for ``grace`` more seconds (deliveries signed before the change are still retried)."""

        def add(cur):
            now = self.clock()
            cur.execute(
                "UPDATE webhook_secrets SET expires_at = ? WHERE scope = ? AND secret <> ? "
                "AND (expires_at IS NULL OR expires_at > ?)",
                (now + grace, scope, secret, now + grace),
            )
            cur.execute(
                "INSERT INTO webhook_secrets (secret, scope, webhook_id, url, created_at) "
                "VALUES (?, ?, ?, ?, ?) ON CONFLICT (secret) DO NOTHING",
                (secret, scope, webhook_id, url, now),
            )

        self.run(add)

    def webhook_secrets(self, live_only: bool = True) -> list[StoredSecret]:
        """Stored secrets, newest first; by default only those not yet expired."""
        clause, params = ("WHERE expires_at IS NULL OR expires_at > ? ", (self.clock(),)) \
            if live_only else ("", ())
        rows = self.run(lambda cur: _all(
            cur, "SELECT secret, scope, webhook_id, url, created_at, expires_at "
            f"FROM webhook_secrets {clause}ORDER BY created_at DESC", params),
            transaction=False)
        return [StoredSecret(*row) for row in rows]


def _all(cur, sql, params):
    cur.execute(sql, params)
    return cur.fetchall()
