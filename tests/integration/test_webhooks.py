"""Webhooks end to end: a real receiver on 127.0.0.1 verifying every request with the
`standardwebhooks` library; events written by triggers, delivered from the outbox."""

from __future__ import annotations

import asyncio
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from runner import jobs
from runner.backends.config import BackendSpec
from runner.config import Settings
from runner.db import connect
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from runner.service import running_service
from runner.webhooks.delivery import WebhookSender
from runner.webhooks.signing import new_secret
from tests.client import Api
from tests.conftest import Cluster
from tests.pg import StoppablePostgres
from tests.procs import ServeProcess
from tests.webhook_receiver import Receiver, payload_of

OPEN = {"webhook_allow_http": True, "webhook_allow_private": True}


@pytest.fixture
async def receiver() -> AsyncIterator[Receiver]:
    r = Receiver()
    yield r
    if r.hold is not None:
        r.hold.set()
    await r.stop()


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[StoppablePostgres]:
    """A Postgres of the test's own, which it may stop."""
    pg = StoppablePostgres(tmp_path)
    pg.start()
    yield pg
    pg.start()  # a test that failed mid-outage leaves it stopped
    pg.cleanup()


async def _signed_up(api: Api, receiver: Receiver) -> None:
    status, body = await api.call("GET", "/webhooks/secret")
    assert status == 200 and body["secret"].startswith("whsec_")
    receiver.secret = body["secret"]


async def _outbox(dsn: str, job_id: str) -> list[asyncpg.Record]:
    conn = await connect(dsn)
    try:
        return await conn.fetch("SELECT * FROM webhook_outbox WHERE job_id = $1 ORDER BY id", job_id)
    finally:
        await conn.close()


async def _until_outbox(dsn: str, job_id: str, predicate: Any, timeout: float = 30.0) -> list[asyncpg.Record]:
    """Wait on the rows themselves."""
    deadline = time.monotonic() + timeout
    while True:
        rows = await _outbox(dsn, job_id)
        if predicate(rows):
            return rows
        assert time.monotonic() < deadline, [dict(r) for r in rows]
        await asyncio.sleep(0.05)


async def _audit(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/jobs/{job_id}/audit")
    assert status == 200
    events: list[dict[str, Any]] = body["events"]
    return events


async def _queued_job(rt: Runtime) -> uuid.UUID:
    """A job no instance runs (its backend is nobody's), for outbox rows written by hand."""
    job, _ = await jobs.submit(
        rt.pool,
        owner="0x" + "ab" * 20,
        executions=[jobs.NewExecution("nobody", {})],
        timeout_s=None,
        metadata={},
        max_active=100,
        per_minute=1000,
    )
    job_id: uuid.UUID = job["id"]
    return job_id


def _metric(rt: Runtime, start: str) -> float:
    line = next(x for x in rt.metrics.render().decode().splitlines() if x.startswith(start))
    return float(line.rsplit(" ", 1)[1])


async def test_every_event_of_a_completed_a_failed_and_a_cancelled_replicate_job_in_order(
    cluster: Cluster, fake_gpu: FakeProviders, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    # Replicate reports a cancelled prediction over (`canceled`, with its completed_at): a
    # confirmed stop. (RunPod's CANCELLED proves none, so it never sends remote_stopped.)
    rt = await cluster.start(**OPEN)
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    await _signed_up(api, receiver)
    await receiver.start()

    done = await api.submit({"backend": "demo", "input": {"seconds": 0.01}}, webhook=receiver.url)
    assert done["webhook"] == receiver.url and done["webhook_events"] == [
        "started",
        "completed",
        "failed",
        "cancelled",
        "remote_stopped",
    ]
    failed = await api.submit(
        {"backend": "demo", "input": {"fail": True}}, webhook=receiver.url, webhook_events=["failed"]
    )
    held = await api.submit({"backend": "rep", "input": {"hold": True}}, webhook=receiver.url)
    await api.until_execution(held["id"], 0, lambda e: e["remote_id"] is not None)
    assert (await api.cancel(held["id"]))[0] == 200

    await receiver.wait(
        lambda r: (
            len(r.events_of(held["id"])) == 3
            and len(r.events_of(done["id"])) == 2
            and len(r.events_of(failed["id"])) == 1
        )
    )
    assert receiver.events_of(done["id"]) == ["job.started", "job.completed"]
    assert receiver.events_of(failed["id"]) == ["job.failed"]  # only what it asked for
    assert receiver.events_of(held["id"]) == ["job.started", "job.cancelled", "job.remote_stopped"]
    assert receiver.refused_signatures == 0
    stopped = next(p for p in receiver.verified if p["type"] == "job.remote_stopped")
    assert stopped["data"]["executions"][0]["remote_cancel"] == "confirmed"
    cancelled = next(p for p in receiver.verified if p["type"] == "job.cancelled")
    assert cancelled["data"]["status"] == "cancelled" and cancelled["timestamp"].endswith("Z")
    assert len({p["id"] for p in receiver.verified}) == len(receiver.verified) == 6
    assert all(a["headers"]["webhook-id"].startswith("msg_") for a in receiver.arrivals)

    # The receiver has answered; the rows are marked just after.
    rows = await _until_outbox(
        cluster.dsn, held["id"], lambda rs: len(rs) == 3 and all(r["state"] == "delivered" for r in rs)
    )
    audit = await _audit(api, held["id"])
    delivered = [e["detail"]["event"] for e in audit if e["kind"] == "webhook_delivered"]
    assert delivered == ["started", "cancelled", "remote_stopped"]
    assert [r["attempts"] for r in rows] == [1, 1, 1]

    # A re-run keeps the webhook.
    status, again = await api.call("POST", f"/jobs/{held['id']}/rerun")
    assert status == 201 and again["webhook"] == receiver.url
    assert again["webhook_events"] == held["webhook_events"]


async def test_a_receiver_down_for_a_while_gets_the_event_once_when_it_is_back(
    cluster: Cluster, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(**OPEN, webhook_retry_base_s=0.1)
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    await _signed_up(api, receiver)
    job = await api.submit(
        {"backend": "demo", "input": {"seconds": 0.01}}, webhook=receiver.url, webhook_events=["completed"]
    )
    # Nothing listens yet: attempts fail and are retried.
    await _until_outbox(cluster.dsn, job["id"], lambda rs: rs and rs[0]["attempts"] >= 3)
    assert _metric(rt, 'runner_webhook_failures_total{status="network"}') >= 2
    assert rt.worker is not None
    await rt.worker.housekeeping()  # the fleet's gauges, as its housekeeper counts them
    assert _metric(rt, "runner_webhooks_pending") >= 1
    await receiver.start()
    await receiver.wait(lambda r: r.verified)
    rows = await _until_outbox(cluster.dsn, job["id"], lambda rs: rs and rs[0]["state"] == "delivered")
    assert receiver.events_of(job["id"]) == ["job.completed"]
    assert len(receiver.arrivals) == 1  # delivered once: not again after the 2xx
    audit = await _audit(api, job["id"])
    failures = [e for e in audit if e["kind"] == "webhook_failed"]
    assert len(failures) >= 2 and all(f["detail"]["error"].startswith("network") for f in failures)
    assert not any(f["detail"]["gave_up"] for f in failures)
    ok = [e for e in audit if e["kind"] == "webhook_delivered"]
    assert len(ok) == 1 and ok[0]["detail"]["attempt"] == rows[0]["attempts"] >= 3
    assert ok[0]["detail"]["webhook_id"] == rows[0]["msg_id"] == receiver.verified[0]["id"]


async def test_a_slow_receiver_times_out_and_is_retried_with_the_same_id(
    cluster: Cluster, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(**OPEN, webhook_timeout_s=0.5, webhook_retry_base_s=0.1)
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    await _signed_up(api, receiver)
    receiver.hold, receiver.hold_first = asyncio.Event(), 1  # the first request hangs
    await receiver.start()
    job = await api.submit(
        {"backend": "demo", "input": {"seconds": 0.01}}, webhook=receiver.url, webhook_events=["started"]
    )
    await receiver.wait(lambda r: r.verified)
    first, second = receiver.arrivals[:2]
    assert first["headers"]["webhook-id"] == second["headers"]["webhook-id"]
    assert first["body"] == second["body"]  # the same bytes each attempt
    await _until_outbox(cluster.dsn, job["id"], lambda rs: rs and rs[0]["state"] == "delivered")
    audit = await _audit(api, job["id"])
    failed = [e for e in audit if e["kind"] == "webhook_failed"]
    assert failed and failed[0]["detail"]["error"].startswith("timeout")
    assert _metric(rt, 'runner_webhook_failures_total{status="timeout"}') >= 1
    assert [e["detail"]["attempt"] for e in audit if e["kind"] == "webhook_delivered"] == [
        len(receiver.arrivals)
    ]


async def test_deliveries_owed_by_a_killed_instance_are_made_by_another(
    cluster: Cluster, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    env = {"RUNNER_WEBHOOK_ALLOW_HTTP": "1", "RUNNER_WEBHOOK_ALLOW_PRIVATE": "1"}
    first = await ServeProcess(cluster.dsn, env_extra=env).start()
    try:
        api = await Api.signed_in(http, first.base_url)
        await _signed_up(api, receiver)
        receiver.hold, receiver.hold_first = asyncio.Event(), 1  # it is mid-delivery when killed
        await receiver.start()
        job = await api.submit(
            {"backend": "demo", "input": {"seconds": 0.01}},
            webhook=receiver.url,
            webhook_events=["started", "completed"],
        )
        await receiver.wait(lambda r: r.arrivals)
        first.kill()
        await first.wait()
    finally:
        await first.stop()
    receiver.hold.set()
    await cluster.start("worker", **OPEN)  # delivers once the dead one's claim has lapsed
    await receiver.wait(lambda r: "job.completed" in r.events_of(job["id"]), timeout=60)
    # The event the dead instance was sending, sent again with its id; then the rest, in order
    # (`started` twice if the job itself was requeued from the dead instance and run again).
    types = receiver.events_of(job["id"])
    assert types[0] == "job.started" and types[-1] == "job.completed"
    assert set(types[1:-1]) <= {"job.started"}
    assert receiver.arrivals[0]["headers"]["webhook-id"] == receiver.verified[0]["id"]
    rows = await _until_outbox(cluster.dsn, job["id"], lambda rs: all(r["state"] == "delivered" for r in rs))
    assert len(rows) == len(types) and rows[0]["attempts"] == 2  # the dead one's attempt, then this one's


async def test_private_addresses_are_refused_without_the_setting(
    cluster: Cluster, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(webhook_allow_http=True)
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    demo = {"backend": "demo", "input": {"seconds": 0.01}}
    for url in (
        "http://127.0.0.1:9/x",
        "https://localhost/x",
        "https://10.1.2.3/",
        "https://[::1]/",
        "https://169.254.169.254/latest/meta-data",
        "https://[fd00:ec2::254]/",
        "https://224.0.0.1/",
        "https://[::ffff:127.0.0.1]/",
        "https://no-such-host.invalid/",
    ):
        status, body = await api.call("POST", "/jobs", json={"executions": [demo], "webhook": url})
        assert status == 400 and body["error"] == "invalid_request", (url, body)
        assert "webhook" in body["message"], body
    status, body = await api.call("POST", "/jobs", json={"executions": [demo], "webhook": "ftp://x.example/"})
    assert status == 400 and "webhook" in body["message"]
    status, body = await api.call(
        "POST",
        "/jobs",
        json={"executions": [demo], "webhook": "https://x.example/", "webhook_events": ["exploded"]},
    )
    assert status == 400 and "webhook_events" in body["message"]

    # And at delivery (DNS may have changed since the submit): nothing reaches the receiver.
    await receiver.start()
    sender = WebhookSender(rt.pool, rt.settings, rt.metrics, "test", lambda row: {})
    try:
        for url in (receiver.url, receiver.url.replace("127.0.0.1", "localhost")):
            status_, error = await sender._post(url, "msg_x", b"{}", ["whsec_" + "A" * 44])
            assert status_ is None and error is not None, (url, error)
    finally:
        await sender.close()
    assert receiver.arrivals == []


async def test_the_secret_is_made_once_and_a_rotated_one_still_signs_for_a_day(
    cluster: Cluster, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(**OPEN)
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    first = (await api.call("GET", "/webhooks/secret"))[1]["secret"]
    assert (await api.call("GET", "/webhooks/secret"))[1]["secret"] == first
    status, rotated = await api.call("POST", "/webhooks/secret/rotate")
    assert status == 200 and rotated["secret"] != first
    assert (await api.call("GET", "/webhooks/secret"))[1]["secret"] == rotated["secret"]
    other = await Api.signed_in(http, api.base)
    assert (await other.call("GET", "/webhooks/secret"))[1]["secret"] not in (first, rotated["secret"])

    receiver.secret = first  # a receiver not yet updated still verifies
    await receiver.start()
    await api.submit(
        {"backend": "demo", "input": {"seconds": 0.01}}, webhook=receiver.url, webhook_events=["completed"]
    )
    await receiver.wait(lambda r: r.verified)
    signatures = receiver.arrivals[0]["headers"]["webhook-signature"].split(" ")
    assert len(signatures) == 2 and all(s.startswith("v1,") for s in signatures)
    assert payload_of(receiver.arrivals[0])["type"] == "job.completed"


async def test_a_webhook_job_without_a_backend_spec_in_the_listing(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """The fields are in every job JSON: null without a webhook."""
    rt = await cluster.start(backends={"demo": BackendSpec(name="demo", kind="demo")})
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job = await api.submit({"backend": "demo", "input": {"seconds": 0.01}})
    assert job["webhook"] is None and job["webhook_events"] is None
    listed = (await api.call("GET", "/jobs"))[1]["jobs"][0]
    assert listed["webhook"] is None and listed["webhook_events"] is None


async def test_the_triggers_write_each_event_with_its_change_and_only_those_asked_for(
    cluster: Cluster, http: aiohttp.ClientSession
) -> None:
    """Statuses changed by hand (no worker runs here): the outbox follows, in the same
    transaction; a requeue is no event; remote_stopped comes from the execution's confirmation."""
    rt = await cluster.start("api", **OPEN)
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    url = "http://127.0.0.1:9/hook"
    every = await api.submit({"backend": "demo", "input": {}}, webhook=url)
    some = await api.submit({"backend": "demo", "input": {}}, webhook=url, webhook_events=["remote_stopped"])
    none = await api.submit({"backend": "demo", "input": {}})
    conn = await connect(cluster.dsn)
    try:
        await conn.execute("INSERT INTO workers (id, lease_expires_at) VALUES ('w', now() + interval '1 h')")
        for job in (every, some, none):
            async with conn.transaction():
                await conn.execute(
                    "UPDATE jobs SET status = 'running', worker_id = 'w' WHERE id = $1", job["id"]
                )
                assert [
                    r["event"]
                    for r in await conn.fetch("SELECT event FROM webhook_outbox WHERE job_id = $1", job["id"])
                ] == (["started"] if job is every else [])  # already there, before the commit
            await conn.execute("UPDATE jobs SET status = 'queued', worker_id = NULL WHERE id = $1", job["id"])
            await conn.execute("UPDATE jobs SET status = 'running', worker_id = 'w' WHERE id = $1", job["id"])
            await conn.execute(
                "UPDATE jobs SET status = 'cancelled', worker_id = NULL, cancelled_at = now() WHERE id = $1",
                job["id"],
            )
            await conn.execute(
                "UPDATE executions SET status = 'cancelled', remote_cancel = 'acknowledged' "
                "WHERE job_id = $1",
                job["id"],
            )
            await conn.execute(
                "UPDATE executions SET remote_cancel = 'confirmed' WHERE job_id = $1", job["id"]
            )
            await conn.execute(
                "UPDATE executions SET remote_cancel = 'confirmed' WHERE job_id = $1", job["id"]
            )
        events = {
            job["id"]: [
                r["event"]
                for r in await conn.fetch(
                    "SELECT event FROM webhook_outbox WHERE job_id = $1 ORDER BY id", job["id"]
                )
            ]
            for job in (every, some, none)
        }
        stopped = await conn.fetchrow("SELECT * FROM webhook_outbox WHERE event = 'remote_stopped' LIMIT 1")
    finally:
        await conn.close()
    assert events[every["id"]] == ["started", "started", "cancelled", "remote_stopped"]
    assert events[some["id"]] == ["remote_stopped"]
    assert events[none["id"]] == []
    assert stopped["execution_id"] is not None and stopped["url"] == url and stopped["state"] == "pending"


async def test_a_redirect_is_not_followed(cluster: Cluster, receiver: Receiver) -> None:
    rt = await cluster.start("api", **OPEN)
    receiver.status = 307  # answered with Location: /hook; following it would be a second arrival
    receiver.secret = new_secret()
    await receiver.start()
    sender = WebhookSender(rt.pool, rt.settings, rt.metrics, "test", lambda row: {})
    try:
        assert await sender._post(receiver.url, "msg_r", b"{}", [receiver.secret]) == (307, None)
    finally:
        await sender.close()
    assert len(receiver.arrivals) == 1


async def test_a_postgres_outage_mid_delivery_loses_nothing(
    own_pg: StoppablePostgres, settings: Settings, receiver: Receiver, http: aiohttp.ClientSession
) -> None:
    async with running_service(settings.replace(**OPEN), dsn=own_pg.dsn) as rt:
        api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
        await _signed_up(api, receiver)
        receiver.hold, receiver.hold_first = asyncio.Event(), 1
        await receiver.start()
        job = await api.submit(
            {"backend": "demo", "input": {"seconds": 0.01}},
            webhook=receiver.url,
            webhook_events=["completed"],
        )
        await receiver.wait(lambda r: r.arrivals)  # mid-delivery...
        own_pg.stop()  # ...the database goes away
        receiver.hold.set()  # and the receiver answers 2xx meanwhile
        await receiver.wait(lambda r: r.verified)
        own_pg.start()
        rows = await _until_outbox(own_pg.dsn, job["id"], lambda rs: rs and rs[0]["state"] == "delivered")
        assert rows[0]["attempts"] >= 1
        audit = await _audit(api, job["id"])
        delivered = [e for e in audit if e["kind"] == "webhook_delivered"]
        assert len(delivered) == 1 and delivered[0]["detail"]["webhook_id"] == rows[0]["msg_id"]
        assert {a["headers"]["webhook-id"] for a in receiver.arrivals} == {rows[0]["msg_id"]}


async def test_an_idle_sender_looks_again_when_the_next_retry_is_due(cluster: Cluster) -> None:
    """With nothing due, a look at the outbox says when the next one is (new events wake the
    sender by NOTIFY): an idle fleet does not query the outbox twice a second per instance."""
    rt = await cluster.start("api", **OPEN)
    sender = WebhookSender(rt.pool, rt.settings, rt.metrics, "test", lambda row: {})
    try:
        assert await sender.tick() is None  # nothing pending: the longest wait
        job_id = await _queued_job(rt)
        for event, due_s in (("started", 30), ("completed", 3)):
            await rt.pool.execute(
                "INSERT INTO webhook_outbox (job_id, event, url, next_attempt_at)"
                " VALUES ($1, $2, 'https://x.example/', now() + make_interval(secs => $3))",
                job_id,
                event,
                due_s,
            )
        # The later event waits for its job's earlier one: the next look is when that is due.
        due = await sender.tick()
        assert due is not None and 29 < due <= 30
    finally:
        await sender.close()


async def test_a_closed_sender_claims_nothing(cluster: Cluster) -> None:
    """close() cancels the deliveries in flight, and each one's end wakes the sender: a look
    after close() must not claim rows (an attempt counted, a lease taken) for deliveries that
    nothing will make."""
    rt = await cluster.start("api", **OPEN)
    sender = WebhookSender(rt.pool, rt.settings, rt.metrics, "test", lambda row: {})
    job_id = await _queued_job(rt)
    await rt.pool.execute(
        "INSERT INTO webhook_outbox (job_id, event, url) VALUES ($1, 'started', 'https://x.example/')", job_id
    )
    await sender.close()
    assert await sender.tick() is None
    assert await rt.pool.fetchval("SELECT attempts FROM webhook_outbox WHERE job_id = $1", job_id) == 0
    assert sender.in_flight == set()
