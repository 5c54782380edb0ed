"""Notifications for a fleet (runner.db.notify): a few fixed channels whatever is watched,
no NOTIFY inside a transaction that changes jobs (the hints follow the commit, coalesced),
and the routing in the payload."""

from __future__ import annotations

import asyncio
import uuid

import aiohttp
import asyncpg

from runner import jobs
from runner.cancel.waiting import wait_stopped
from runner.db import connect, notify
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from runner.watch import JobWatch
from runner.worker import records, store
from tests.client import Api, wait_event
from tests.conftest import Cluster

OWNER = "0x" + "ab" * 20


async def test_the_listener_listens_on_a_few_fixed_channels_whatever_is_watched(service: Runtime) -> None:
    assert service.listener is not None and service.listener._conn is not None
    async with service.watch.watching(uuid.uuid4()), service.watch.watching_wallet(OWNER):
        channels = {r[0] for r in await service.listener._conn.fetch("SELECT pg_listening_channels()")}
    assert channels == {
        notify.cancel_channel(service.instance_id),
        notify.SUBMIT,
        notify.CHANGE,
        notify.AUTH,
        notify.PROBE,
        notify.WEBHOOK,
    }


async def test_a_job_changing_transaction_sends_no_notify_of_its_own(dsn: str, service: Runtime) -> None:
    """Submit, claim and result, without the Notifier: nothing at all is sent. (A sentinel
    sent after them is the barrier: notifications arrive in commit order.)"""
    job_id = uuid.uuid4()
    heard: list[tuple[str, str]] = []
    sentinel = asyncio.Event()
    listener = await connect(dsn)

    def hear(_conn: object, _pid: int, channel: str, payload: str) -> None:
        if payload == "sentinel":
            sentinel.set()
        else:
            heard.append((channel, payload))

    try:
        for channel in (
            notify.SUBMIT,
            notify.CHANGE,
            "runner_job_" + job_id.hex,
            "runner_wallet_" + "ab" * 20,
        ):
            await listener.add_listener(channel, hear)
        pool = service.pool
        await pool.fetchrow(
            "SELECT * FROM runner_submit($1, $2, NULL, '{}', $3, NULL, NULL, 100)",
            job_id,
            OWNER,
            [{"id": str(uuid.uuid4()), "backend": "nobody", "input": {}}],
        )
        claimed = await store.claim(
            pool, worker_id="test", limit=1, lease_s=60, capacity=records.Capacity(["nobody"], {})
        )
        assert [c.id for c in claimed] == [job_id]
        await store.write_results(
            pool,
            [
                records.ExecutionResult(
                    job_id, claimed[0].executions[0].id, "completed", {"ok": True}, None, 1
                )
            ],
            "test",
        )
        await pool.execute(f"NOTIFY {notify.SUBMIT}, 'sentinel'")
        await asyncio.wait_for(sentinel.wait(), 10)
    finally:
        await listener.close()
    assert heard == []


async def test_hints_are_coalesced_and_routed(dsn: str, service: Runtime) -> None:
    """A burst of changes goes out in a few NOTIFY transactions, not one each, and wakes the
    watchers of exactly the jobs and wallets it names."""
    watched, other = uuid.uuid4(), uuid.uuid4()
    async with (
        service.watch.watching(watched) as job_changed,
        service.watch.watching(other) as other_changed,
        service.watch.watching_wallet(OWNER) as wallet_changed,
    ):
        before = service.notifier.sent
        for _ in range(500):
            service.notifier.changed(uuid.uuid4(), "0x" + "cd" * 20)
        service.notifier.changed(watched, OWNER)
        await asyncio.wait_for(asyncio.gather(job_changed.wait(), wallet_changed.wait()), 10)
        assert not other_changed.is_set()
        assert service.notifier.sent - before <= 3


def test_a_submit_hint_names_the_backends_a_job_needs() -> None:
    assert notify.wanted("", frozenset())
    assert notify.wanted("gpu,cpu+gpu", frozenset({"gpu"}))
    assert not notify.wanted("cpu+gpu", frozenset({"gpu"}))
    assert notify.wanted(notify.work_entry(["b", "a", "a"]), frozenset({"a", "b", "c"}))
    keys = [f"j{uuid.uuid4().hex}" for _ in range(1000)]
    _, _, sent, numbers = notify.hint_arguments([], keys)
    assert sent == keys and numbers == sorted(numbers) and numbers[-1] > 0
    payloads = [",".join(k for k, n in zip(keys, numbers, strict=True) if n == i) for i in set(numbers)]
    assert all(len(p) <= notify.MAX_PAYLOAD for p in payloads)


async def test_jobs_submit_hands_its_hints_to_the_notifier(service: Runtime, db: asyncpg.Connection) -> None:
    heard: asyncio.Queue[str] = asyncio.Queue()
    await db.add_listener(notify.SUBMIT, lambda *args: heard.put_nowait(args[-1]))
    await jobs.submit(
        service.pool,
        owner=OWNER,
        executions=[jobs.NewExecution("demo", {"seconds": 60})],
        timeout_s=None,
        metadata={},
        max_active=100,
        per_minute=1000,
        notifier=service.notifier,
    )
    assert await asyncio.wait_for(heard.get(), 10) == "demo"


async def test_a_cancel_is_one_notifying_commit_with_its_change_hint(service: Runtime) -> None:
    """A job's or an execution's cancel tells its watchers inside its own transaction: the
    cancel's commit is the one that wakes every listening backend (Postgres up to 18 signals
    them all for each notifying commit), not a second one from the Notifier after it."""
    for target in ("job", "execution"):
        job, _ = await jobs.submit(
            service.pool,
            owner=OWNER,
            executions=[jobs.NewExecution("nobody", {})],
            timeout_s=None,
            metadata={},
            max_active=100,
            per_minute=1000,
        )
        job_id, execution_id = job["id"], uuid.UUID(job["executions"][0]["id"])
        async with (
            service.watch.watching(job_id) as job_changed,
            service.watch.watching_wallet(OWNER) as wallet_changed,
        ):
            before = service.notifier.sent
            if target == "job":
                await service.canceller.cancel_job(job_id, actor=OWNER, admin=False, reason=None)
            else:
                await service.canceller.cancel_execution(
                    job_id, execution_id, actor=OWNER, admin=False, reason=None
                )
            await asyncio.wait_for(asyncio.gather(job_changed.wait(), wallet_changed.wait()), 10)
            assert service.notifier.sent == before, target


async def test_a_hint_commits_without_waiting_for_the_disk(db: asyncpg.Connection) -> None:
    """A notifying transaction holds Postgres' notify lock until its commit is done, and it
    writes a commit record even when it writes nothing else: a hint's transaction commits
    asynchronously, so it does not hold that lock -- which every cancel's commit waits
    for -- across a WAL flush. Only its own transaction."""
    async with db.transaction():
        await db.execute(notify.HINT_SQL, *notify.hint_arguments(["demo"], []))
        assert await db.fetchval("SHOW synchronous_commit") == "off"
    assert await db.fetchval("SHOW synchronous_commit") == "on"


async def test_a_change_hint_goes_out_only_for_what_someone_watches(
    service: Runtime, db: asyncpg.Connection
) -> None:
    """Each notifying commit wakes every listening backend (Postgres up to 18): a change hint
    no instance has a watcher for is not sent at all. Notifications arrive in commit order,
    so the watched job's hint is the barrier: had the first been sent, it would be heard."""
    heard: list[str] = []
    arrived = asyncio.Event()

    def hear(*args: object) -> None:
        heard.extend(notify.decode_change(str(args[-1])))
        arrived.set()

    await db.add_listener(notify.CHANGE, hear)
    unwatched, watched = uuid.uuid4(), uuid.uuid4()
    service.notifier.changed(unwatched, "0x" + "cd" * 20)
    async with service.watch.watching(watched) as changed:
        service.notifier.changed(watched, OWNER)
        await asyncio.wait_for(changed.wait(), 10)
    while notify.job_key(watched) not in heard:
        arrived.clear()
        await asyncio.wait_for(arrived.wait(), 10)
    assert heard == [notify.job_key(watched)]  # neither the other job nor the unwatched wallet


async def test_a_watched_key_is_registered_while_watched_and_again_after_a_crash(
    service: Runtime, db: asyncpg.Connection
) -> None:
    job_id = uuid.uuid4()
    key = notify.job_key(job_id)
    lasts = "SELECT until - now() FROM watched WHERE key = $1"
    async with service.watch.watching(job_id):
        left = await db.fetchval(lasts, key)
        assert left is not None and left.total_seconds() > notify.WATCH_TTL_S - 10
        # Postgres crashed (an unlogged table comes back empty): the listener reconnects,
        # and the keys watched here are registered again.
        await db.execute("TRUNCATE watched")
        assert service.listener is not None and service.listener._conn is not None
        await db.execute("SELECT pg_terminate_backend($1)", service.listener._conn.get_server_pid())
        async with asyncio.timeout(10):
            while await db.fetchval(lasts, key) is None:  # noqa: ASYNC110 - waiting on the row
                await asyncio.sleep(0.02)
    # No longer watched here: the next renewal leaves it to expire.
    await db.execute("UPDATE watched SET until = now() - interval '2 minutes' WHERE key = $1", key)
    await service.watch.renew()
    assert await db.fetchval(lasts, key) is None  # expired a while ago: cleaned up


async def test_after_a_reconnect_waiters_are_woken_once_their_keys_are_registered_again(
    service: Runtime, db: asyncpg.Connection
) -> None:
    """A change committed between a waiter's re-read after a reconnect and its key's new
    registration would send no hint (the key is not in the table yet): the waiters are woken
    again once the keys are back."""
    job_id = uuid.uuid4()
    key = notify.job_key(job_id)
    assert service.listener is not None and service.listener._conn is not None
    async with service.watch.watching(job_id) as changed:
        async with db.transaction():
            await db.execute("TRUNCATE watched")  # a crash emptied it; the renewal waits on this lock
            await db.execute("SELECT pg_terminate_backend($1)", service.listener._conn.get_server_pid())
            await asyncio.wait_for(changed.wait(), 10)  # woken at the reconnect, to re-read
            changed.clear()
        await asyncio.wait_for(changed.wait(), 10)  # and again once registered
        assert await db.fetchval("SELECT 1 FROM watched WHERE key = $1", key) == 1


async def test_a_cancel_waiting_for_the_stop_reads_it_again_without_a_hint(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """An API instance of an older release registers no watched keys, so the holder sends its
    stop's hint to nobody: a `?wait=true` there still sees the stop, by reading it again."""
    front = await cluster.start("api")
    await cluster.start("worker")
    api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
    job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
    await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    job_id = uuid.UUID(job["id"])
    assert api.wallet is not None
    await front.canceller.cancel_job(job_id, actor=api.wallet.address, admin=False, reason=None)
    unregistered = JobWatch(None)  # as an instance of the previous release
    assert await wait_stopped(front.pool, unregistered, None, job_id, 8.0, None)
