"""The store's contract. Its ``EventStore`` part runs against every implementation through
one fixture (``store``): SQLite, a real PostgreSQL server and tests/toy_store.py, an
in-memory backend with only what the protocol lists. The other protocols of ``Store`` (the
repositories, the schema, failures) run against the SQL backends."""

import functools
import sqlite3
import threading
import time
from concurrent.futures import ThreadPoolExecutor

import psycopg
import pytest

from app.store import StoreUnavailable, open_store
from app.store.base import (
    DAY,
    AgentSessions,
    CallRecords,
    DeliveryLog,
    EventStore,
    Reactions,
    Replayed,
    ReplyOutbox,
    Retention,
    SignedBytes,
    SQLTables,
    Store,
    StoreLifecycle,
    WebhookSecrets,
)
from app.store.postgres import PostgresStore
from app.store.schema import MIGRATIONS
from app.voice.claims import STALE_SECONDS, VoiceClaims
from tests.servers import free_port
from tests.toy_store import ToyStore

pytest_plugins = ["tests.postgres"]  # pg_server, pg_url

NOW = 1_736_942_400.0
EVENT_STORES = ["sqlite", "postgres", "toy"]
SQL_STORES = ["sqlite", "postgres"]


class Clock:
    def __init__(self, now=NOW):
        self.now = now

    def __call__(self):
        return self.now

    def advance(self, seconds):
        self.now += seconds


@pytest.fixture
def make_store(request, tmp_path):
    """``make_store(backend, migrate=True, url=None)`` -> a new store of ``backend`` (one of
    ``EVENT_STORES``), its clock at NOW. SQL stores of one test share its database (``url``
    picks another) and are closed after the test."""
    stores = []

    def make(backend, migrate=True, url=None):
        if backend == "toy":
            return ToyStore(Clock())
        if url is None:
            url = ("sqlite:///" + str(tmp_path / "test.db") if backend == "sqlite"
                   else request.getfixturevalue("pg_url"))
        store = open_store(url)
        store.clock = Clock()
        stores.append(store)
        if migrate:
            store.migrate()
        return store

    yield make
    for store in stores:
        store.close()


@pytest.fixture(params=EVENT_STORES)
def store(request, make_store):
    """A fresh store of each EventStore implementation in turn: the contract's fixture."""
    return make_store(request.param)


@pytest.fixture(params=SQL_STORES)
def sql_backend(request):
    return request.param


@pytest.fixture
def opened(sql_backend, make_store):
    """``opened(migrate=True, url=None)`` -> a new SQL store, on each SQL backend in turn."""
    return functools.partial(make_store, sql_backend)


def in_threads(n, fn):
    """Run ``fn(i)`` in ``n`` threads released together; their results in order."""
    barrier = threading.Barrier(n)
    results, errors = [None] * n, []

    def run(i):
        barrier.wait()
        try:
            results[i] = fn(i)
        except Exception as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)
    assert not errors, errors
    return results


# -- the protocols --------------------------------------------------------------------------


def test_every_backend_is_an_event_store(store):
    assert isinstance(store, EventStore)


def test_the_sql_backends_provide_every_store_protocol(opened):
    store = opened()
    for protocol in (Store, EventStore, StoreLifecycle, AgentSessions, ReplyOutbox,
                     CallRecords, Reactions, DeliveryLog, WebhookSecrets, SQLTables):
        assert isinstance(store, protocol), protocol.__name__


def test_a_new_backend_needs_only_what_event_store_lists():
    listed = {name for name in vars(EventStore) if not name.startswith("_")}
    listed |= set(EventStore.__annotations__)
    toy = ToyStore(Clock())
    assert {name for name in dir(toy) if not name.startswith("_")} == listed
    assert not isinstance(toy, AgentSessions) and not isinstance(toy, Store)


# -- deliveries -----------------------------------------------------------------------------


def test_claim_voice_once(store):
    assert store.claim_voice("whd_1", "agent.message", "w1") is True
    assert store.claim_voice("whd_1", "agent.message", "w1") is False
    assert store.claim_voice("whd_2", "agent.message", "w1") is True


def test_claim_with_job_enqueues_only_when_new(store):
    assert store.claim_with_job("whd_1", "agent.message", "text_message", "{}") is True
    assert store.claim_with_job("whd_1", "agent.message", "text_message", "{}") is False
    jobs = store.jobs()
    assert [(j.delivery_id, j.kind, j.status, j.attempts) for j in jobs] == [
        ("whd_1", "text_message", "pending", 0)]


def test_claim_with_job_is_atomic(opened):
    store = opened()
    # The job insert fails (payload NOT NULL): the claim must be rolled back with it.
    with pytest.raises(StoreUnavailable):
        store.claim_with_job("whd_1", "agent.message", "text_message", None)
    assert store.jobs() == []
    assert store.claim_voice("whd_1", "agent.message", "w1") is True


def test_concurrent_claims_exactly_one_wins(store):
    results = in_threads(20, lambda i: store.claim_voice("whd_same", "agent.message", "w1"))
    assert results.count(True) == 1


def test_concurrent_claim_with_job_one_job(store):
    results = in_threads(
        12, lambda i: store.claim_with_job("whd_same", "agent.message", "text_message", "{}"))
    assert results.count(True) == 1
    assert len(store.jobs()) == 1


# -- replays: signed bytes under another delivery id -----------------------------------------


def signed(digest="digest_1"):
    return SignedBytes(digest, NOW + 600)


def test_claim_refuses_the_same_signed_bytes_under_another_id(store):
    assert store.claim_voice("whd_1", "agent.message", "owner", signed()) is True
    with pytest.raises(Replayed) as caught:
        store.claim_with_job("whd_2", "agent.reaction", "reaction", "{}", signed())
    assert caught.value.first_delivery_id == "whd_1"
    assert store.jobs() == []
    # The refused id was not claimed: nothing of the replay was kept.
    assert store.claim_voice("whd_2", "agent.message", "owner") is True


def test_claim_of_the_same_id_and_bytes_is_a_plain_duplicate(store):
    assert store.claim_voice("whd_1", "agent.message", "owner", signed()) is True
    assert store.claim_voice("whd_1", "agent.message", "owner", signed()) is False
    assert store.claim_with_job("whd_2", "agent.message", "text_message", "{}",
                                signed("digest_2")) is True
    assert store.claim_with_job("whd_2", "agent.message", "text_message", "{}",
                                signed("digest_2")) is False


def test_concurrent_replays_let_exactly_one_through(store):
    def claim(i):
        try:
            return store.claim_with_job(f"whd_{i}", "agent.reaction", "reaction", "{}",
                                        signed())
        except Replayed:
            return "replay"

    with ThreadPoolExecutor(16) as pool:
        results = list(pool.map(claim, range(16)))
    assert results.count(True) == 1 and results.count("replay") == 15
    assert len(store.jobs()) == 1


def test_signed_bytes_are_forgotten_once_expired(store):
    store.claim_voice("whd_1", "agent.message", "owner", signed())
    store.clock.advance(599)
    store.prune()
    with pytest.raises(Replayed):
        store.claim_voice("whd_2", "agent.message", "owner", signed())
    store.clock.advance(2)
    assert store.prune() == 1
    assert store.claim_voice("whd_3", "agent.message", "owner", signed()) is True


# -- voice replies --------------------------------------------------------------------------


def test_voice_reply_saved_and_replayed(store):
    assert store.claim_voice("whd_v", "agent.call", "w1")
    assert store.voice_reply("whd_v") is None
    assert store.save_voice_reply("whd_v", {"text": "It shipped.", "hangup": False}, "w1", 0)
    assert not store.save_voice_reply("whd_v", {"text": "second write loses"}, "w1", 0)
    assert store.voice_reply("whd_v") == {"text": "It shipped.", "hangup": False}
    assert store.voice_claim("whd_v") == ({"text": "It shipped.", "hangup": False}, NOW)
    assert store.voice_claim("whd_never") is None


def test_voice_claim_taken_over_only_when_its_heartbeat_is_stale(store):
    assert store.claim_voice("whd_v", "agent.call", "w1")
    assert not store.claim_voice("whd_v", "agent.call", "w2")
    store.clock.advance(3)
    assert store.take_over_voice("whd_v", "w2", stale=4) is None  # still beating
    store.renew_voice_claims("w1", ["whd_v", "whd_other"])
    store.clock.advance(3)
    assert store.take_over_voice("whd_v", "w2", stale=4) is None  # renewed 3 s ago
    assert store.voice_claim("whd_v") == (None, NOW + 3)
    store.clock.advance(2)
    assert store.take_over_voice("whd_v", "w2", stale=4) == 1
    # The dead holder's late writes change nothing: its heartbeat and its final line.
    store.renew_voice_claims("w1", ["whd_v"])
    assert not store.save_voice_reply("whd_v", {"text": "late"}, "w1", 0)
    assert store.voice_claim("whd_v") == (None, NOW + 8)
    assert store.save_voice_reply("whd_v", {"text": "answer"}, "w2", 1)
    store.clock.advance(60)
    assert store.take_over_voice("whd_v", "w3", stale=4) is None  # answered: nothing to run


def test_a_stale_voice_claim_is_taken_over_by_exactly_one_retry(store):
    assert store.claim_voice("whd_v", "agent.call", "dead")
    store.clock.advance(10)
    results = in_threads(12, lambda i: store.take_over_voice("whd_v", f"w{i}", stale=4))
    assert sorted(results, key=lambda r: r is None) == [1] + [None] * 11
    winner = f"w{results.index(1)}"
    assert store.save_voice_reply("whd_v", {"text": "answer"}, winner, 1)


def test_the_apps_voice_claims_run_on_every_backend(store):
    holder, retry = VoiceClaims(store, heartbeat=0.01), VoiceClaims(store, heartbeat=0.01)
    claim = holder.claim("whd_v", "agent.call")
    assert claim is not None and retry.claim("whd_v", "agent.call") is None
    assert retry.state("whd_v") == (None, False)
    holder.release(claim)  # its worker died: the heartbeat stops
    store.clock.advance(STALE_SECONDS + 1)
    assert retry.state("whd_v") == (None, True)
    taken = retry.take_over("whd_v")
    assert taken.attempt == 1 and holder.take_over("whd_v") is None
    claim({"text": "late"})  # the dead holder's line is not stored
    taken({"text": "answer"})
    assert retry.state("whd_v") == ({"text": "answer"}, False)


# -- jobs -----------------------------------------------------------------------------------


def test_claim_job_leases_and_reclaims_after_expiry(store):
    job_id = store.enqueue("reaction", "{}")
    job = store.claim_job("w1", lease=10)
    assert (job.id, job.attempts, job.status) == (job_id, 1, "running")
    assert store.claim_job("w2", lease=10) is None
    store.clock.advance(9)
    assert store.claim_job("w2", lease=10) is None
    store.clock.advance(2)
    again = store.claim_job("w2", lease=10)
    assert (again.id, again.attempts) == (job_id, 2)


def test_claim_job_order_and_due_time(store):
    first = store.enqueue("reaction", "1")
    assert store.claim_job("w", 60).id == first
    second = store.enqueue("reaction", "2")
    store.fail_job(first, "boom", retry_at=NOW + 30)
    assert store.claim_job("w", 60).id == second
    assert store.claim_job("w", 60) is None
    store.clock.advance(30)
    assert store.claim_job("w", 60).id == first


def test_extend_lease_and_release(store):
    job_id = store.enqueue("reaction", "{}")
    store.claim_job("w1", lease=10)
    store.clock.advance(8)
    assert store.extend_lease(job_id, "w1", 10) is True
    assert store.extend_lease(job_id, "w2", 10) is False
    store.clock.advance(8)
    assert store.claim_job("w2", lease=10) is None  # still leased to w1
    assert store.release_job(job_id, "w2") is False
    assert store.release_job(job_id, "w1") is True
    store.finish_job(job_id)  # w1's thread finishing after the hand-back changes nothing
    job = store.claim_job("w2", lease=10)
    assert (job.id, job.attempts) == (job_id, 1)  # the released attempt did not count


def test_an_outcome_from_a_lost_lease_is_not_recorded(store):
    job_id = store.enqueue("reaction", "{}")
    first = store.claim_job("w1", lease=10)
    store.clock.advance(11)  # w1's lease ran out: w2 runs the job again
    second = store.claim_job("w2", lease=10)
    store.finish_job(job_id, owner=("w1", first.attempts))
    store.fail_job(job_id, "late", retry_at=NOW, owner=("w1", first.attempts))
    assert (store.job(job_id).status, store.job(job_id).last_error) == ("running", None)
    store.clock.advance(11)  # and w2 lost it to w2's own next claim (the same worker name)
    assert store.claim_job("w2", lease=10).attempts == 3
    store.finish_job(job_id, owner=("w2", second.attempts))
    assert store.job(job_id).status == "running"
    store.finish_job(job_id, owner=("w2", 3))
    assert store.job(job_id).status == "done"


def test_finish_fail_dead_retry(store):
    done_id = store.enqueue("reaction", "{}")
    dead_id = store.enqueue("reaction", "{}")
    assert store.claim_job("w", 60).id == done_id
    store.finish_job(done_id)
    assert store.claim_job("w", 60).id == dead_id
    store.fail_job(dead_id, "ValueError: nope", retry_at=NOW + 5)
    assert store.job(dead_id).status == "pending"
    store.clock.advance(5)
    assert store.claim_job("w", 60).attempts == 2
    store.fail_job(dead_id, "ValueError: still nope")
    assert store.claim_job("w", 60) is None

    dead = store.job(dead_id)
    assert (dead.status, dead.attempts, dead.last_error) == ("dead", 2, "ValueError: still nope")
    assert store.job(done_id).status == "done"
    assert [j.id for j in store.jobs(status="dead")] == [dead_id]
    assert [j.id for j in store.jobs()] == [dead_id, done_id]
    assert store.job_counts() == {"dead": 1, "done": 1}
    assert store.open_job_counts() == [("reaction", "dead", 1)]

    assert store.retry_job(dead_id) is True
    assert store.retry_job(999_999) is False
    job = store.claim_job("w", 60)
    assert (job.id, job.attempts, job.last_error) == (dead_id, 1, "ValueError: still nope")


def test_concurrent_job_claims_never_share_a_job(store):
    ids = {store.enqueue("reaction", str(i)) for i in range(40)}

    def drain(i):
        got = []
        while (job := store.claim_job(f"w{i}", 60)) is not None:
            got.append(job.id)
        return got

    claimed = [job_id for got in in_threads(6, drain) for job_id in got]
    assert sorted(claimed) == sorted(ids)


# -- retention ------------------------------------------------------------------------------


def test_prune_retention(store):
    store.claim_voice("whd_old", "agent.call", "w1")
    store.enqueue("reaction", "{}", delivery_id="whd_old")
    store.save_voice_reply("whd_old", {"text": "old"}, "w1", 0)
    old_done = store.claim_job("w", 60).id
    store.finish_job(old_done)
    old_pending = store.enqueue("reaction", "{}")
    assert store.claim_job("w", 60).id == old_pending
    store.fail_job(old_pending, "boom", retry_at=NOW + 30 * DAY)
    store.clock.advance(7 * DAY + 1)
    store.claim_voice("whd_new", "agent.message", "w1")

    # The old delivery id, its voice reply, the finished job.
    assert store.prune(Retention()) == 3
    assert store.voice_reply("whd_old") is None
    assert store.claim_voice("whd_new", "agent.message", "w1") is False
    assert store.claim_voice("whd_old", "agent.message", "w1") is True
    assert store.job(old_done) is None
    assert store.job(old_pending) is not None
    assert store.prune(Retention()) == 0


def test_prune_retention_of_the_agent_records(opened):
    store = opened()
    store.claim_voice("whd_old", "agent.call", "w1")
    store.outbox_begin("whd_old", "+15550001111", "hi")
    store.save_session_state("call_old", {"step": "done"})
    store.save_call_record({"call_id": "call_old", "transcript": [{"role": "user"}]})
    store.save_reaction("whd_old", {"reaction_type": "love"})
    store.clock.advance(7 * DAY + 1)
    store.save_session_state("call_new", {"step": "booking"})

    # The old delivery id, its outbox row, the old session; call records and reactions stay.
    assert store.prune(Retention()) == 3
    assert store.outbox_entry("whd_old") is None
    assert store.session_state("call_old") == {}
    assert store.session_state("call_new") == {"step": "booking"}
    assert store.call_record("call_old")["transcript"] == [{"role": "user"}]
    assert [r["reaction_type"] for r in store.reactions()] == ["love"]
    assert store.prune(Retention()) == 0


# -- schema ---------------------------------------------------------------------------------


def test_migrate_twice_is_a_no_op(opened):
    store = opened()
    assert store.schema_version() == len(MIGRATIONS)
    assert store.migrate() == len(MIGRATIONS)
    assert store._one("SELECT COUNT(*) FROM schema_version")[0] == len(MIGRATIONS)


def test_a_version_2_database_is_upgraded_and_its_claims_kept(opened, monkeypatch):
    store = opened(migrate=False)
    monkeypatch.setattr("app.store.sql.MIGRATIONS", MIGRATIONS[:2])
    assert store.migrate() == 2
    store._exec("INSERT INTO deliveries (id, event, received_at) VALUES (?, ?, ?)",
                ("whd_before", "agent.call", NOW))
    monkeypatch.setattr("app.store.sql.MIGRATIONS", MIGRATIONS)
    assert opened().schema_version() == len(MIGRATIONS)
    # A claim made before the upgrade has no heartbeat: its age counts from its arrival.
    assert store.voice_claim("whd_before") == (None, NOW)
    assert store.take_over_voice("whd_before", "w2", stale=4) is None
    store.clock.advance(5)
    assert store.take_over_voice("whd_before", "w2", stale=4) == 1


def test_concurrent_migrate(opened):
    stores = [opened(migrate=False) for _ in range(6)]
    # On SQLite this also opens six connections on a brand-new file at once: each switches
    # it to WAL, a switch that does not wait on the busy timeout by itself.
    assert in_threads(6, lambda i: stores[i].migrate()) == [len(MIGRATIONS)] * 6
    assert stores[0]._one("SELECT COUNT(*) FROM schema_version")[0] == len(MIGRATIONS)


# -- failures -------------------------------------------------------------------------------


def test_broken_database_raises_store_unavailable(sql_backend, tmp_path, opened):
    if sql_backend == "sqlite":
        (tmp_path / "dir.db").mkdir()
        broken = "sqlite:///" + str(tmp_path / "dir.db")  # a directory: cannot be opened
    else:
        broken = f"postgresql://postgres@127.0.0.1:{free_port()}/nothing_listens"
    store = opened(migrate=False, url=broken)
    started = time.monotonic()
    with pytest.raises(StoreUnavailable) as info:
        store.claim_voice("whd_1", "agent.message", "w1")
    assert time.monotonic() - started < 5
    assert "store error" in str(info.value)  # the driver's words, for the log
    # A plain exception: app.errors answers it with 503 (tests/test_health.py pins the body).
    assert type(info.value).__mro__[1:] == (Exception, BaseException, object)


def test_migration_deferred_while_the_database_is_missing(pg_server):
    name = "t_created_later"
    store = PostgresStore(pg_server.url(name), timeout=0.5)
    try:
        with pytest.raises(StoreUnavailable):
            store.migrate()
        store.migrate_on_first_use()
        with pytest.raises(StoreUnavailable):
            store.claim_voice("whd_1", "agent.message", "w1")

        def refused(i):
            with pytest.raises(StoreUnavailable):
                store.claim_voice(f"whd_{i}", "agent.message", "w1")

        started = time.monotonic()
        in_threads(6, refused)  # one attempt for all of them, not six in a row
        assert time.monotonic() - started < 1.5
        with psycopg.connect(pg_server.url(), autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        deadline = time.monotonic() + 10
        while True:  # the pool reconnects in the background, with backoff
            try:
                store.ping()  # migrates first
                break
            except StoreUnavailable:
                assert time.monotonic() < deadline
                time.sleep(0.1)
        assert store.claim_voice("whd_1", "agent.message", "w1") is True
        assert store.schema_version() == len(MIGRATIONS)
    finally:
        store.close()
        pg_server.drop_database(name)


def test_rotated_webhook_secrets_stay_valid_for_the_grace_period(opened):
    store = opened()
    store.add_webhook_secret("account", "whsec_one", grace=60, webhook_id="wh_1", url="https://a")
    store.add_webhook_secret("agt_1", "whsec_agent", grace=60)
    store.clock.advance(10)
    store.add_webhook_secret("account", "whsec_two", grace=60, webhook_id="wh_1")
    live = {s.secret: s for s in store.webhook_secrets()}
    assert set(live) == {"whsec_one", "whsec_two", "whsec_agent"}
    assert live["whsec_one"].expires_at == store.clock() + 60
    assert live["whsec_two"].expires_at is None and live["whsec_agent"].expires_at is None
    assert store.webhook_secrets()[0].secret == "whsec_two"  # newest first
    store.clock.advance(61)
    assert {s.secret for s in store.webhook_secrets()} == {"whsec_two", "whsec_agent"}
    assert len(store.webhook_secrets(live_only=False)) == 3
    # Storing the same secret again (a retried CLI call) changes nothing.
    store.add_webhook_secret("account", "whsec_two", grace=60)
    assert {s.secret for s in store.webhook_secrets()} == {"whsec_two", "whsec_agent"}


def test_unsure_replies_are_counted_and_one_is_resent_through_its_job(opened):
    store = opened()
    jobs = [store.enqueue("text_message", "{}", delivery_id=f"d{i}") for i in range(4)]
    for _ in jobs:
        store.finish_job(store.claim_job("w", 60).id)
    for i, status in enumerate(["sending", "unknown", "sent", "failed"]):
        assert store.outbox_begin(f"d{i}", "+1555", f"text {i}", job_id=jobs[i])[1]
        if status != "sending":
            store.outbox_finish(f"d{i}", status)
    assert store.unsure_reply_count() == 2
    assert sorted((r["delivery_id"], r["status"], r["job_id"]) for r in store.unsure_replies()) \
        == [("d0", "sending", jobs[0]), ("d1", "unknown", jobs[1])]
    assert store.resend_reply(jobs[2]) is None  # sent: nothing in doubt
    assert store.resend_reply(jobs[1])["body"] == "text 1"
    assert store.outbox_entry("d1")["status"] == "resend"
    assert (store.job(jobs[1]).status, store.job(jobs[1]).attempts) == ("pending", 0)
    assert store.job(jobs[0]).status == "done"
    assert store.unsure_reply_count() == 1
    assert store.outbox_begin("d1", "+1555", "text 1", job_id=jobs[1]) == ("sending", True)


def test_the_delivery_log_writes_a_voice_turn_once_per_flush_in_its_last_version(opened,
                                                                                 monkeypatch):
    from app.console import journal as journal_module
    from app.console.journal import Journal
    from app.store.console import IN_FLIGHT

    monkeypatch.setattr(journal_module, "IN_FLIGHT_AFTER", 0.0)  # turns shown in flight at once
    store = opened()
    journal = Journal(store)
    journal.record("whd_text", "agent.message", "accepted", 200, channel="sms", said="hi")
    turn = journal.record("whd_voice", "agent.message", IN_FLIGHT, 200, channel="voice",
                          call_id="call_1", said="hours?")
    journal.voice_finished(turn, "answered", 0.004, 0.9, "We open at 9.")
    assert journal.flush() == 2  # three rows recorded, the voice turn's twice
    rows = {row["delivery_id"]: row for row in store.delivery_log()}
    assert set(rows) == {"whd_text", "whd_voice"}
    assert rows["whd_voice"]["outcome"] == "answered"
    assert rows["whd_voice"]["answered"] == "We open at 9."
    assert rows["whd_voice"]["first_line_ms"] == pytest.approx(4.0)
    assert rows["whd_text"]["said"] == "hi"
    # A turn that ends after its start was written is updated in place.
    late = journal.record("whd_late", "agent.message", IN_FLIGHT, 200, channel="voice")
    assert journal.flush() == 1
    assert [row["delivery_id"] for row in store.in_flight_turns(0)] == ["whd_late"]
    journal.voice_finished(late, "deadline", 0.003, 15.0, "Sorry.")
    assert journal.flush() == 1
    assert [row["outcome"] for row in store.delivery_log(voice=True)] == ["deadline", "answered"]


def test_the_delivery_log_shows_a_voice_turn_in_flight_once_it_has_run_a_while(opened,
                                                                                monkeypatch):
    from app.console import journal as journal_module
    from app.console.journal import Journal
    from app.store.console import IN_FLIGHT

    monkeypatch.setattr(journal_module, "IN_FLIGHT_AFTER", 60.0)  # however slow this machine
    store = opened()
    journal = Journal(store)
    now = time.time()
    quick, _ = (journal.record(f"whd_{name}", "agent.message", IN_FLIGHT, 200, channel="voice",
                               call_id=f"call_{name}", received_at=now)
                for name in ("quick", "slow"))
    journal.record("whd_old", "agent.message", IN_FLIGHT, 200, channel="voice",
                   call_id="call_old", received_at=now - 120)
    assert journal.flush() == 1  # the turns that started just now are held back
    assert [row["delivery_id"] for row in store.in_flight_turns(now - 600)] == ["whd_old"]

    journal.voice_finished(quick, "answered", 0.004, 0.5, "Yes.")
    monkeypatch.setattr(journal_module, "IN_FLIGHT_AFTER", 0.0)  # as if they had run a while
    assert journal.flush() == 2  # the quick turn once, ended; the slow one in flight
    rows = {row["delivery_id"]: row for row in store.delivery_log()}
    assert rows["whd_quick"]["outcome"] == "answered"
    assert rows["whd_quick"]["answered"] == "Yes."
    assert sorted(row["delivery_id"] for row in store.in_flight_turns(now - 600)) == [
        "whd_old", "whd_slow"]
    assert journal.flush() == 0

    # A worker that stops writes its turns in flight, however young.
    monkeypatch.setattr(journal_module, "IN_FLIGHT_AFTER", 60.0)
    journal.record("whd_last", "agent.message", IN_FLIGHT, 200, channel="voice",
                   call_id="call_last")
    assert journal.flush() == 0
    assert journal.flush(last=True) == 1
    assert "whd_last" in {row["delivery_id"] for row in store.in_flight_turns(now - 600)}

    # One flush at a time: a second one leaves the rows to the next.
    journal.record("whd_text", "agent.message", "accepted", 200, channel="sms")
    with journal._flushing:
        assert journal.flush() == 0
    assert journal.flush() == 1


def test_the_consoles_delivery_log_queries_walk_indexes_not_the_table(make_store, monkeypatch):
    """SQLite's plan of every console read of the delivery log: an index walk, so that the
    pages stay fast with 100,000 rows; a text's row is in neither the call nor the voice
    index (two fewer index writes per acknowledgement)."""
    from app.console.journal import Journal
    from app.store.console import IN_FLIGHT

    traced = []
    connect = sqlite3.connect

    def traced_connect(*args, **kwargs):
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(traced.append)
        return conn

    monkeypatch.setattr(sqlite3, "connect", traced_connect)
    store = make_store("sqlite")
    journal = Journal(store)
    journal.record("whd_text", "agent.message", "accepted", 200, channel="sms",
                   conversation_id="conv_1", said="hi")
    turn = journal.record("whd_voice", "agent.message", IN_FLIGHT, 200, channel="voice",
                          call_id="call_1", said="hours?")
    journal.voice_finished(turn, "answered", 0.004, 0.9, "We open at 9.")
    journal.flush()
    del traced[:]
    store.delivery_log(voice=True)
    store.delivery_log(voice=False)
    store.delivery_log(call_id="call_1")
    store.delivery_log(failures_first=True)
    store.in_flight_turns(NOW - 60)
    store.recent_voice_latencies(NOW - 300)
    store.delivery_counts(NOW - 300)
    reads = [sql for sql in traced if sql.lstrip().upper().startswith("SELECT")
             and "FROM delivery_log" in sql]
    assert len(reads) == 8  # failures first: two reads

    def plan(sql):
        return " | ".join(row[3] for row in store.run(
            lambda cur: cur.execute("EXPLAIN QUERY PLAN " + sql).fetchall(), transaction=False))

    plans = {sql: plan(sql) for sql in reads}
    for sql, steps in plans.items():
        assert "INDEX" in steps, (sql, steps)
    assert any("COVERING INDEX delivery_log_voice" in steps and "first_line_ms" in sql
               for sql, steps in plans.items())
    assert any("INDEX delivery_log_call_id (call_id=?)" in steps for steps in plans.values())
    definitions = dict(store.run(lambda cur: cur.execute(
        "SELECT name, sql FROM sqlite_master WHERE tbl_name = 'delivery_log' AND type = 'index' "
        "AND sql IS NOT NULL").fetchall(), transaction=False))
    assert definitions["delivery_log_call_id"].endswith("WHERE call_id IS NOT NULL")
    assert definitions["delivery_log_voice"].endswith("WHERE channel = 'voice'")


def test_the_delivery_log_writes_many_rows_at_once_and_updates_them(opened):
    from app.console.journal import Journal
    from app.store.console import IN_FLIGHT, ROWS_PER_STATEMENT

    store = opened()
    journal = Journal(store)
    count = 2 * ROWS_PER_STATEMENT + 5  # more than one statement's worth, and a part one
    # Arrived long ago: shown in flight at the first flush.
    turns = [journal.record(f"whd_{i}", "agent.message", IN_FLIGHT, 200, channel="voice",
                            call_id=f"call_{i}", received_at=1000.0 + i) for i in range(count)]
    assert journal.flush() == count
    for i, turn in enumerate(turns[::2]):
        journal.voice_finished(turn, "answered", 0.002, 1.0, f"answer {i}")
    assert journal.flush() == len(turns[::2])
    rows = {row["delivery_id"]: row for row in store.delivery_log(limit=count + 10)}
    assert len(rows) == count
    assert [rows[f"whd_{i}"]["outcome"] for i in range(4)] == [
        "answered", IN_FLIGHT, "answered", IN_FLIGHT]
    assert rows[f"whd_{count - 1}"]["answered"] == f"answer {(count - 1) // 2}"
    assert rows[f"whd_{count - 1}"]["call_id"] == f"call_{count - 1}"
