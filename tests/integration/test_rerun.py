"""Re-run a cancelled or failed job, keeping what completed."""

from __future__ import annotations

import uuid

import aiohttp

from runner.fakes import FakeProviders
from tests.client import Api, wait_event
from tests.wallets import Wallet

HOLD = {"backend": "gpu", "input": {"mode": "hold"}}


async def _cancelled_after_one_completed(api: Api, fake: FakeProviders) -> dict[str, object]:
    job = await api.submit({"backend": "plain", "input": {"n": 1}}, HOLD, HOLD)
    await api.until_execution(job["id"], 0, lambda e: e["status"] == "completed")
    for execution in job["executions"][1:]:
        await wait_event(fake.web.started[execution["id"]])
    assert (await api.cancel(job["id"], wait=True))[0] == 200
    return await api.job(job["id"])


async def test_a_rerun_keeps_what_completed_and_runs_the_rest_once(api: Api, fake_gpu: FakeProviders) -> None:
    old = await _cancelled_after_one_completed(api, fake_gpu)
    first = old["executions"][0]  # type: ignore[index]
    calls_before = len(fake_gpu.web.calls)
    status, new = await api.call("POST", f"/jobs/{old['id']}/rerun")
    assert status == 201 and new["rerun_of"] == old["id"] and new["id"] != old["id"]
    assert new["timeout_s"] == old["timeout_s"] and new["metadata"] == old["metadata"]
    kept, *rest = new["executions"]
    assert kept["status"] == "completed" and kept["output"] == first["output"]
    assert [e["status"] for e in rest] == ["queued", "queued"] and all(e["remote_id"] is None for e in rest)
    for execution in (await api.until_execution(new["id"], 1, lambda e: e["status"] == "running"))[
        "executions"
    ][1:]:
        await wait_event(fake_gpu.web.started[execution["id"]])
    # The kept execution never reached the backend again; the other two, once each.
    new_calls = fake_gpu.web.calls[calls_before:]
    assert sorted(c["headers"]["X-Runner-Execution-Id"] for c in new_calls) == sorted(e["id"] for e in rest)
    await api.cancel(new["id"], wait=True)
    trail = [
        e for e in (await api.call("GET", f"/jobs/{old['id']}/audit"))[1]["events"] if e["kind"] == "rerun"
    ]
    assert trail[0]["detail"]["new_job"] == new["id"]
    started = (await api.call("GET", f"/jobs/{new['id']}/audit"))[1]["events"][0]
    assert started["kind"] == "submitted" and started["detail"]["rerun_of"] == old["id"]
    # A re-run of a re-run: again only what did not complete.
    status, again = await api.call("POST", f"/jobs/{new['id']}/rerun")
    assert status == 201 and again["rerun_of"] == new["id"]
    assert [e["status"] for e in again["executions"]] == ["completed", "queued", "queued"]
    await api.cancel(again["id"])


async def test_naming_a_completed_execution_runs_it_again(api: Api, fake_gpu: FakeProviders) -> None:
    old = await _cancelled_after_one_completed(api, fake_gpu)
    first = old["executions"][0]["id"]  # type: ignore[index]
    status, new = await api.call("POST", f"/jobs/{old['id']}/rerun", json={"executions": [first]})
    assert status == 201 and [e["status"] for e in new["executions"]] == ["queued"] * 3
    await api.cancel(new["id"])


async def test_refusals(api: Api, fake_gpu: FakeProviders, http: aiohttp.ClientSession) -> None:
    done = await api.submit({"backend": "demo", "input": {"seconds": 0}})
    await api.until(done["id"], "completed")
    status, body = await api.call("POST", f"/jobs/{done['id']}/rerun")
    assert status == 409 and body["error"] == "not_rerunnable" and body["status"] == "completed"
    old = await _cancelled_after_one_completed(api, fake_gpu)
    stranger = await Api.signed_in(http, api.base, Wallet())
    assert (await stranger.call("POST", f"/jobs/{old['id']}/rerun"))[0] == 403
    assert (await api.call("POST", f"/jobs/{uuid.uuid4()}/rerun"))[0] == 404
    other = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    status, body = await api.call(
        "POST", f"/jobs/{old['id']}/rerun", json={"executions": [other["executions"][0]["id"]]}
    )
    assert status == 400 and body["error"] == "invalid_request"
    await api.cancel(other["id"])


async def test_a_rerun_honours_the_idempotency_key(api: Api, fake_gpu: FakeProviders) -> None:
    old = await _cancelled_after_one_completed(api, fake_gpu)
    key = {"Idempotency-Key": "again-1"}
    status, first = await api.call("POST", f"/jobs/{old['id']}/rerun", headers=key)
    status2, second = await api.call("POST", f"/jobs/{old['id']}/rerun", headers=key)
    assert status == status2 == 201 and first["id"] == second["id"]
    status, body = await api.call(
        "POST", f"/jobs/{old['id']}/rerun", headers=key, json={"executions": [old["executions"][0]["id"]]}
    )  # type: ignore[index]
    assert status == 409 and body["error"] == "idempotency_conflict"
    await api.cancel(first["id"])
