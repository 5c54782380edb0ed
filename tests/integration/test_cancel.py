"""Cancellation end to end on real Postgres, with real sockets."""

from __future__ import annotations

import asyncio
import random
import uuid
from typing import Any

import aiohttp
import asyncpg
import pytest

from runner.backends.config import BackendSpec
from runner.config import Settings
from runner.db import connect
from runner.db.notify import cancel_channel
from runner.fakes import FakeProviders
from runner.service import running_service
from tests.client import Api, freeze, wait_event
from tests.conftest import Cluster

HOLD = {"backend": "gpu", "input": {"mode": "hold"}}
RP_HOLD = {"backend": "rp", "input": {"hold": True}}


async def _audit(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/jobs/{job_id}/audit")
    assert status == 200
    events: list[dict[str, Any]] = body["events"]
    return events


async def _until_event(api: Api, job_id: str, kind: str, timeout: float = 10.0) -> dict[str, Any]:
    """Wait on the audit trail until an event of `kind` is there."""
    async with asyncio.timeout(timeout):
        while True:
            found = [e for e in await _audit(api, job_id) if e["kind"] == kind]
            if found:
                return found[0]
            await asyncio.sleep(0.02)


async def _running_with_remote(api: Api, job: dict[str, Any], fake: FakeProviders) -> dict[str, Any]:
    """Wait until the http call is in flight and the RunPod job has its remote id."""
    await wait_event(fake.web.started[job["executions"][0]["id"]])
    return await api.until_execution(job["id"], 1, lambda e: e["remote_id"] is not None)


async def test_cancel_running_job_closes_http_call_and_cancels_at_runpod(
    api: Api, fake_gpu: FakeProviders
) -> None:
    job = await api.submit(HOLD, RP_HOLD, {"backend": "demo", "input": {"seconds": 0}})
    await api.until_execution(job["id"], 2, lambda e: e["status"] == "completed")
    running = await _running_with_remote(api, job, fake_gpu)
    http_id, rp_id = (e["id"] for e in running["executions"][:2])
    remote_id = running["executions"][1]["remote_id"]

    status, reply = await api.cancel(job["id"], reason="wrong prompt")
    assert status == 200
    assert set(reply) == {
        "ok",
        "job_id",
        "previous_status",
        "new_status",
        "context_cancelled",
        "executions_cancelled",
        "cancelled_at",
    }
    assert reply["ok"] is True and reply["job_id"] == job["id"]
    assert reply["previous_status"] == "running" and reply["new_status"] == "cancelled"
    assert reply["context_cancelled"] is True
    assert reply["executions_cancelled"] == 2  # the demo execution had completed already
    assert reply["cancelled_at"].endswith("Z")

    await wait_event(fake_gpu.web.closed[http_id])  # the provider saw its connection close
    await wait_event(fake_gpu.web.url_cancelled[http_id])  # and got the cancel_url call
    await wait_event(fake_gpu.runpod.cancelled[remote_id])  # RunPod got /cancel/{id}
    done = await api.until_execution(job["id"], 1, lambda e: e["remote_cancel"] == "acknowledged")
    assert done["status"] == "cancelled" and done["cancel_reason"] == "wrong prompt"
    assert done["cancelled_by"] == api.wallet.address  # type: ignore[union-attr]
    statuses = [e["status"] for e in done["executions"]]
    assert statuses == ["cancelled", "cancelled", "completed"]  # earlier results are kept
    assert done["executions"][2]["output"] == {"slept_s": 0}
    assert fake_gpu.runpod.cancels == [remote_id] and fake_gpu.web.url_cancels == [http_id]

    events = await _audit(api, job["id"])
    cancelled = next(e for e in events if e["kind"] == "cancelled")
    assert cancelled["actor"] == api.wallet.address  # type: ignore[union-attr]
    assert cancelled["detail"] == {
        "reason": "wrong prompt",
        "previous_status": "running",
        "executions_cancelled": 2,
    }
    stopped = await _until_event(api, job["id"], "task_stopped")
    assert stopped["detail"]["reason"] == "cancelled" and stopped["detail"]["latency_ms"] >= 0
    assert stopped["detail"]["executions"] == 3 and stopped["detail"]["local_latency_ms"] >= 0
    remote = [e for e in events if e["kind"] == "remote_cancel"]
    assert {e["detail"]["execution_id"] for e in remote} == {http_id, rp_id}
    assert {e["detail"]["outcome"] for e in remote} == {"acknowledged"}


async def test_cancel_wait_answers_once_the_task_stopped(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit(HOLD)
    await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    status, reply = await api.cancel(job["id"], wait=True)
    assert status == 200 and reply["stopped"] is True
    # By the time it answered, the connection was closed and the remote cancel sent.
    assert fake_gpu.web.closed[job["executions"][0]["id"]].is_set()
    assert fake_gpu.web.url_cancels == [job["executions"][0]["id"]]
    assert any(e["kind"] == "task_stopped" for e in await _audit(api, job["id"]))


async def test_cancel_codes(api: Api, http: aiohttp.ClientSession) -> None:
    done = await api.submit({"backend": "demo", "input": {"seconds": 0}})
    failed = await api.submit({"backend": "demo", "input": {"seconds": 0, "fail": True}})
    await api.until(done["id"], "completed")
    await api.until(failed["id"], "failed")
    for job, final in ((done, "completed"), (failed, "failed")):
        status, body = await api.cancel(job["id"])
        assert status == 409 and body["error"] == "not_cancellable" and body["status"] == final

    queued = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    first = await api.cancel(queued["id"])
    again = await api.cancel(queued["id"])  # a double click is harmless
    assert first[0] == again[0] == 200
    assert first[1]["executions_cancelled"] == 1
    assert again[1]["previous_status"] == "cancelled" and again[1]["executions_cancelled"] == 0
    assert again[1]["cancelled_at"] == first[1]["cancelled_at"]

    stranger = await Api.signed_in(http, api.base)
    other = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    status, body = await stranger.cancel(other["id"])
    assert status == 403 and body["error"] == "forbidden"
    assert (await api.job(other["id"]))["status"] != "cancelled"
    assert (await stranger.cancel(str(uuid.uuid4())))[0] == 404
    async with http.post(f"{api.base}/jobs/{other['id']}/cancel") as resp:
        assert resp.status == 401
    for bad in ({"reason": "x" * 501}, {"reason": 5}, {"why": "x"}):
        status, body = await api.call("POST", f"/jobs/{other['id']}/cancel", json=bad)
        assert status == 400 and body["error"] == "invalid_request"
    status, body = await api.call("POST", f"/jobs/{other['id']}/cancel?wait=maybe")
    assert status == 400


async def test_cancel_queued_job_never_reaches_the_backend(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    async with running_service(settings, "api", dsn=dsn) as front:
        api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
        job = await api.submit({"backend": "gpu", "input": {"mode": "echo"}})
        status, reply = await api.cancel(job["id"])
        assert status == 200
        assert reply["previous_status"] == "queued" and reply["context_cancelled"] is False
        assert reply["executions_cancelled"] == 1
        later = await api.submit({"backend": "gpu", "input": {"mode": "echo"}})
        async with running_service(settings, "worker", dsn=dsn):
            await api.until(later["id"], "completed")  # the worker ran what was there to run
        final = await api.job(job["id"])
    assert final["status"] == "cancelled" and final["started_at"] is None
    assert [c["headers"]["X-Runner-Job-Id"] for c in fake_gpu.web.calls] == [later["id"]]


async def test_cancel_on_one_instance_stops_a_job_running_on_another(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    a = await cluster.start("api")
    b = await cluster.start("worker")
    api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
    job = await api.submit(HOLD)
    execution_id = job["executions"][0]["id"]
    await wait_event(fake_gpu.web.started[execution_id])
    assert b.manager.is_running(uuid.UUID(job["id"])) and a.manager.count() == 0
    status, reply = await api.cancel(job["id"], wait=True)
    assert status == 200 and reply["context_cancelled"] is True and reply["stopped"] is True
    assert fake_gpu.web.closed[execution_id].is_set()
    stopped = await _until_event(api, job["id"], "task_stopped")
    assert stopped["actor"] == b.instance_id
    assert b.listener is not None and b.listener.reconnects == 0  # it came by NOTIFY


async def test_a_cancel_wakes_only_the_instance_holding_the_job(
    cluster: Cluster,
    dsn: str,
    http: aiohttp.ClientSession,
    fake_gpu: FakeProviders,
    db: asyncpg.Connection,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Each cancel NOTIFY goes to the job's holder alone (its worker_id's channel): the other
    workers are not woken, and a bulk cancel's sender, which signals its own tasks itself,
    gets none."""
    import runner.cancel.canceller

    monkeypatch.setattr(runner.cancel.canceller, "BULK_CHUNK", 2)  # several statements
    a = await cluster.start("all", concurrency=3)  # holds the first three jobs, then is full
    api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
    jobs = [await api.submit(HOLD) for _ in range(3)]
    for job in jobs:
        await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    b = await cluster.start("worker")  # holds the next three
    c = await cluster.start("worker", backends={"demo": BackendSpec(name="demo", kind="demo")})  # none
    heard: dict[str, list[str]] = {r.instance_id: [] for r in (a, b, c)}
    barrier = {r.instance_id: asyncio.Event() for r in (a, b, c)}
    conn = await connect(dsn)
    for r in (a, b, c):

        def hear(*args: Any, instance: str = r.instance_id) -> None:
            payload = args[-1]
            if payload == "barrier":
                barrier[instance].set()
            else:
                heard[instance].append(payload)

        await conn.add_listener(cancel_channel(r.instance_id), hear)
    jobs += [await api.submit(HOLD) for _ in range(3)]
    for job in jobs:
        await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    holders = {
        str(r["id"]): r["worker_id"]
        for r in await db.fetch(
            "SELECT id, worker_id FROM jobs WHERE id = ANY($1::uuid[])", [j["id"] for j in jobs]
        )
    }
    assert [holders[j["id"]] for j in jobs] == [a.instance_id] * 3 + [b.instance_id] * 3
    one = jobs[-1]
    await api.cancel(one["id"])
    status, reply = await api.call("POST", "/jobs/cancel")
    assert status == 200 and reply["count"] == len(jobs) - 1
    for job in jobs:
        await wait_event(fake_gpu.web.closed[job["executions"][0]["id"]])
    for r in (a, b, c):  # notifications arrive in commit order: the barrier comes last
        await conn.execute("SELECT pg_notify($1, 'barrier')", cancel_channel(r.instance_id))
        await wait_event(barrier[r.instance_id])
    named = {k: sorted(",".join(v).split(",")) if v else [] for k, v in heard.items()}
    assert named[b.instance_id] == sorted(j for j, h in holders.items() if h == b.instance_id)
    assert named[a.instance_id] == [] and named[c.instance_id] == []
    assert heard[b.instance_id][0] == one["id"]  # the single cancel's own notification
    await conn.close()


async def _listener_pid(runtime: Any) -> int:
    assert runtime.listener is not None and runtime.listener.backend_pid is not None
    pid: int = runtime.listener.backend_pid
    return pid


async def test_listener_killed_reconnects_and_rechecks(
    cluster: Cluster,
    dsn: str,
    settings: Settings,
    http: aiohttp.ClientSession,
    fake_gpu: FakeProviders,
    db: asyncpg.Connection,
) -> None:
    a = await cluster.start("api")
    b = await cluster.start("worker", settings.replace(lease_s=60))
    api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
    job = await api.submit(HOLD)
    await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    assert await db.fetchval("SELECT pg_terminate_backend($1)", await _listener_pid(b))
    await api.cancel(job["id"])  # its NOTIFY may well be lost while B is away
    # With a 60 s lease, only the reconnect's re-check can have stopped it this soon.
    await wait_event(fake_gpu.web.closed[job["executions"][0]["id"]])
    assert b.listener is not None and b.listener.reconnects == 1


async def test_cancel_lands_within_one_lease_renewal_without_the_listener(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    lease = settings.replace(lease_s=1.5)  # renewed every 0.5 s
    async with running_service(lease, "api", dsn=dsn) as a, running_service(lease, "worker", dsn=dsn) as b:
        api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
        job = await api.submit(HOLD)
        await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
        b.supervisor.tasks["listener"].cancel()  # B hears no notification at all from here on
        await asyncio.gather(b.supervisor.tasks["listener"], return_exceptions=True)
        status, _ = await api.cancel(job["id"])
        assert status == 200
        await wait_event(fake_gpu.web.closed[job["executions"][0]["id"]])
        stopped = await _until_event(api, job["id"], "task_stopped")
    # Measured by Postgres' clock from the cancel's commit to the stop record.
    assert stopped["detail"]["latency_ms"] < lease.lease_renew_s * 1000 + 300


async def test_job_cancelled_while_its_worker_is_dead_is_stopped_at_runpod_by_another_instance(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    async with running_service(settings, dsn=dsn) as a:
        api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
        job = await api.submit(RP_HOLD)
        running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
        remote_id = running["executions"][0]["remote_id"]
        freeze(a)
        b = await cluster.start("all")
        other = api.on(f"http://127.0.0.1:{b.port}")
        status, reply = await other.cancel(job["id"])
        assert status == 200 and reply["previous_status"] == "running"
        assert (await other.job(job["id"]))["executions"][0]["remote_cancel"] == "pending"
        await wait_event(fake_gpu.runpod.cancelled[remote_id])  # B's sweeper delivered it
        done = await other.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
        remote = [e for e in await _audit(other, job["id"]) if e["kind"] == "remote_cancel"]
    assert done["status"] == "cancelled"
    assert [e["actor"] for e in remote] == [b.instance_id]
    assert fake_gpu.runpod.cancels == [remote_id]


async def test_cancel_one_execution_while_the_other_completes(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit(HOLD, {"backend": "rp", "input": {"polls": 15}})
    held = job["executions"][0]["id"]
    await wait_event(fake_gpu.web.started[held])
    status, reply = await api.call(
        "POST", f"/jobs/{job['id']}/executions/{held}/cancel", json={"reason": "not needed"}
    )
    assert status == 200
    assert reply == {
        "ok": True,
        "job_id": job["id"],
        "execution_id": held,
        "previous_status": "running",
        "new_status": "cancelled",
        "context_cancelled": True,
        "cancelled_at": reply["cancelled_at"],
    }
    await wait_event(fake_gpu.web.closed[held])
    done = await api.until(job["id"], "completed", "failed", "cancelled")
    assert done["status"] == "completed"
    assert [e["status"] for e in done["executions"]] == ["cancelled", "completed"]
    assert done["cancelled_at"] is None
    again = await api.call("POST", f"/jobs/{job['id']}/executions/{held}/cancel")
    assert again[0] == 200 and again[1]["previous_status"] == "cancelled"
    finished = done["executions"][1]["id"]
    late = await api.call("POST", f"/jobs/{job['id']}/executions/{finished}/cancel")
    assert late[0] == 409 and late[1]["status"] == "completed"


async def test_cancelling_every_execution_of_a_queued_job_cancels_it(
    dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    async with running_service(settings, "api", dsn=dsn) as front:
        api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
        job = await api.submit({"backend": "demo"}, {"backend": "demo"})
        for execution in job["executions"]:
            status, _ = await api.call("POST", f"/jobs/{job['id']}/executions/{execution['id']}/cancel")
            assert status == 200
        final = await api.job(job["id"])
    assert final["status"] == "cancelled" and final["cancelled_by"] == api.wallet.address  # type: ignore[union-attr]


async def test_timeout_cancels_with_reason_timeout(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit(HOLD, timeout_s=1)
    await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    done = await api.until(job["id"], "cancelled", timeout=10)
    assert done["cancel_reason"] == "timeout" and done["cancelled_by"] == "system"
    await wait_event(fake_gpu.web.closed[job["executions"][0]["id"]])
    stopped = await _until_event(api, job["id"], "task_stopped")
    assert stopped["detail"]["reason"] == "timeout"
    events = await _audit(api, job["id"])
    assert next(e for e in events if e["kind"] == "cancelled")["actor"] == "system"


async def test_cancel_all_of_the_callers_active_jobs(
    api: Api, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    running = await api.submit(HOLD)
    queued_ids = [
        (
            await api.submit(
                {"backend": "demo", "input": {"seconds": 60}}, {"backend": "demo", "input": {"seconds": 60}}
            )
        )["id"]
        for _ in range(2)
    ]
    finished = await api.submit({"backend": "demo", "input": {"seconds": 0}})
    await api.until(finished["id"], "completed")
    await wait_event(fake_gpu.web.started[running["executions"][0]["id"]])
    stranger = await Api.signed_in(http, api.base)
    theirs = await stranger.submit({"backend": "demo", "input": {"seconds": 60}})

    for bad in ({"statuses": ["completed"]}, {"statuses": []}, {"statuses": "done"}, {"x": 1}):
        status, body = await api.call("POST", "/jobs/cancel", json=bad)
        assert status == 400 and body["error"] == "invalid_request", bad
    status, reply = await api.call("POST", "/jobs/cancel", json={"reason": "stop everything"})
    assert status == 200
    assert sorted(reply["cancelled"]) == sorted([running["id"], *queued_ids])
    assert reply["count"] == 3 and reply["executions_cancelled"] >= 3
    await wait_event(fake_gpu.web.closed[running["executions"][0]["id"]])
    assert (await api.job(finished["id"]))["status"] == "completed"
    assert (await stranger.job(theirs["id"]))["status"] != "cancelled"
    again = await api.call("POST", "/jobs/cancel", json={"statuses": ["queued"]})
    assert again[1] == {"ok": True, "cancelled": [], "count": 0, "executions_cancelled": 0}


async def test_cancel_versus_complete_races_stay_consistent(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    """200 jobs whose executions finish at random moments, each cancelled at a random moment."""
    rt = await cluster.start("all", settings.replace(max_active_jobs_per_wallet=500))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    await _races(api, db)


async def _races(api: Api, db: asyncpg.Connection) -> None:
    rng = random.Random(4361)

    async def race(i: int) -> tuple[str, int, dict[str, Any]]:
        job = await api.submit(
            *({"backend": "demo", "input": {"seconds": rng.uniform(0, 0.03)}} for _ in range(2))
        )
        await asyncio.sleep(rng.uniform(0, 0.04))  # the race itself: not a synchronisation
        status, reply = await api.cancel(job["id"])
        return job["id"], status, reply

    results = await asyncio.gather(*(race(i) for i in range(200)))
    for job_id, _, _ in results:
        await api.until(job_id, "completed", "failed", "cancelled")
    outcomes = {"cancelled": 0, "completed": 0}
    for job_id, status, reply in results:
        job = await api.job(job_id)
        execution_statuses = {e["status"] for e in job["executions"]}
        if status == 200:
            assert reply["previous_status"] in ("queued", "running")
            assert job["status"] == "cancelled" and job["cancelled_at"] is not None
            assert execution_statuses <= {"cancelled", "completed"}
            assert reply["executions_cancelled"] == sum(e["status"] == "cancelled" for e in job["executions"])
            outcomes["cancelled"] += 1
        else:
            assert status == 409 and reply["status"] == "completed"
            assert job["status"] == "completed" and job["cancelled_at"] is None
            assert execution_statuses == {"completed"}
            outcomes["completed"] += 1
    assert sum(outcomes.values()) == 200
    # Nothing left half-way, in any row.
    assert (
        await db.fetchval(
            "SELECT count(*) FROM jobs WHERE status IN ('queued', 'running') OR worker_id IS NOT NULL"
        )
        == 0
    )
    assert await db.fetchval("SELECT count(*) FROM executions WHERE status IN ('queued', 'running')") == 0
    assert (
        await db.fetchval(
            """SELECT count(*) FROM jobs j WHERE status = 'completed' AND EXISTS (
               SELECT 1 FROM executions e WHERE e.job_id = j.id AND e.status <> 'completed')"""
        )
        == 0
    )
    assert (
        await db.fetchval(
            """SELECT count(*) FROM jobs j WHERE (SELECT count(*) FROM job_events v
               WHERE v.job_id = j.id AND v.kind IN ('cancelled', 'completed', 'failed')) <> 1"""
        )
        == 0
    )
    # A task signalled ahead of a cancel that lost to the completion records no stop.
    assert (
        await db.fetchval(
            """SELECT count(*) FROM jobs j WHERE status = 'completed' AND EXISTS (
               SELECT 1 FROM job_events v WHERE v.job_id = j.id AND v.kind = 'task_stopped')"""
        )
        == 0
    )


@pytest.mark.parametrize("n", [4, 5])  # chunks of 2, 2 and an empty one; of 2, 2 and 1
async def test_cancel_all_works_through_chunks(
    api: Api, monkeypatch: pytest.MonkeyPatch, db: asyncpg.Connection, n: int
) -> None:
    import runner.cancel.canceller

    monkeypatch.setattr(runner.cancel.canceller, "BULK_CHUNK", 2)
    ids = [(await api.submit({"backend": "demo", "input": {"seconds": 60}}))["id"] for _ in range(n)]
    status, reply = await api.call("POST", "/jobs/cancel")
    assert status == 200
    assert sorted(reply["cancelled"]) == sorted(ids) and reply["count"] == n
    assert reply["executions_cancelled"] == n
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE status = 'cancelled'") == n
    assert await db.fetchval("SELECT count(*) FROM job_events WHERE kind = 'cancelled'") == n
