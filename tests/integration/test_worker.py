"""The worker on real Postgres with a fake GPU provider on a real socket."""

from __future__ import annotations

import asyncio
import collections
import os
import signal
import sys
import uuid
from typing import Any

import aiohttp
import asyncpg

from runner.config import Settings
from runner.fakes import FakeProviders
from runner.service import running_service
from tests.client import Api, free_port, freeze, wait_event
from tests.conftest import Cluster


async def _events(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/jobs/{job_id}/audit")
    assert status == 200
    events: list[dict[str, Any]] = body["events"]
    return events


async def test_http_job_runs_to_completion_with_output_stored(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit(
        {"backend": "plain", "input": {"mode": "echo", "n": 1}},
        {"backend": "plain", "input": {"mode": "redirect", "hops": 2}},
    )
    done = await api.until(job["id"], "completed")
    first, second = done["executions"]
    assert first["output"] == {"echo": {"mode": "echo", "n": 1}, "job": job["id"]}
    assert second["output"] == {"result": "done"}
    assert first["status"] == second["status"] == "completed"
    assert first["finished_at"] and done["finished_at"] and done["started_at"]
    seen = {c["headers"]["X-Runner-Execution-Id"] for c in fake_gpu.web.calls}
    assert seen == {first["id"], second["id"]}
    kinds = [e["kind"] for e in await _events(api, job["id"])]
    assert kinds[:2] == ["submitted", "started"] and kinds[-1] == "completed"
    assert kinds.count("execution_completed") == 2


async def test_the_result_write_finishes_the_job_and_its_task_counts_it(
    api: Api, db: asyncpg.Connection
) -> None:
    job = await api.submit({"backend": "plain", "input": {"mode": "echo"}})
    await api.until(job["id"], "completed")
    rows = await db.fetch(
        "SELECT kind, xmin::text AS tx FROM job_events WHERE job_id = $1 ORDER BY id", uuid.UUID(job["id"])
    )
    assert [r["kind"] for r in rows][-2:] == ["execution_completed", "completed"]
    assert rows[-1]["tx"] == rows[-2]["tx"]  # one statement, one commit
    # The job's task learns its final status from that write (no finalize after it).
    await _until_metric(api, 'runner_jobs_finished_total{status="completed"} 1.0')


async def _until_metric(api: Api, line: str, timeout: float = 10.0) -> None:
    async with asyncio.timeout(timeout):
        while True:
            async with api.http.get(f"{api.base}/metrics") as resp:
                if line in (await resp.text()).splitlines():
                    return
            await asyncio.sleep(0.02)


async def test_one_failed_execution_fails_the_job_and_keeps_the_other_result(api: Api) -> None:
    job = await api.submit(
        {"backend": "plain", "input": {"mode": "echo"}}, {"backend": "plain", "input": {"mode": "text"}}
    )
    done = await api.until(job["id"], "failed")
    ok, bad = done["executions"]
    assert ok["status"] == "completed" and ok["output"]["echo"] == {"mode": "echo"}
    assert bad["status"] == "failed" and "non-JSON" in bad["error"] and bad["output"] is None


async def test_runpod_job_stores_remote_id_and_completes(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit({"backend": "rp", "input": {"polls": 3}})
    done = await api.until(job["id"], "completed")
    [execution] = done["executions"]
    assert execution["remote_id"] in fake_gpu.runpod.jobs
    assert execution["output"] == {"done": {"polls": 3}}
    assert execution["attempts"] == 1 and len(fake_gpu.runpod.submits) == 1
    assert fake_gpu.runpod.submits[0] == {"input": {"polls": 3}}


async def _worker_of(db: Any, job_id: str) -> str | None:
    worker: str | None = await db.fetchval("SELECT worker_id FROM jobs WHERE id = $1", uuid.UUID(job_id))
    return worker


async def _kinds(db: Any, job_id: str) -> list[str]:
    rows = await db.fetch("SELECT kind FROM job_events WHERE job_id = $1 ORDER BY id", uuid.UUID(job_id))
    return [r["kind"] for r in rows]


async def _until_worker(db: Any, job_id: str, worker_id: str, timeout: float = 10.0) -> None:
    """Wait on the row until `worker_id` holds the job."""
    async with asyncio.timeout(timeout):
        while await _worker_of(db, job_id) != worker_id:  # noqa: ASYNC110 - the row is the truth
            await asyncio.sleep(0.02)


async def test_lost_lease_requeues_and_resumes_runpod_by_remote_id(
    cluster: Cluster,
    dsn: str,
    settings: Settings,
    http: aiohttp.ClientSession,
    fake_gpu: FakeProviders,
    db: Any,
) -> None:
    fast = settings.replace(lease_s=0.6)
    async with running_service(fast, dsn=dsn) as a:
        api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
        job = await api.submit({"backend": "rp", "input": {"hold": True}})
        running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
        remote_id = running["executions"][0]["remote_id"]
        freeze(a)  # instance A dies with the RunPod job still running
        b = await cluster.start("worker", fast)
        # B requeues the job once A's lease expires, claims it, and polls the same id.
        await _until_worker(db, job["id"], b.instance_id)
        fake_gpu.runpod.finish(remote_id, {"image": "ok"})
        done = await api.until(job["id"], "completed")
    [execution] = done["executions"]
    assert execution["output"] == {"image": "ok"} and execution["remote_id"] == remote_id
    assert len(fake_gpu.runpod.submits) == 1  # resumed by polling, never submitted twice
    kinds = await _kinds(db, job["id"])
    assert kinds.count("started") == 2 and "requeued" in kinds and "cancelled" not in kinds
    assert await db.fetchval("SELECT attempts FROM jobs WHERE id = $1", uuid.UUID(job["id"])) == 2


async def test_out_of_attempts_fails_clearly_and_stops_the_gpu(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    fast = settings.replace(lease_s=0.6, max_job_attempts=1)
    async with running_service(fast, dsn=dsn) as a:
        api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
        job = await api.submit({"backend": "rp", "input": {"hold": True}})
        running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
        remote_id = running["executions"][0]["remote_id"]
        freeze(a)
        async with running_service(fast, "worker", dsn=dsn):
            failed = await api.until(job["id"], "failed")
            # The GPU job would run on: a cancel is owed, and the sweeper delivers it.
            await wait_event(fake_gpu.runpod.cancelled[remote_id])
            after = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
    assert "worker was lost 1 times" in failed["error"]
    assert after["executions"][0]["status"] == "failed"
    assert fake_gpu.runpod.cancels == [remote_id]


async def test_shutdown_requeues_a_running_job_instead_of_cancelling_it(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeProviders, db: Any
) -> None:
    async with running_service(settings, dsn=dsn) as a:
        api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
        job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
        execution_id = job["executions"][0]["id"]
        await wait_event(fake_gpu.web.started[execution_id])
    # The drain interrupted the call (the provider saw it close) and requeued the job.
    assert fake_gpu.web.closed[execution_id].is_set()
    row = await db.fetchrow(
        "SELECT status, attempts, cancelled_at FROM jobs WHERE id = $1", uuid.UUID(job["id"])
    )
    assert (row["status"], row["attempts"], row["cancelled_at"]) == ("queued", 0, None)
    assert (
        await db.fetchval("SELECT status FROM executions WHERE job_id = $1", uuid.UUID(job["id"])) == "queued"
    )
    kinds = await _kinds(db, job["id"])
    assert kinds[-1] == "requeued" and "cancelled" not in kinds and "task_stopped" not in kinds
    # A shutdown is not a cancel, but an http call with no remote id cannot be resumed: its
    # cancel_url tells the endpoint to stop, and the job sends it again when resumed.
    assert fake_gpu.web.url_cancels == [execution_id]
    fake_gpu.web.started[execution_id].clear()
    async with running_service(settings, "worker", dsn=dsn):
        await wait_event(fake_gpu.web.started[execution_id])  # picked up again by the next instance
        assert (
            len([c for c in fake_gpu.web.calls if c["headers"]["X-Runner-Execution-Id"] == execution_id]) == 2
        )


async def test_drain_lets_short_jobs_finish(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, db: Any
) -> None:
    async with running_service(settings.replace(shutdown_grace_s=10), dsn=dsn) as a:
        api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
        job = await api.submit({"backend": "demo", "input": {"seconds": 0.3}})
        await api.until(job["id"], "running")
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(job["id"])) == "completed"


async def test_sigterm_on_runner_serve_requeues_and_exits_cleanly(
    dsn: str, http: aiohttp.ClientSession, fake_gpu: FakeProviders, db: Any, tmp_path: Any
) -> None:
    port = free_port()
    env = {
        **os.environ,
        "DATABASE_URL": dsn,
        "RUNNER_PORT": str(port),
        "RUNNER_LOG_FORMAT": "json",
        "RUNNER_SIWE_DOMAIN": "runner.test",
        "RUNNER_SHUTDOWN_GRACE_S": "0.2",
        "RUNNER_BACKENDS_TOML": f'[backends.gpu]\nkind = "http"\nurl = "{fake_gpu.base_url}/run"\n',
    }
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        "serve",
        env=env,
        cwd=tmp_path,
        stdout=asyncio.subprocess.DEVNULL,
        stderr=asyncio.subprocess.PIPE,
    )
    try:
        base = f"http://127.0.0.1:{port}"
        async with asyncio.timeout(30):
            while True:
                try:
                    async with http.get(f"{base}/readyz") as resp:
                        if resp.status == 200:
                            break
                except aiohttp.ClientConnectionError:
                    await asyncio.sleep(0.05)
        api = await Api.signed_in(http, base)
        job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
        await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
        proc.send_signal(signal.SIGTERM)
        _, err = await asyncio.wait_for(proc.communicate(), 30)
    finally:
        if proc.returncode is None:
            proc.kill()
    assert proc.returncode == 0, err.decode()[-2000:]
    log = err.decode()
    assert '"shutdown_requested"' in log and '"drained"' in log and '"service_stopped"' in log
    assert await db.fetchval("SELECT status FROM jobs WHERE id = $1", uuid.UUID(job["id"])) == "queued"
    assert (await _kinds(db, job["id"]))[-1] == "requeued"


async def test_two_workers_never_run_the_same_job(
    dsn: str, settings: Settings, http: aiohttp.ClientSession, fake_gpu: FakeProviders, db: Any
) -> None:
    async with (
        running_service(settings, "worker", dsn=dsn) as w1,
        running_service(settings, "worker", dsn=dsn) as w2,
        running_service(settings, "api", dsn=dsn) as front,
    ):
        api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
        jobs = await asyncio.gather(
            *(api.submit({"backend": "plain", "input": {"mode": "echo", "i": i}}) for i in range(60))
        )
        for job in jobs:
            await api.until(job["id"], "completed")
    calls = collections.Counter(c["headers"]["X-Runner-Execution-Id"] for c in fake_gpu.web.calls)
    assert len(calls) == 60 and set(calls.values()) == {1}
    rows = await db.fetch(
        "SELECT detail->>'worker' AS worker, count(*) AS n FROM job_events WHERE kind = 'started' GROUP BY 1"
    )
    per_worker = {r["worker"]: r["n"] for r in rows}
    assert sum(per_worker.values()) == 60
    assert set(per_worker) <= {w1.instance_id, w2.instance_id}
