"""Proven stop and spend: a cancelled execution's record says whether the GPU was seen to
stop, when, and what it cost; the provider is given the deadline; cancels keep the
provider's pace."""

from __future__ import annotations

import asyncio
import itertools
import time
from typing import Any

import aiohttp

from runner.backends.config import BackendSpec
from runner.cancel.remote import SWEEP_CONCURRENCY
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from tests.client import Api, freeze
from tests.conftest import Cluster

HOLD = {"backend": "rp", "input": {"hold": True}}


def _rp(fake: FakeProviders, **extra: Any) -> dict[str, BackendSpec]:
    options = {"poll_interval_s": 0.05, **extra}
    return {
        "rp": BackendSpec(
            name="rp", kind="runpod", base_url=fake.runpod_url, endpoint_id="ep1", api_key="rp-key", **options
        )
    }


def _fal(fake: FakeProviders, **extra: Any) -> dict[str, BackendSpec]:
    options = {"poll_interval_s": 0.05, **extra}
    return {
        "fal": BackendSpec(
            name="fal",
            kind="fal",
            base_url=fake.fal_url,
            model="fal-ai/flux/dev",
            api_key="fal-key",
            **options,
        )
    }


def _rep(fake: FakeProviders, **extra: Any) -> dict[str, BackendSpec]:
    options = {"poll_interval_s": 0.05, **extra}
    return {
        "rep": BackendSpec(
            name="rep",
            kind="replicate",
            base_url=fake.replicate_url,
            version="v1",
            api_key="r8-key",
            **options,
        )
    }


async def _running(api: Api, backend: str, fake: FakeProviders | None = None) -> tuple[dict[str, Any], str]:
    """A job whose work runs at its provider (for fal, picked up by a runner: a cancel of a
    queued request just removes it)."""
    job = await api.submit({"backend": backend, "input": {"hold": True}})
    running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
    remote_id = running["executions"][0]["remote_id"]
    if fake is not None:
        await fake.fal.until(lambda: fake.fal.requests[remote_id].status == "IN_PROGRESS")
    return job, remote_id


async def _running_at_runpod(api: Api, fake: FakeProviders) -> tuple[dict[str, Any], str]:
    return await _running(api, "rp")


async def _metric(rt: Runtime, line_start: str) -> str | None:
    text = rt.metrics.render().decode()
    return next((line for line in text.splitlines() if line.startswith(line_start)), None)


async def test_a_cancel_is_confirmed_once_the_provider_reports_the_work_over(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """fal: an app with a cancel route stops a few polls after the cancel, then COMPLETED."""
    fake_gpu.fal.cancel_lag_polls = 6
    rt = await cluster.start(backends=_fal(fake_gpu))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job, remote_id = await _running(api, "fal", fake_gpu)
    assert (await api.cancel(job["id"]))[0] == 200
    acked = await api.until_execution(
        job["id"], 0, lambda e: e["remote_cancel"] in ("acknowledged", "confirmed")
    )
    assert (
        acked["executions"][0]["remote_stopped_at"] is None
        or acked["executions"][0]["remote_cancel"] == "confirmed"
    )
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "confirmed")
    execution = done["executions"][0]
    assert execution["remote_stopped_at"] > done["cancelled_at"]  # seen over after the cancel
    assert execution["gpu_seconds"] is not None and execution["gpu_seconds"] > 0  # fal's inference_time
    assert done["gpu_seconds"] == execution["gpu_seconds"]
    audit = (await api.call("GET", f"/jobs/{job['id']}/audit"))[1]["events"]
    assert next(e for e in audit if e["kind"] == "remote_stop_confirmed")["detail"]["remote_id"] == remote_id
    assert fake_gpu.fal.cancels == [remote_id]  # confirmed in time: sent once
    assert (
        await _metric(rt, "runner_cancel_to_confirmed_stop_seconds_count")
    ) == "runner_cancel_to_confirmed_stop_seconds_count 1.0"


async def test_work_that_never_stops_is_cancelled_again_and_counted(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """fal: an app without a cancel route ignores the cancel and runs to its end
    (fal's e2e test_app_cancellation)."""
    fake_gpu.fal.cancel_route = False
    # Backoffs long enough to show past the sweeper's one-second tick.
    rt = await cluster.start(backends=_fal(fake_gpu, confirm_within_s=0.3, poll_interval_s=0.5))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job, remote_id = await _running(api, "fal", fake_gpu)
    assert (await api.cancel(job["id"]))[0] == 200
    times: list[float] = []

    def sent() -> bool:
        if len(fake_gpu.fal.cancels) > len(times):
            times.append(time.monotonic())
        return len(times) >= 4

    await fake_gpu.fal.until(sent, 30)
    gaps = [b - a for a, b in itertools.pairwise(times)]
    assert gaps[2] > gaps[0], gaps  # sent again with a backoff that doubles
    assert rt.worker is not None
    await rt.worker.housekeeping()
    assert (
        await _metric(rt, 'runner_remote_unconfirmed{backend="fal"}')
        == 'runner_remote_unconfirmed{backend="fal"} 1.0'
    )
    execution = (await api.job(job["id"]))["executions"][0]
    assert execution["remote_cancel"] == "acknowledged" and execution["remote_stopped_at"] is None
    fake_gpu.fal.finish(remote_id, {"images": []})  # the app reaches its end: COMPLETED
    await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "confirmed", timeout=30)


async def test_a_429_without_retry_after_is_retried_with_backoff(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """RunPod documents no Retry-After on its 429."""
    fake_gpu.runpod.cancel_429 = 1
    rt = await cluster.start(backends=_rp(fake_gpu))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job, _ = await _running_at_runpod(api, fake_gpu)
    assert (await api.cancel(job["id"]))[0] == 200
    await api.until_execution(
        job["id"], 0, lambda e: e["remote_cancel"] in ("acknowledged", "confirmed"), timeout=20
    )
    first, second = fake_gpu.runpod.cancel_times[:2]
    assert second - first >= 1.0  # the second try's backoff: 2 s, less up to a quarter of jitter


async def test_submissions_carry_the_deadline(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(backends=_rp(fake_gpu, deadline_s=3600))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    await api.submit({"backend": "rp", "input": {"polls": 1}}, timeout_s=120)
    await api.submit({"backend": "rp", "input": {"polls": 1}})
    while len(fake_gpu.runpod.submits) < 2:  # noqa: ASYNC110 - the fake's state
        await asyncio.sleep(0.02)
    timeouts = sorted(s["policy"]["executionTimeout"] for s in fake_gpu.runpod.submits)
    assert 110_000 <= timeouts[0] <= 120_000  # the job's timeout_s, less the time it waited
    assert timeouts[1] == 3_600_000  # the backend's deadline_s


async def test_confirmation_resumes_on_another_instance(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """The instance that cancelled dies before the work is seen over: another confirms it
    (the state is in Postgres)."""
    fake_gpu.fal.cancel_lag_polls = 4
    a = await cluster.start(backends=_fal(fake_gpu, poll_interval_s=2.0))
    api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
    job, _ = await _running(api, "fal", fake_gpu)
    assert (await api.cancel(job["id"]))[0] == 200
    await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
    freeze(a)  # gone, with the confirmation still to do (its next look was 2 s away)
    b = await cluster.start("worker", backends=_fal(fake_gpu))
    assert b.worker is not None
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "confirmed", timeout=30)
    assert done["executions"][0]["remote_stopped_at"] is not None


async def test_usage_adds_up_the_callers_jobs_only(cluster: Cluster, http: aiohttp.ClientSession) -> None:
    rt = await cluster.start()
    base = f"http://127.0.0.1:{rt.port}"
    alice, bob = await Api.signed_in(http, base), await Api.signed_in(http, base)
    mine = [
        await alice.submit(
            {"backend": "demo", "input": {"seconds": 0.05}}, {"backend": "demo", "input": {"seconds": 0.1}}
        )
        for _ in range(2)
    ]
    cancelled = await alice.submit({"backend": "demo", "input": {"seconds": 60}})
    await alice.until(cancelled["id"], "running")
    await alice.cancel(cancelled["id"], wait=True)
    theirs = await bob.submit({"backend": "demo", "input": {"seconds": 0.2}})
    done = [await alice.until(j["id"], "completed") for j in mine]
    await bob.until(theirs["id"], "completed")
    status, usage = await alice.call("GET", "/usage")
    assert status == 200 and usage["address"] == alice.wallet.address  # type: ignore[union-attr]
    assert usage["jobs"] == 3 and usage["executions"] == 5
    spent = sum(j["gpu_seconds"] for j in done) + ((await alice.job(cancelled["id"]))["gpu_seconds"] or 0)
    assert abs(usage["gpu_seconds"] - spent) < 0.01
    demo = usage["backends"]["demo"]
    assert demo["executions"] == 5 and demo["cancelled"] == 1 and demo["gpu_seconds_after_cancel"] >= 0
    assert all(j["gpu_seconds"] >= 0.15 for j in done)  # measured: 0.05 + 0.1 s of "work"
    status, empty = await alice.call("GET", "/usage?since=2000-01-01T00:00:00Z&until=2000-02-01T00:00:00Z")
    assert status == 200 and empty["jobs"] == 0 and empty["backends"] == {}
    assert (await alice.call("GET", "/usage?since=yesterday"))[0] == 400


async def test_a_sweep_confirms_a_few_at_a_time(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    """A hundred confirmations at once would fill every turn of the service's loop (a cancel
    arriving then waits behind them): the sweeper keeps a few in flight."""
    rt = await cluster.start(backends=_rep(fake_gpu))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    jobs = [(await _running(api, "rep"))[0] for _ in range(12)]
    fake_gpu.replicate.status_delay_s = 0.2  # a slow provider, so that calls overlap
    status, reply = await api.call("POST", "/jobs/cancel", json={})
    assert status == 200 and reply["count"] == 12
    for job in jobs:  # every remote cancel answered: the jobs' own polling is over
        await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] in ("acknowledged", "confirmed"))
    fake_gpu.replicate.status_open_max = fake_gpu.replicate.status_open
    for job in jobs:
        await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "confirmed", timeout=30)
    assert 2 <= fake_gpu.replicate.status_open_max <= SWEEP_CONCURRENCY
