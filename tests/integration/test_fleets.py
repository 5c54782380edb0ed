"""Fleets and fair share: each instance runs what it can, each backend within its limit,
each wallet in turn, and old history goes."""

from __future__ import annotations

import asyncio
import signal
import uuid
from datetime import UTC, datetime, timedelta

import aiohttp
import asyncpg

from runner.backends import build_backends
from runner.backends.config import BackendSpec
from runner.cancel.remote import RemoteCanceller
from runner.fakes import FakeProviders
from runner.metrics import Metrics
from runner.worker import store
from tests.client import Api, freeze
from tests.conftest import Cluster
from tests.procs import ServeProcess


def _http(name: str, fake: FakeProviders, **extra: object) -> BackendSpec:
    return BackendSpec(name=name, kind="http", url=f"{fake.base_url}/run", **extra)  # type: ignore[arg-type]


async def _metric(http: aiohttp.ClientSession, base: str, line_start: str) -> str | None:
    async with http.get(base + "/metrics") as resp:
        text = await resp.text()
    return next((line for line in text.splitlines() if line.startswith(line_start)), None)


async def test_an_instance_claims_only_what_it_can_run(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    every = {n: _http(n, fake_gpu) for n in ("gpu-a", "gpu-b", "gpu-none")}
    front = await cluster.start("api", backends=every)
    a = await cluster.start("worker", backends={"gpu-a": every["gpu-a"]})
    b = await cluster.start("worker", backends={"gpu-b": every["gpu-b"]})
    api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
    for_b = await api.submit({"backend": "gpu-b", "input": {"n": 1}})
    for_a = await api.submit({"backend": "gpu-a", "input": {"n": 2}})
    stranded = await api.submit({"backend": "gpu-none", "input": {"n": 3}})
    assert (await api.until(for_b["id"], "completed"))["status"] == "completed"
    assert (await api.until(for_a["id"], "completed"))["status"] == "completed"
    started = {
        r["job_id"]: r["worker"]
        for r in await db.fetch(
            "SELECT job_id::text, detail->>'worker' AS worker FROM job_events WHERE kind = 'started'"
        )
    }
    assert started == {for_b["id"]: b.instance_id, for_a["id"]: a.instance_id}
    # Nobody has gpu-none: the job waits, queued, and the gauge says why. The fleet's
    # housekeeper (the live worker with the lowest id) counts; the other shows what it
    # published, so every instance's /metrics is whole.
    keeper, other = sorted((a, b), key=lambda rt: rt.instance_id)
    assert keeper.worker is not None and other.worker is not None
    gauge = 'runner_jobs_unclaimable{backend="gpu-none"}'
    await keeper.worker.housekeeping()
    line = await _metric(http, f"http://127.0.0.1:{keeper.port}", gauge)
    assert line is not None and line.endswith(" 1.0"), line
    await other.worker.housekeeping()
    line = await _metric(http, f"http://127.0.0.1:{other.port}", gauge)
    assert line is not None and line.endswith(" 1.0"), line
    # What it shows is the published figure, not a count of its own...
    await db.execute("""UPDATE fleet_gauges SET figures = '{"unclaimable": {"gpu-none": 7}}'""")
    await other.worker.housekeeping()
    line = await _metric(http, f"http://127.0.0.1:{other.port}", gauge)
    assert line is not None and line.endswith(" 7.0"), line
    # ...and nothing once the housekeeper has not published for three rounds.
    await db.execute("UPDATE fleet_gauges SET counted_at = now() - interval '1 hour'")
    await other.worker.housekeeping()
    line = await _metric(http, f"http://127.0.0.1:{other.port}", gauge)
    assert line is not None and line.endswith(" 0.0"), line
    assert (await api.job(stranded["id"]))["status"] == "queued"
    # ...and so does the job's audit trail, once, however often the housekeeping runs.
    await keeper.worker.housekeeping()
    status, audit = await api.call("GET", f"/jobs/{stranded['id']}/audit")
    assert status == 200
    waiting = [e for e in audit["events"] if e["kind"] == "waiting"]
    assert len(waiting) == 1 and "no live instance has backend 'gpu-none'" in waiting[0]["detail"]["reason"]
    assert waiting[0]["actor"] == "system"
    for job in (for_a, for_b):
        status, audit = await api.call("GET", f"/jobs/{job['id']}/audit")
        assert "waiting" not in [e["kind"] for e in audit["events"]]
    # An instance that has it arrives: the job runs there.
    await cluster.start("worker", backends={"gpu-none": every["gpu-none"]})
    assert (await api.until(stranded["id"], "completed"))["status"] == "completed"


async def test_concurrency_is_a_limit_across_instances_even_when_one_dies(
    dsn: str, fake_gpu: FakeProviders, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    toml = f"""
[backends.gpu]
kind = "http"
url = "{fake_gpu.base_url}/run"
concurrency = 2
"""
    lease = {"RUNNER_LEASE_S": "1.5"}
    one = await ServeProcess(dsn, toml, env_extra=lease).start()
    two = await ServeProcess(dsn, toml, env_extra=lease).start()
    try:
        api = await Api.signed_in(http, one.base_url)
        jobs = [
            await api.submit({"backend": "gpu", "input": {"mode": "slow", "seconds": 0.3, "n": i}})
            for i in range(8)
        ]
        # Kill one instance as soon as it holds work: its slots stay taken until its lease
        # expires and its jobs are requeued, so the limit holds through the loss.
        first = {asyncio.create_task(p.wait_log("job_started", timeout=30)): p for p in (one, two)}
        done, pending = await asyncio.wait(first, return_when=asyncio.FIRST_COMPLETED)
        for task in pending:
            task.cancel()
        victim = first[done.pop()]
        survivor = two if victim is one else one
        victim.signal(signal.SIGKILL)
        await victim.wait()
        done = [
            await api.on(survivor.base_url).until(j["id"], "completed", "failed", timeout=60) for j in jobs
        ]
        assert [j["status"] for j in done] == ["completed"] * 8
        assert fake_gpu.web.open_max <= 2, fake_gpu.web.open_max
        assert fake_gpu.web.open_max == 2  # and the limit was used, not just respected
    finally:
        await asyncio.gather(one.stop(), two.stop())


async def test_a_waiting_execution_is_cancelled_at_once(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(backends={"gpu": _http("gpu", fake_gpu, concurrency=1)})
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    first = await api.submit(
        {"backend": "gpu", "input": {"mode": "hold"}}, {"backend": "gpu", "input": {"mode": "hold"}}
    )
    ids = [e["id"] for e in first["executions"]]
    # One slot: whichever execution takes it first runs, the other waits its turn.
    turns = {asyncio.ensure_future(fake_gpu.web.started[i].wait()): i for i in ids}
    done, pending = await asyncio.wait(turns, timeout=10, return_when=asyncio.FIRST_COMPLETED)
    for future in pending:
        future.cancel()
    assert done, "neither execution started"
    held = turns[done.pop()]
    waiting = next(i for i in ids if i != held)
    index = ids.index(waiting)
    job = await api.until_execution(first["id"], index, lambda e: e["status"] == "queued")
    assert job["executions"][index]["status"] == "queued"  # its turn has not come: one slot, taken
    status, reply = await api.call("POST", f"/jobs/{first['id']}/executions/{waiting}/cancel")
    assert status == 200 and reply["previous_status"] == "queued"
    assert fake_gpu.web.calls_for(waiting) == 0  # never sent
    assert (await api.cancel(first["id"], wait=True))[1]["stopped"] is True


async def test_a_wallets_first_job_does_not_wait_for_anothers_backlog(
    cluster: Cluster, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    one_at_a_time = {"demo": BackendSpec(name="demo", kind="demo", concurrency=1)}
    front = await cluster.start("api", backends=one_at_a_time)
    base = f"http://127.0.0.1:{front.port}"
    alice, bob = await Api.signed_in(http, base), await Api.signed_in(http, base)
    backlog = [await alice.submit({"backend": "demo", "input": {"seconds": 0.05}}) for _ in range(20)]
    mine = await bob.submit({"backend": "demo", "input": {"seconds": 0.05}})
    await cluster.start("worker", backends=one_at_a_time)
    await bob.until(mine["id"], "completed", timeout=30)
    order = [
        str(r["job_id"])
        for r in await db.fetch("SELECT job_id FROM job_events WHERE kind = 'started' ORDER BY id")
    ]
    ahead = order.index(mine["id"])
    assert ahead <= 1, (ahead, len(order))  # at most the one job running when it was queued
    for job in backlog:
        await alice.until(job["id"], "completed", timeout=30)


async def test_retention_deletes_what_is_old_and_keeps_what_is_new_or_active(
    cluster: Cluster, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    rt = await cluster.start()
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    old = [await api.submit({"backend": "demo", "input": {"seconds": 0}}) for _ in range(3)]
    new = await api.submit({"backend": "demo", "input": {"seconds": 0}})
    for job in [*old, new]:
        await api.until(job["id"], "completed")
    active = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    await api.until(active["id"], "running")
    long_ago = datetime.now(UTC) - timedelta(days=40)
    await db.execute(
        "UPDATE jobs SET finished_at = $1 WHERE id = ANY($2::uuid[])",
        long_ago,
        [uuid.UUID(j["id"]) for j in old],
    )
    await db.execute("UPDATE jobs SET created_at = $1 WHERE id = $2", long_ago, uuid.UUID(active["id"]))
    assert rt.worker is not None
    assert await rt.worker.apply_retention(30) == 3
    left = {str(r["id"]) for r in await db.fetch("SELECT id FROM jobs")}
    assert left == {new["id"], active["id"]}
    assert (
        await db.fetchval(
            "SELECT count(*) FROM executions WHERE job_id = ANY($1::uuid[])",
            [uuid.UUID(j["id"]) for j in old],
        )
        == 0
    )
    assert (
        await db.fetchval(
            "SELECT count(*) FROM job_events WHERE job_id = ANY($1::uuid[])",
            [uuid.UUID(j["id"]) for j in old],
        )
        == 0
    )
    # The audit trail stays append-only for everyone else.
    try:
        await db.execute("DELETE FROM job_events WHERE job_id = $1", uuid.UUID(new["id"]))
    except asyncpg.InsufficientPrivilegeError:
        pass
    else:
        raise AssertionError("job_events accepted a delete outside retention")


async def test_a_cancel_owed_to_a_backend_is_left_to_an_instance_that_has_it(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    """A holder that dies owes its provider a cancel; the sweeper of an instance without that
    backend must leave it to one that has it -- not record it failed ("not configured
    here"), which would leave the GPU running for good."""
    rp = BackendSpec(
        name="rp", kind="runpod", base_url=fake_gpu.runpod_url, endpoint_id="ep1", api_key="rp-key"
    )
    plain = _http("plain", fake_gpu)
    front = await cluster.start("api", backends={"rp": rp, "plain": plain})
    holder = await cluster.start("worker", backends={"rp": rp})
    api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
    job = await api.submit({"backend": "rp", "input": {"hold": True}})
    running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
    remote_id = running["executions"][0]["remote_id"]
    freeze(holder)  # it dies with the work running at RunPod
    assert (await api.cancel(job["id"]))[0] == 200
    execution_id = uuid.UUID(running["executions"][0]["id"])
    # Owed for two minutes, say: no live instance had rp meanwhile.
    await db.execute(
        "UPDATE executions SET remote_cancel_due = now() - interval '2 minutes' WHERE id = $1", execution_id
    )
    # An instance with other backends sweeps: the cancel is not its to send.
    other = build_backends({"plain": plain}, http)
    assert await RemoteCanceller(db_pool := front.pool, other, Metrics(), "other").sweep() == 0
    row = await db.fetchrow(
        "SELECT remote_cancel, remote_cancel_due <= now() AS due FROM executions WHERE id = $1", execution_id
    )
    assert (row["remote_cancel"], row["due"]) == ("pending", True)
    # ...and the gauge to alert on counts it (the fleet's housekeeper sets it from this).
    assert {r["backend"]: r["n"] for r in await db.fetch(store.UNCONFIRMED)} == {"rp": 1}
    # One that has it sends it at once.
    mine = build_backends({"rp": rp}, http)
    assert await RemoteCanceller(db_pool, mine, Metrics(), "mine").sweep() == 1
    assert fake_gpu.runpod.cancels == [remote_id]
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] != "pending")
    assert done["executions"][0]["remote_cancel"] in ("acknowledged", "confirmed")
