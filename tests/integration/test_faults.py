"""Faults without loss: Postgres outages, a wedged listener, a cancel during an outage,
crashes and second signals -- tested for real, with a Postgres server the test stops and
starts and, where a process boundary matters, real `runner serve` processes."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import time
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import psutil
import pytest

from runner.config import Settings
from runner.db import DATABASE_ERRORS
from runner.fakes import FakeProviders
from runner.service import running_service
from tests.client import Api
from tests.conftest import Cluster
from tests.pg import StoppablePostgres
from tests.procs import ServeProcess

# An outage is a length of time: these waits are the fault itself, not synchronization.
OUTAGE_S = 3.0


@pytest.fixture
def own_pg(tmp_path: Path) -> Iterator[StoppablePostgres]:
    pg = StoppablePostgres(tmp_path)
    pg.start()
    yield pg
    pg.start()  # a test that failed mid-outage leaves it stopped
    pg.cleanup()


def backends_toml(fake: FakeProviders) -> str:
    return f"""
[backends.gpu]
kind = "http"
url = "{fake.base_url}/run"
cancel_url = "{fake.base_url}/cancel/{{execution_id}}"
"""


async def _status_of(http: aiohttp.ClientSession, url: str) -> int:
    try:
        async with http.get(url, timeout=aiohttp.ClientTimeout(total=5)) as resp:
            return resp.status
    except (aiohttp.ClientError, TimeoutError):
        return 0


async def until_status(http: aiohttp.ClientSession, url: str, status: int, timeout: float) -> float:
    """Poll `url` until it answers `status`; returns how long that took."""
    began = time.monotonic()
    while (await _status_of(http, url)) != status:
        assert time.monotonic() - began < timeout, f"{url} did not answer {status} within {timeout} s"
        await asyncio.sleep(0.1)
    return time.monotonic() - began


async def until_all(
    api: Api, job_ids: list[str], statuses: tuple[str, ...], timeout: float = 60
) -> list[dict[str, Any]]:
    return [await api.until(job_id, *statuses, timeout=timeout) for job_id in job_ids]


def _requeues(events: list[dict[str, Any]]) -> list[dict[str, Any]]:
    return [e for e in events if e["kind"] == "requeued"]


# -- results survive an outage -----------------------------------------------------------------


async def test_a_3s_outage_loses_no_result_and_calls_no_backend_twice(
    own_pg: StoppablePostgres, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    serve = await ServeProcess(
        own_pg.dsn, backends_toml(fake_gpu), env_extra={"RUNNER_LEASE_S": "15"}
    ).start()
    try:
        api = await Api.signed_in(http, serve.base_url)
        jobs = [
            await api.submit({"backend": "gpu", "input": {"mode": "until_released", "n": i}})
            for i in range(10)
        ]
        executions = [j["executions"][0]["id"] for j in jobs]
        await asyncio.wait_for(asyncio.gather(*(fake_gpu.web.started[e].wait() for e in executions)), 30)

        own_pg.stop()
        fake_gpu.web.release.set()  # the GPU work ends while the database is away
        took = await until_status(http, serve.base_url + "/readyz", 503, timeout=15)
        await asyncio.sleep(max(OUTAGE_S - took, 0))
        own_pg.start()
        back = time.monotonic()
        ready = await until_status(http, serve.base_url + "/readyz", 200, timeout=30)

        done = await until_all(api, [j["id"] for j in jobs], ("completed", "failed", "cancelled"))
        print(
            f"\nmeasured: 3 s outage: /readyz 503 after {took:.2f} s; 200 {ready:.2f} s after the "
            f"restart; all 10 results written {time.monotonic() - back:.2f} s after it"
        )
        assert [j["status"] for j in done] == ["completed"] * 10, done
        assert [fake_gpu.web.calls_for(e) for e in executions] == [1] * 10
    finally:
        await serve.stop()


async def test_an_outage_of_two_leases_takes_no_job_from_a_live_instance(
    own_pg: StoppablePostgres, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    lease = {"RUNNER_LEASE_S": "1.5", "RUNNER_CONCURRENCY": "3"}
    one = await ServeProcess(own_pg.dsn, backends_toml(fake_gpu), env_extra=lease).start()
    two = await ServeProcess(own_pg.dsn, backends_toml(fake_gpu), env_extra=lease).start()
    try:
        api = await Api.signed_in(http, one.base_url)
        jobs = [
            await api.submit({"backend": "gpu", "input": {"mode": "until_released", "n": i}})
            for i in range(6)
        ]  # three on each instance: each runs at most three
        executions = [j["executions"][0]["id"] for j in jobs]
        await asyncio.wait_for(asyncio.gather(*(fake_gpu.web.started[e].wait() for e in executions)), 30)

        own_pg.stop()
        await asyncio.sleep(2 * 1.5 + 0.5)  # the outage: two leases and a half
        own_pg.start()
        back = time.monotonic()
        # Both instances are back; give the first to return a chance to misjudge the other.
        for serve in (one, two):
            await until_status(http, serve.base_url + "/readyz", 200, timeout=30)
        print(
            f"\nmeasured: outage of 2.3 leases, two instances: both ready {time.monotonic() - back:.2f} s "
            "after the restart"
        )
        await asyncio.sleep(2 * 1.5)
        fake_gpu.web.release.set()

        done = await until_all(api, [j["id"] for j in jobs], ("completed", "failed", "cancelled"))
        assert [j["status"] for j in done] == ["completed"] * 6, done
        assert [fake_gpu.web.calls_for(e) for e in executions] == [1] * 6
        for job in jobs:
            _, audit = await api.call("GET", f"/jobs/{job['id']}/audit")
            assert not _requeues(audit["events"]), audit
    finally:
        await asyncio.gather(one.stop(), two.stop())


async def test_a_job_postgres_says_we_hold_but_no_task_does_is_requeued(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    """Running means held, both ways: a job left `running` under this instance with no task
    (its task ended without its final write) goes back to the queue at the next renewal."""
    runtime = await cluster.start("all", settings.replace(lease_s=0.6, concurrency=1))
    api = await Api.signed_in(http, f"http://127.0.0.1:{runtime.port}")
    job = await api.submit({"backend": "demo", "input": {"seconds": 0.05}})
    await api.until(job["id"], "completed")
    assert runtime.worker is not None
    async with runtime.pool.acquire() as conn:
        # What a crashed task leaves behind: the row says we run it, nothing here does.
        orphan = await api.submit({"backend": "demo", "input": {"seconds": 0.05}})
        await api.until(orphan["id"], "completed")
        await conn.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_terminal_is_final")
        await conn.execute(
            "UPDATE jobs SET status = 'running', worker_id = $1, finished_at = NULL WHERE id = $2",
            runtime.instance_id,
            orphan["id"],
        )
        await conn.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_terminal_is_final")
    requeued = await _wait_for_event(api, orphan["id"], "requeued", timeout=10)
    assert requeued["detail"]["reason"] == "not_held", requeued


async def test_a_final_write_that_fails_again_at_the_renewal_is_kept_not_requeued(
    own_pg: StoppablePostgres, settings: Settings, http: aiohttp.ClientSession
) -> None:
    """A job whose task ended without its final write is settled at the lease renewal. When
    that write fails too (Postgres gone again), the job stays to settle: it is not left for
    the orphan check to requeue, which would run its paid work a second time."""
    async with running_service(settings.replace(lease_s=60.0), dsn=own_pg.dsn) as rt:
        assert rt.worker is not None
        api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
        job = await api.submit({"backend": "demo", "input": {"seconds": 0.05}})
        await api.until(job["id"], "completed")
        job_id = uuid.UUID(job["id"])
        async with rt.pool.acquire() as conn:
            # What a failed final write leaves: every execution done, the row running here.
            await conn.execute("ALTER TABLE jobs DISABLE TRIGGER jobs_terminal_is_final")
            await conn.execute(
                "UPDATE jobs SET status = 'running', worker_id = $1, finished_at = NULL WHERE id = $2",
                rt.instance_id,
                job_id,
            )
            await conn.execute("ALTER TABLE jobs ENABLE TRIGGER jobs_terminal_is_final")
        rt.worker.tasks.unsettled.add(job_id)
        own_pg.stop()
        with pytest.raises(DATABASE_ERRORS):
            await rt.worker.leases._settle()
        assert job_id in rt.worker.tasks.unsettled
        own_pg.start()
        deadline = time.monotonic() + 30
        while job_id in rt.worker.tasks.unsettled:
            assert time.monotonic() < deadline, "never settled"
            with contextlib.suppress(*DATABASE_ERRORS):  # the pool finds its connections dead
                await rt.worker.renew_leases()
            await asyncio.sleep(0.1)
        settled = await api.until(job["id"], "completed")
        _, audit = await api.call("GET", f"/jobs/{job['id']}/audit")
        started = [e for e in audit["events"] if e["kind"] == "started"]
        assert settled["status"] == "completed" and _requeues(audit["events"]) == [] and len(started) == 1


async def test_a_job_to_settle_that_runs_here_again_is_left_to_its_task(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession
) -> None:
    """A job still to settle here may have been requeued elsewhere meanwhile (Postgres away
    for a lease) and claimed here again: its new task writes its end. Settling it must not
    requeue it under that task, which would run its work twice."""
    rt = await cluster.start("all", settings.replace(lease_s=60.0))
    assert rt.worker is not None
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    await api.until(job["id"], "running")
    job_id = uuid.UUID(job["id"])
    assert rt.manager.is_running(job_id)
    rt.worker.tasks.unsettled.add(job_id)  # left from its earlier run here
    await rt.worker.leases._settle()
    assert job_id not in rt.worker.tasks.unsettled
    _, audit = await api.call("GET", f"/jobs/{job['id']}/audit")
    assert _requeues(audit["events"]) == [], audit
    assert (await api.job(job["id"]))["status"] == "running"


async def _wait_for_event(api: Api, job_id: str, kind: str, timeout: float) -> dict[str, Any]:
    began = time.monotonic()
    while True:
        _, audit = await api.call("GET", f"/jobs/{job_id}/audit")
        found = [e for e in audit["events"] if e["kind"] == kind]
        if found:
            return found[0]
        assert time.monotonic() - began < timeout, audit
        await asyncio.sleep(0.05)


# -- nothing waits without a bound -------------------------------------------------------------


async def test_a_wedged_listener_stalls_nothing_and_readyz_says_so(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    runtime = await cluster.start("all")
    base = f"http://127.0.0.1:{runtime.port}"
    api = await Api.signed_in(http, base)
    job = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    assert runtime.listener is not None
    pid = runtime.listener.backend_pid
    assert pid is not None
    os.kill(pid, signal.SIGSTOP)  # a half-open connection: nothing answers, nothing fails
    try:
        # A server-sent stream starts (its LISTEN is bounded), twice, one after the other.
        for _ in range(2):
            async with http.get(
                base + f"/jobs/{job['id']}/events",
                headers=api.headers,
                timeout=aiohttp.ClientTimeout(total=12),
            ) as resp:
                assert resp.status == 200
                line = await resp.content.readline()
                assert line.startswith(b"data: "), line
        unready = await until_status(http, base + "/readyz", 503, timeout=15)
    finally:
        os.kill(pid, signal.SIGCONT)
    ready = await until_status(http, base + "/readyz", 200, timeout=30)
    print(
        f"\nmeasured: wedged listener: two event streams answered; /readyz 503 {unready:.2f} s after "
        f"the streams, 200 {ready:.2f} s after SIGCONT"
    )
    status, reply = await api.cancel(job["id"], wait=True)
    assert status == 200 and reply["stopped"] is True, reply


async def test_an_event_stream_outlives_a_short_outage(
    own_pg: StoppablePostgres,
    settings: Settings,
    http: aiohttp.ClientSession,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import api.events

    monkeypatch.setattr(api.events, "PING_S", 0.2)
    async with running_service(settings, dsn=own_pg.dsn) as runtime:
        base = f"http://127.0.0.1:{runtime.port}"
        client = await Api.signed_in(http, base)
        job = await client.submit({"backend": "demo", "input": {"seconds": 60}})
        await client.until(job["id"], "running")
        async with http.get(base + f"/jobs/{job['id']}/events", headers=client.headers) as resp:
            assert (await resp.content.readline()).startswith(b"data: ")
            own_pg.stop()
            pings = 0
            while pings < 5:  # the stream goes on through the outage, pinging
                line = await asyncio.wait_for(resp.content.readline(), 10)
                assert line != b"", "the stream was cut"
                pings += line.startswith(b": ping")
            own_pg.start()
            await until_status(http, base + "/readyz", 200, timeout=30)
            status, _ = await client.cancel(job["id"])
            assert status == 200
            seen = b""
            while b'"cancelled"' not in seen:
                line = await asyncio.wait_for(resp.content.readline(), 10)
                assert line != b"", "the stream ended before the cancel"
                seen += line if line.startswith(b"data: ") else b""


# -- a cancel during an outage -----------------------------------------------------------------


async def test_a_cancel_during_an_outage_stops_the_work_and_is_recorded_after(
    own_pg: StoppablePostgres, settings: Settings, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    async with running_service(settings, dsn=own_pg.dsn) as runtime:
        base = f"http://127.0.0.1:{runtime.port}"
        client = await Api.signed_in(http, base)
        job = await client.submit({"backend": "gpu", "input": {"mode": "hold"}})
        execution = job["executions"][0]["id"]
        await asyncio.wait_for(fake_gpu.web.started[execution].wait(), 10)
        own_pg.stop()
        await asyncio.sleep(1.0)  # longer than the session cache's life: the token must be remembered
        began = time.perf_counter()
        status, reply = await client.cancel(job["id"], reason="stop it")
        assert status == 503 and reply["error"] == "unavailable", reply
        await asyncio.wait_for(fake_gpu.web.closed[execution].wait(), 1.0)
        closed_ms = (fake_gpu.web.closed_at[execution] - began) * 1000
        # Someone else's token, or none, is still refused: the fallback fails closed.
        other = Api(http, base, "not-a-token")
        assert (await other.cancel(job["id"]))[0] in (401, 503)
        own_pg.start()
        back = time.monotonic()
        done = await client.until(job["id"], "cancelled", timeout=30)
        print(
            f"\nmeasured: cancel during an outage: 503, the backend's connection closed {closed_ms:.1f} ms "
            f"after the request; on record {time.monotonic() - back:.2f} s after the restart"
        )
        assert done["cancel_reason"] == "stop it" and done["cancelled_by"] == client.wallet.address  # type: ignore[union-attr]
        await asyncio.wait_for(fake_gpu.web.url_cancelled[execution].wait(), 30)
        assert fake_gpu.web.calls_for(execution) == 1


# -- processes clean up after themselves -------------------------------------------------------


def _postgres_running_on(pgdata: Path) -> list[psutil.Process]:
    found = []
    for proc in psutil.process_iter(attrs=["name", "cmdline"]):
        cmdline = proc.info["cmdline"] or []
        if proc.info["name"] == "postgres" and any(str(pgdata) in part for part in cmdline):
            found.append(proc)
    return found


@pytest.fixture
def data_dir(tmp_path: Path) -> Iterator[Path]:
    path = tmp_path / "state"
    yield path
    for proc in _postgres_running_on((path / "pg").resolve()):  # never leave one behind
        proc.kill()


async def test_a_crashed_serve_leaves_no_postgres_after_the_next_clean_stop(
    data_dir: Path, http: aiohttp.ClientSession
) -> None:
    env = {"RUNNER_DATA_DIR": str(data_dir)}
    crashed = await ServeProcess(None, env_extra=env).start()
    crashed.kill()
    assert await crashed.wait() == -signal.SIGKILL
    assert _postgres_running_on((data_dir / "pg").resolve()), "the embedded server outlives a crash"
    clean = await ServeProcess(None, env_extra=env).start()
    assert await _status_of(http, clean.base_url + "/readyz") == 200
    await clean.stop()
    assert clean.proc is not None and clean.proc.returncode == 0
    assert not _postgres_running_on((data_dir / "pg").resolve())


async def test_an_instance_does_not_stop_the_embedded_postgres_under_another(
    data_dir: Path, http: aiohttp.ClientSession
) -> None:
    env = {"RUNNER_DATA_DIR": str(data_dir)}
    first = await ServeProcess(None, env_extra=env).start()
    second = await ServeProcess(None, env_extra=env).start()
    await first.stop()
    assert await _status_of(http, second.base_url + "/readyz") == 200
    api = await Api.signed_in(http, second.base_url)
    assert (await api.call("GET", "/jobs"))[0] == 200
    await second.stop()
    assert not _postgres_running_on((data_dir / "pg").resolve())


async def test_a_remote_cancel_under_way_at_shutdown_is_awaited_and_recorded(
    dsn: str, settings: Settings, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """A cancelled execution is telling its backend to stop when the instance shuts down: the
    shutdown interrupts its job's task, which cancels the execution's task a second time. The
    send is the instance's to finish and record before the pool closes, not a task left
    running on its own."""
    fake_gpu.web.url_cancel_delay_s = 1.0
    async with running_service(settings.replace(shutdown_grace_s=0.0), dsn=dsn) as rt:
        api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
        job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
        execution = job["executions"][0]["id"]
        await asyncio.wait_for(fake_gpu.web.started[execution].wait(), 10)
        status, _ = await api.call("POST", f"/jobs/{job['id']}/executions/{execution}/cancel")
        assert status == 200
        await asyncio.wait_for(fake_gpu.web.url_cancelled[execution].wait(), 10)
    sends = [t for t in asyncio.all_tasks() if "RemoteCanceller.send" in repr(t.get_coro())]
    assert sends == []
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        owed = await pool.fetchval("SELECT remote_cancel FROM executions WHERE id = $1::uuid", execution)
    assert owed != "pending", owed  # the backend's answer was recorded


# -- signals ------------------------------------------------------------------------------------


async def test_a_second_sigint_skips_the_grace_period(
    dsn: str, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    serve = await ServeProcess(
        dsn, backends_toml(fake_gpu), env_extra={"RUNNER_SHUTDOWN_GRACE_S": "60"}
    ).start()
    api = await Api.signed_in(http, serve.base_url)
    job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
    execution = job["executions"][0]["id"]
    await asyncio.wait_for(fake_gpu.web.started[execution].wait(), 10)
    serve.signal(signal.SIGINT)
    await serve.wait_log("draining")
    serve.signal(signal.SIGINT)
    began = time.monotonic()
    assert await serve.wait(timeout=15) == 0  # not the 60 s grace
    print(f"\nmeasured: second SIGINT: exited {time.monotonic() - began:.2f} s after it (grace 60 s)")
    await asyncio.wait_for(fake_gpu.web.closed[execution].wait(), 5)
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        row = await pool.fetchrow("SELECT status, attempts FROM jobs WHERE id = $1::uuid", job["id"])
    assert row["status"] == "queued" and row["attempts"] == 0  # requeued, the attempt handed back


async def test_sigusr_leaves_serve_running_and_sighup_drains(
    dsn: str, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """SIGUSR1/SIGUSR2 (sent by tools probing a process) used to kill it with no drain, and
    so did SIGHUP (a closed terminal, a supervisor's reload): now the first two are logged
    and ignored, and SIGHUP drains as SIGTERM does."""
    serve = await ServeProcess(
        dsn, backends_toml(fake_gpu), env_extra={"RUNNER_SHUTDOWN_GRACE_S": "60"}
    ).start()
    try:
        api = await Api.signed_in(http, serve.base_url)
        job = await api.submit({"backend": "gpu", "input": {"mode": "until_released"}})
        execution = job["executions"][0]["id"]
        await asyncio.wait_for(fake_gpu.web.started[execution].wait(), 10)
        for sig in (signal.SIGUSR1, signal.SIGUSR2):
            serve.signal(sig)
            await serve.wait_log("signal_ignored", signal=sig.name)  # fails if it died of it
            assert serve.alive
            assert await _status_of(http, serve.base_url + "/healthz") == 200
            assert await _status_of(http, serve.base_url + "/readyz") == 200
        assert not fake_gpu.web.closed[execution].is_set()  # the job's call is still open
        serve.signal(signal.SIGHUP)
        await serve.wait_log("draining", jobs=1)
        assert await _status_of(http, serve.base_url + "/readyz") == 503
        assert serve.alive and not fake_gpu.web.closed[execution].is_set()
        fake_gpu.web.release.set()  # the job finishes within the grace period...
        assert await serve.wait(timeout=30) == 0  # ...and the process ends cleanly
        assert serve.events("drained") and serve.events("service_stopped")
    finally:
        await serve.stop()
    async with asyncpg.create_pool(dsn, min_size=1, max_size=1) as pool:
        status = await pool.fetchval("SELECT status FROM jobs WHERE id = $1::uuid", job["id"])
    assert status == "completed"


async def test_a_remote_id_that_arrives_during_an_outage_is_kept_until_stored(
    own_pg: StoppablePostgres, settings: Settings, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """The provider accepted the work while Postgres was away: its id is stored once Postgres
    is back (never lost, never submitted again), and the job finishes."""
    fake_gpu.runpod.answer_gate = asyncio.Event()
    async with running_service(settings, dsn=own_pg.dsn) as runtime:
        client = await Api.signed_in(http, f"http://127.0.0.1:{runtime.port}")
        job = await client.submit({"backend": "rp", "input": {"polls": 2}})
        await asyncio.wait_for(fake_gpu.runpod.submitted.wait(), 10)
        own_pg.stop()
        fake_gpu.runpod.answer_gate.set()
        await asyncio.sleep(OUTAGE_S)
        own_pg.start()
        done = await client.until(job["id"], "completed", "failed", timeout=30)
        assert done["status"] == "completed", done
        assert done["executions"][0]["remote_id"] in fake_gpu.runpod.jobs
        assert len(fake_gpu.runpod.submits) == 1
