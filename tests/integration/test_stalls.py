"""A stalled instance: a process stopped (SIGSTOP) for longer than its lease, as a frozen
event loop or a paused VM would be. When it wakes, every job it holds is held once, nothing
is run twice, and the worker goes on claiming."""

from __future__ import annotations

import asyncio
import signal
import uuid
from typing import Any

import aiohttp
import pytest

from runner.cancel.registry import StopReason
from runner.config import Settings
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from runner.worker import store
from tests.client import Api, wait_event
from tests.conftest import Cluster
from tests.integration.test_faults import backends_toml, until_status
from tests.procs import ServeProcess

LEASE_S = 1.0
STALL_S = 3.5 * LEASE_S  # the fault itself: a stall of three leases and a half


async def test_a_stall_longer_than_a_lease_holds_each_job_once_and_claims_go_on(
    dsn: str, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    serve = await ServeProcess(
        dsn, backends_toml(fake_gpu), env_extra={"RUNNER_LEASE_S": str(LEASE_S)}
    ).start()
    try:
        api = await Api.signed_in(http, serve.base_url)
        jobs = [
            await api.submit({"backend": "gpu", "input": {"mode": "until_released", "n": i}})
            for i in range(3)
        ]
        executions = [j["executions"][0]["id"] for j in jobs]
        await asyncio.wait_for(asyncio.gather(*(fake_gpu.web.started[e].wait() for e in executions)), 30)

        serve.signal(signal.SIGSTOP)
        await asyncio.sleep(STALL_S)
        serve.signal(signal.SIGCONT)

        # The worker claims again: a new job runs to its end.
        later = await api.submit({"backend": "gpu", "input": {"mode": "echo"}})
        assert (await api.until(later["id"], "completed", timeout=20))["status"] == "completed"
        await until_status(http, serve.base_url + "/readyz", 200, timeout=10)
        assert not serve.events("background_task_died"), serve.events("background_task_died")

        fake_gpu.web.release.set()
        for job in jobs:
            assert (await api.until(job["id"], "completed", "failed", "cancelled", timeout=20))[
                "status"
            ] == "completed"
            _, audit = await api.call("GET", f"/jobs/{job['id']}/audit")
            assert [e for e in audit["events"] if e["kind"] == "requeued"] == [], audit
        assert [fake_gpu.web.calls_for(e) for e in executions] == [1, 1, 1]
        assert serve.alive
    finally:
        serve.signal(signal.SIGCONT)
        await serve.stop()


# -- the parts, each on its own (one instance in this process) ------------------------------------


async def _running(api: Api, seconds: float = 60) -> dict[str, Any]:
    job = await api.submit({"backend": "demo", "input": {"seconds": seconds}})
    return await api.until(job["id"], "running")


async def _hold(runtime: Runtime, task: str = "lease_renewal") -> None:
    """Stop one of the instance's long-lived tasks, as a stall would (the renewal by default)."""
    held = runtime.supervisor.tasks.pop(task)
    held.cancel()
    await asyncio.gather(held, return_exceptions=True)


async def test_an_instance_never_requeues_the_jobs_it_holds(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession
) -> None:
    """What a stall leaves: our own lease lapsed in Postgres, the renewal not yet run, and
    housekeeping first in line. It must leave our jobs to our renewal."""
    runtime = await cluster.start("all", settings.replace(lease_s=1.0))
    api = await Api.signed_in(http, f"http://127.0.0.1:{runtime.port}")
    job = await _running(api)
    assert runtime.worker is not None
    await _hold(runtime)  # the renewal has not run yet after the stall
    # Nor has a claim, whose statement renews the lease too (its poll could fall between).
    await _hold(runtime, "worker_claim")
    await runtime.pool.execute(
        "UPDATE workers SET lease_expires_at = now() - interval '1 minute' WHERE id = $1", runtime.instance_id
    )
    requeued = await store.requeue_expired(
        runtime.pool, max_attempts=3, lease_s=0.0, instance_id=runtime.instance_id
    )
    assert requeued == []
    assert (await api.job(job["id"]))["status"] == "running"
    # Another instance, though, cannot tell a stalled instance from a dead one.
    requeued = await store.requeue_expired(runtime.pool, max_attempts=3, lease_s=0.0, instance_id="other")
    assert [str(r["id"]) for r in requeued] == [job["id"]]


async def test_a_job_claimed_again_while_its_old_task_runs_here_runs_once_and_claims_go_on(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession
) -> None:
    """After a stall, another instance requeued our job and it came back to us while its old
    task was still registered: the claim loop must neither die nor run the job twice."""
    runtime = await cluster.start("all", settings.replace(lease_s=1.0))
    api = await Api.signed_in(http, f"http://127.0.0.1:{runtime.port}")
    job = await _running(api, seconds=1.5)
    assert runtime.worker is not None
    old = runtime.manager.get(uuid.UUID(job["id"]))
    assert old is not None
    await _hold(runtime)  # the stall: our renewal has not run since
    await _hold(runtime, "worker_claim")  # nor a claim, which renews the lease too
    # Another instance's housekeeping, meanwhile: our lease lapsed, the job is requeued.
    await runtime.pool.execute(
        "UPDATE workers SET lease_expires_at = now() - interval '1 minute' WHERE id = $1", runtime.instance_id
    )
    requeued = await store.requeue_expired(runtime.pool, max_attempts=3, lease_s=0.0, instance_id="other")
    assert [str(r["id"]) for r in requeued] == [job["id"]]
    # The stall ends: our claim loop goes on, and claims the job back.
    runtime.supervisor.spawn("worker_claim", runtime.worker.claim_loop)
    await asyncio.wait_for(asyncio.wait([old.task]), 10)  # the old claim is void: its task stops
    assert old.reason is StopReason.LEASE_LOST
    runtime.supervisor.every("lease_renewal", settings.lease_renew_s, runtime.worker.renew_leases)
    done = await api.until(job["id"], "completed", timeout=20)
    assert done["executions"][0]["attempts"] >= 1
    assert not runtime.supervisor.tasks["worker_claim"].done()
    assert runtime.supervisor.dead == {}
    later = await api.submit({"backend": "demo", "input": {"seconds": 0.01}})
    assert (await api.until(later["id"], "completed"))["status"] == "completed"


async def test_a_background_task_that_dies_is_restarted_and_readyz_says_so_meanwhile(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    runtime = await cluster.start("all")
    base = f"http://127.0.0.1:{runtime.port}"
    api = await Api.signed_in(http, base)
    assert runtime.worker is not None
    worker = runtime.worker
    real_start = worker.claims.start
    died = asyncio.Event()
    resume = asyncio.Event()

    def broken_start(job: Any) -> None:  # a bug in the claim loop, once
        monkeypatch.setattr(worker.claims, "start", real_start)
        died.set()
        raise RuntimeError("a bug in the claim loop")

    monkeypatch.setattr(worker.claims, "start", broken_start)
    first = await api.submit({"backend": "demo", "input": {"seconds": 0.01}})
    await wait_event(died)
    assert "worker_claim" in runtime.supervisor.dead or runtime.supervisor.deaths == 1
    resume.set()
    # The claim loop is back: a new job runs (the first one, claimed by the dead loop, is
    # judged at the lease renewal: no task holds it, so it goes back to the queue).
    later = await api.submit({"backend": "demo", "input": {"seconds": 0.01}})
    assert (await api.until(later["id"], "completed", timeout=20))["status"] == "completed"
    assert (await api.until(first["id"], "completed", timeout=20))["status"] == "completed"
    assert runtime.supervisor.deaths == 1
    assert runtime.supervisor.dead == {}
