"""The providers as they really behave (issue 24), through real instances of the service on
real Postgres, against the faithful fakes (runner.fakes) on a real local socket. Each of
these failed before its fix."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import Any

import aiohttp
import asyncpg

from runner.backends.config import BackendSpec
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from tests.client import Api, freeze
from tests.conftest import Cluster, backends_for

HOLD = {"hold": True}


async def _audit(api: Api, job_id: str) -> list[dict[str, Any]]:
    events: list[dict[str, Any]] = (await api.call("GET", f"/jobs/{job_id}/audit"))[1]["events"]
    return events


async def _until_audit(api: Api, job_id: str, kind: str, timeout: float = 15.0) -> dict[str, Any]:
    async with asyncio.timeout(timeout):
        while True:
            found = [e for e in await _audit(api, job_id) if e["kind"] == kind]
            if found:
                return found[0]
            await asyncio.sleep(0.05)


async def _running(api: Api, backend: str, work: dict[str, Any], **fields: Any) -> tuple[dict[str, Any], str]:
    job = await api.submit({"backend": backend, "input": work}, **fields)
    running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
    return job, running["executions"][0]["remote_id"]


def _metric(rt: Runtime, name: str) -> float | None:
    for line in rt.metrics.render().decode().splitlines():
        if line.startswith(name + " "):
            return float(line.split()[-1])
    return None


def _with(fake: FakeProviders, name: str, **changes: Any) -> dict[str, BackendSpec]:
    backends = backends_for(fake)
    backends[name] = dataclasses.replace(backends[name], **changes)
    return backends


# -- RunPod ---------------------------------------------------------------------------------------


async def test_a_runpod_cancel_stays_acknowledged_while_the_worker_runs_on(
    api: Api, fake_gpu: FakeProviders
) -> None:
    """/cancel answers CANCELLED at once and /status says so from then on, whatever a sync
    handler goes on doing: nothing there proves a stop."""
    job, remote_id = await _running(api, "rp", HOLD)
    await fake_gpu.runpod.until(lambda: fake_gpu.runpod.jobs[remote_id].worker_running)
    assert (await api.cancel(job["id"]))[0] == 200
    reported = await _until_audit(api, job["id"], "remote_cancel_reported")
    assert reported["detail"]["proves_stop"] is False
    execution = (await api.job(job["id"]))["executions"][0]
    assert execution["remote_cancel"] == "acknowledged" and execution["remote_stopped_at"] is None
    assert fake_gpu.runpod.worker_running(remote_id)  # the worker did run on
    assert fake_gpu.runpod.cancels == [remote_id]


async def test_runpod_running_status_is_still_running(api: Api, fake_gpu: FakeProviders) -> None:
    fake_gpu.runpod.running_status = "RUNNING"  # job-states.mdx
    job = await api.submit({"backend": "rp", "input": {"polls": 4}})
    done = await api.until(job["id"], "completed", "failed")
    assert done["status"] == "completed", done["executions"][0]["error"]


async def test_an_unknown_status_is_waited_out_and_counted(
    service: Runtime, api: Api, fake_gpu: FakeProviders
) -> None:
    fake_gpu.runpod.running_status = "WARMING_UP"  # a state added at RunPod after this was written
    job = await api.submit({"backend": "rp", "input": {"polls": 4}})
    done = await api.until(job["id"], "completed", "failed")
    assert done["status"] == "completed", done["executions"][0]["error"]
    assert _metric(service, 'runner_remote_unknown_statuses_total{backend="rp"}') == 1.0


async def test_throttled_status_polls_do_not_fail_or_cancel_healthy_work(
    api: Api, fake_gpu: FakeProviders
) -> None:
    job, _ = await _running(api, "rp", {"polls": 4})
    fake_gpu.runpod.status_429 = 4  # no Retry-After: RunPod documents none (3 used to fail it)
    done = await api.until(job["id"], "completed", "failed", timeout=30)
    assert done["status"] == "completed", done["executions"][0]["error"]
    assert fake_gpu.runpod.status_429 == 0 and fake_gpu.runpod.cancels == []


async def test_a_status_404_after_ttl_fails_the_execution_with_no_more_polls(
    api: Api, fake_gpu: FakeProviders
) -> None:
    job, remote_id = await _running(api, "rp", HOLD)
    fake_gpu.runpod.expire(remote_id)
    failed = await api.until(job["id"], "failed")
    assert "404" in failed["executions"][0]["error"] and "ttl" in failed["executions"][0]["error"]
    polls = fake_gpu.runpod.jobs[remote_id].polls
    job2 = await api.submit({"backend": "rp", "input": {"polls": 2}})  # time passes, polls would show
    await api.until(job2["id"], "completed")
    assert fake_gpu.runpod.jobs[remote_id].polls == polls
    assert fake_gpu.runpod.cancels == []  # nothing is left to cancel
    assert failed["executions"][0]["remote_cancel"] is None


async def test_a_404_on_a_cancels_confirmation_poll_is_gone(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(backends=_with(fake_gpu, "rp", poll_interval_s=1.0))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job, remote_id = await _running(api, "rp", HOLD)
    assert (await api.cancel(job["id"]))[0] == 200
    await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
    fake_gpu.runpod.expire(remote_id)  # its ttl ends before the first look
    gone = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "gone")
    assert gone["executions"][0]["remote_stopped_at"] is None


async def test_a_cancel_refused_for_a_rotated_key_is_retried_and_alerted(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(backends=_with(fake_gpu, "rp", poll_interval_s=30.0))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job, remote_id = await _running(api, "rp", HOLD)
    fake_gpu.runpod.api_key = "rotated"  # the runner's key no longer works
    assert (await api.cancel(job["id"]))[0] == 200
    await fake_gpu.runpod.until(lambda: fake_gpu.runpod.refused.count(f"/v2/ep1/cancel/{remote_id}") >= 2)
    execution = (await api.job(job["id"]))["executions"][0]
    assert execution["remote_cancel"] == "pending"  # never final while the GPU may run
    assert rt.worker is not None
    await rt.worker.housekeeping()
    assert _metric(rt, 'runner_remote_unconfirmed{backend="rp"}') == 1.0
    fake_gpu.runpod.api_key = "rp-key"  # the operator fixes the key
    await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged", timeout=30)
    assert fake_gpu.runpod.cancels == [remote_id]


async def test_a_deadline_over_7_days_stays_within_runpods_bounds(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(backends=_with(fake_gpu, "rp", deadline_s=10 * 24 * 3600.0))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job = await api.submit({"backend": "rp", "input": {"polls": 2}})
    done = await api.until(job["id"], "completed", "failed")
    assert done["status"] == "completed", done["executions"][0]["error"]
    assert fake_gpu.runpod.submits[0]["policy"] == {"executionTimeout": 604_800_000, "ttl": 604_800_000}


async def test_cancel_pacing_is_shared_by_every_instance(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    """RunPod allows 100 cancels per 10 s per endpoint: two instances together must keep the
    backend's pace, not each its own."""
    rate = 4.0
    backends = _with(fake_gpu, "rp", cancel_rate_per_s=rate, poll_interval_s=5.0)
    a = await cluster.start(backends=backends, concurrency=8)  # holds the first 8, then is full
    api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
    jobs = [(await _running(api, "rp", HOLD))[0] for _ in range(8)]
    b = await cluster.start(backends=backends)  # holds the next 8
    jobs += [(await _running(api, "rp", HOLD))[0] for _ in range(8)]
    holders = await db.fetch("SELECT worker_id, count(*) FROM jobs WHERE status = 'running' GROUP BY 1")
    assert {r["worker_id"]: r["count"] for r in holders} == {a.instance_id: 8, b.instance_id: 8}
    status, reply = await api.call("POST", "/jobs/cancel", json={})
    assert status == 200 and reply["count"] == 16
    await fake_gpu.runpod.until(lambda: len(fake_gpu.runpod.cancels) == 16, 30)
    times = sorted(fake_gpu.runpod.cancel_times)
    busiest = max(sum(1 for t in times if start <= t < start + 1.0) for start in times)
    # The slots are spaced evenly; a send's own scheduling delay on a loaded machine may bunch
    # two of them: the rate plus a small burst (unshared, two instances sent twice the rate).
    assert busiest <= rate + 2, times
    for job in jobs:
        await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")


# -- Replicate ------------------------------------------------------------------------------------


async def test_replicate_runs_to_completion_with_its_own_spend(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit({"backend": "rep", "input": {"prompt": "corgi", "polls": 3}})
    done = await api.until(job["id"], "completed", "failed")
    [execution] = done["executions"]
    assert done["status"] == "completed", execution["error"]
    assert execution["output"] == {"done": {"prompt": "corgi", "polls": 3}}
    p = fake_gpu.replicate.predictions[execution["remote_id"]]
    assert execution["gpu_seconds"] is not None and p.status == "succeeded"
    [create] = fake_gpu.replicate.creates
    assert (
        create["headers"]["Authorization"] == "Bearer r8-key" and create["body"]["input"]["prompt"] == "corgi"
    )


async def test_a_replicate_cancel_is_confirmed_at_its_completed_at(api: Api, fake_gpu: FakeProviders) -> None:
    job, remote_id = await _running(api, "rep", HOLD)
    assert (await api.cancel(job["id"]))[0] == 200
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "confirmed")
    execution = done["executions"][0]
    p = fake_gpu.replicate.predictions[remote_id]
    assert p.status == "canceled" and p.completed_at is not None
    assert execution["remote_stopped_at"] == p.completed_at[:23] + "Z"  # Replicate's own end time
    assert fake_gpu.replicate.cancels == [remote_id]


async def test_a_replicate_create_is_not_sent_again_after_a_5xx(api: Api, fake_gpu: FakeProviders) -> None:
    fake_gpu.replicate.create_500_after = 1  # created, but the answer is a 500
    job = await api.submit({"backend": "rep", "input": {"polls": 2}})
    failed = await api.until(job["id"], "failed")
    assert "not sent again" in failed["executions"][0]["error"]
    assert len(fake_gpu.replicate.predictions) == 1  # one paid prediction, not two


async def test_replicate_gets_a_cancel_after_of_at_least_5_s(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start()
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    job = await api.submit({"backend": "rep", "input": {"polls": 2}}, timeout_s=3)
    done = await api.until(job["id"], "completed", "failed")
    assert done["status"] == "completed", done["executions"][0]["error"]
    assert fake_gpu.replicate.creates[0]["headers"]["Cancel-After"] == "5s"


async def test_replicate_aborted_at_its_deadline_fails_naming_it(api: Api, fake_gpu: FakeProviders) -> None:
    fake_gpu.replicate.starting_polls = 10_000  # never gets a machine
    job, remote_id = await _running(api, "rep", HOLD, timeout_s=600)
    fake_gpu.replicate.pass_deadline(remote_id)
    failed = await api.until(job["id"], "failed")
    error = failed["executions"][0]["error"]
    assert "aborted" in error and "deadline" in error and "not by this runner" not in error
    assert fake_gpu.replicate.cancels == []


# -- fal --------------------------------------------------------------------------------------------


async def test_fal_runs_through_the_urls_it_returns(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit({"backend": "fal", "input": {"prompt": "x", "polls": 3}})
    done = await api.until(job["id"], "completed", "failed")
    [execution] = done["executions"]
    assert done["status"] == "completed", execution["error"]
    assert execution["output"] == {"done": {"prompt": "x", "polls": 3}}
    assert execution["gpu_seconds"] is not None  # metrics.inference_time
    assert fake_gpu.fal.submits[0]["headers"]["Authorization"] == "Key fal-key"
    assert fake_gpu.fal.submits[0]["model"] == "fal-ai/flux/dev"
    assert all(p.startswith("/fal/fal-ai/flux/requests/") for p in fake_gpu.fal.status_urls_polled)


async def test_fal_namespaced_apps_are_polled_and_cancelled(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start(backends=_with(fake_gpu, "fal", model="workflows/acme/upscale"))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    done = await api.until(
        (await api.submit({"backend": "fal", "input": {"polls": 2}}))["id"], "completed", "failed"
    )
    assert done["status"] == "completed", done["executions"][0]["error"]
    job, remote_id = await _running(api, "fal", HOLD)
    assert (await api.cancel(job["id"]))[0] == 200
    await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "confirmed")
    assert fake_gpu.fal.cancels == [remote_id]
    assert all(p.startswith("/fal/workflows/acme/upscale/requests/") for p in fake_gpu.fal.status_urls_polled)


async def test_fal_refuses_urls_off_the_configured_origin(api: Api, fake_gpu: FakeProviders) -> None:
    fake_gpu.fal.url_origin = "http://127.0.0.2:9"
    job = await api.submit({"backend": "fal", "input": {"polls": 2}})
    failed = await api.until(job["id"], "failed")
    assert "origin" in failed["executions"][0]["error"]


async def test_fal_gets_its_start_deadline_and_names_it(api: Api, fake_gpu: FakeProviders) -> None:
    fake_gpu.fal.queue_polls = 10_000  # no runner picks it up
    job, remote_id = await _running(api, "fal", HOLD, timeout_s=600)
    assert float(fake_gpu.fal.submits[0]["headers"]["X-Fal-Request-Timeout"]) > 590
    fake_gpu.fal.pass_start_deadline(remote_id)
    failed = await api.until(job["id"], "failed")
    assert "X-Fal-Request-Timeout" in failed["executions"][0]["error"]


# -- Modal ------------------------------------------------------------------------------------------


async def test_modal_call_id_is_the_remote_id_and_cancel_url_reaches_it(
    api: Api, fake_gpu: FakeProviders
) -> None:
    fake_gpu.web.modal_cut_s = 0.2  # Modal cuts at 150 s
    job = await api.submit({"backend": "modal", "input": {"mode": "modal", "until_released": True}})
    running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
    call_id = running["executions"][0]["remote_id"]
    assert call_id.startswith("fc-") and call_id in fake_gpu.web.modal_calls
    assert (await api.cancel(job["id"]))[0] == 200
    await fake_gpu.web.until(lambda: fake_gpu.web.modal_calls[call_id].task.done())
    assert fake_gpu.web.modal_cancels == [call_id]  # FunctionCall.cancel, through the user's endpoint
    done = await api.until_execution(job["id"], 0, lambda e: e["remote_cancel"] == "acknowledged")
    assert done["status"] == "cancelled"


async def test_a_resumed_modal_call_gets_its_result_instead_of_posting_again(
    cluster: Cluster, dsn: str, fake_gpu: FakeProviders, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    fake_gpu.web.modal_cut_s = 0.2
    fast = cluster.settings.replace(lease_s=0.6)
    a = await cluster.start(settings=fast)
    api = await Api.signed_in(http, f"http://127.0.0.1:{a.port}")
    job = await api.submit({"backend": "modal", "input": {"mode": "modal", "until_released": True}})
    running = await api.until_execution(job["id"], 0, lambda e: e["remote_id"] is not None)
    execution_id, call_id = running["executions"][0]["id"], running["executions"][0]["remote_id"]
    freeze(a)  # instance A dies while Modal runs the call
    b = await cluster.start("worker", settings=fast)
    async with asyncio.timeout(15):
        holder = None
        while holder != b.instance_id:  # the row is the truth: poll it
            holder = await db.fetchval("SELECT worker_id FROM jobs WHERE id = $1", uuid.UUID(job["id"]))
            await asyncio.sleep(0.02)
    fake_gpu.web.release.set()
    done = await api.until(job["id"], "completed", "failed", timeout=30)
    assert done["status"] == "completed", done["executions"][0]["error"]
    assert done["executions"][0]["output"] == {"result": "done", "call": call_id}
    assert fake_gpu.web.calls_for(execution_id) == 1  # one POST: the work was never started twice


# -- input ------------------------------------------------------------------------------------------


async def test_input_must_be_an_object_for_queue_providers(api: Api, fake_gpu: FakeProviders) -> None:
    for backend in ("rp", "rep", "fal"):
        status, body = await api.call(
            "POST",
            "/jobs",
            json={
                "executions": [
                    {"backend": "demo", "input": {"seconds": 0}},
                    {"backend": backend, "input": [1, 2]},
                ]
            },
        )
        assert status == 400, body
        assert body["error"] == "invalid_request" and "$.executions[1].input" in body["message"]
    assert fake_gpu.runpod.submits == [] and fake_gpu.replicate.creates == [] and fake_gpu.fal.submits == []
