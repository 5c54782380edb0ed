"""The fakes model the providers' uncomfortable behaviours, not the ones we would like: each
check here names the behaviour its fake cites (runner/fakes)."""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest

from runner.fakes import FakeProviders


@pytest.fixture
async def fakes() -> AsyncIterator[FakeProviders]:
    fake = FakeProviders()
    await fake.start()
    yield fake
    await fake.stop()


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


async def _json(http: aiohttp.ClientSession, method: str, url: str, **kw: Any) -> tuple[int, Any, Any]:
    async with http.request(method, url, **kw) as resp:
        body = await resp.json(content_type=None) if (await resp.read()) else None
        return resp.status, body, resp.headers


async def test_runpod_queue_running_cancelled_at_once_while_the_worker_runs_on(
    fakes: FakeProviders, http: aiohttp.ClientSession
) -> None:
    fakes.runpod.running_status = "RUNNING"
    base = f"{fakes.runpod_url}/ep1"
    _, run, _ = await _json(http, "POST", f"{base}/run", json={"input": {"hold": True}})
    assert run == {"id": run["id"], "status": "IN_QUEUE"}
    statuses = [(await _json(http, "GET", f"{base}/status/{run['id']}"))[1]["status"] for _ in range(2)]
    assert statuses == ["IN_QUEUE", "RUNNING"]
    status, cancelled, _ = await _json(http, "POST", f"{base}/cancel/{run['id']}")
    assert (status, cancelled) == (200, {"id": run["id"], "status": "CANCELLED"})
    assert (await _json(http, "GET", f"{base}/status/{run['id']}"))[1]["status"] == "CANCELLED"
    assert fakes.runpod.worker_running(run["id"])  # a sync handler runs to its end
    fakes.runpod.finish(run["id"], {"late": True})
    assert not fakes.runpod.worker_running(run["id"])
    assert (await _json(http, "GET", f"{base}/status/{run['id']}"))[1]["status"] == "CANCELLED"


async def test_runpod_async_handler_stops_on_cancel(
    fakes: FakeProviders, http: aiohttp.ClientSession
) -> None:
    fakes.runpod.handler = "async"  # runpod-python >= 1.10, per-job stop
    base = f"{fakes.runpod_url}/ep1"
    _, run, _ = await _json(http, "POST", f"{base}/run", json={"input": {"hold": True}})
    for _ in range(2):
        await _json(http, "GET", f"{base}/status/{run['id']}")
    await _json(http, "POST", f"{base}/cancel/{run['id']}")
    assert not fakes.runpod.worker_running(run["id"])


async def test_runpod_404_after_ttl_429_without_retry_after_and_policy_bounds(
    fakes: FakeProviders, http: aiohttp.ClientSession
) -> None:
    base = f"{fakes.runpod_url}/ep1"
    _, run, _ = await _json(http, "POST", f"{base}/run", json={"input": {"polls": 9}})
    fakes.runpod.status_429 = 1
    status, _, headers = await _json(http, "GET", f"{base}/status/{run['id']}")
    assert status == 429 and "Retry-After" not in headers
    fakes.runpod.expire(run["id"])
    assert (await _json(http, "GET", f"{base}/status/{run['id']}"))[0] == 404
    week = 7 * 24 * 3600 * 1000
    too_long = {"input": {}, "policy": {"executionTimeout": week + 1, "ttl": week + 1}}
    assert (await _json(http, "POST", f"{base}/run", json=too_long))[0] == 400
    assert (await _json(http, "POST", f"{base}/run", json={"input": [1]}))[0] == 400


async def test_runpod_cancel_limit_is_per_endpoint(fakes: FakeProviders, http: aiohttp.ClientSession) -> None:
    fakes.runpod.cancel_limit = (3, 10.0)
    base = f"{fakes.runpod_url}/ep1"
    _, run, _ = await _json(http, "POST", f"{base}/run", json={"input": {"hold": True}})
    codes = [(await _json(http, "POST", f"{base}/cancel/{run['id']}"))[0] for _ in range(4)]
    assert codes == [200, 200, 200, 429]


async def test_replicate_201_statuses_deadline_and_429(
    fakes: FakeProviders, http: aiohttp.ClientSession
) -> None:
    base = fakes.replicate_url
    status, created, _ = await _json(
        http,
        "POST",
        f"{base}/predictions",
        json={"version": "v", "input": {"hold": True}},
        headers={"Cancel-After": "1m"},
    )
    assert status == 201 and created["status"] == "starting"
    assert (
        await _json(
            http,
            "POST",
            f"{base}/predictions",
            json={"version": "v", "input": {}},
            headers={"Cancel-After": "4s"},
        )
    )[0] == 400  # below the 5 s minimum
    statuses = [
        (await _json(http, "GET", f"{base}/predictions/{created['id']}"))[1]["status"] for _ in range(2)
    ]
    assert statuses == ["starting", "processing"]
    fakes.replicate.pass_deadline(created["id"])
    ended = (await _json(http, "GET", f"{base}/predictions/{created['id']}"))[1]
    assert ended["status"] == "canceled" and ended["completed_at"] and "predict_time" in ended["metrics"]
    _, starting, _ = await _json(
        http,
        "POST",
        f"{base}/predictions",
        json={"version": "v", "input": {"hold": True}},
        headers={"Cancel-After": "5s"},
    )
    fakes.replicate.pass_deadline(starting["id"])
    aborted = (await _json(http, "GET", f"{base}/predictions/{starting['id']}"))[1]
    assert aborted["status"] == "aborted" and "metrics" not in aborted  # not billed
    fakes.replicate.status_429 = 1
    status, body, headers = await _json(http, "GET", f"{base}/predictions/{starting['id']}")
    assert (status, body) == (429, {"detail": "Request was throttled. Your rate limit resets in ~30s."})
    assert "Retry-After" not in headers


async def test_fal_urls_202_cancel_answers_and_499(fakes: FakeProviders, http: aiohttp.ClientSession) -> None:
    _, sub, _ = await _json(http, "POST", f"{fakes.fal_url}/comfy/acme/flow/sub", json={"hold": True})
    assert sub["status_url"] == f"{fakes.fal_url}/comfy/acme/flow/requests/{sub['request_id']}/status"
    status, queued, _ = await _json(http, "GET", sub["status_url"])
    assert status == 202 and queued["status"] == "IN_QUEUE"
    status, running, _ = await _json(http, "GET", sub["status_url"])
    assert status == 202 and running == {"status": "IN_PROGRESS", "logs": []}
    assert (await _json(http, "GET", sub["response_url"]))[0] == 400  # not done yet
    status, answer, _ = await _json(http, "PUT", sub["cancel_url"])
    assert (status, answer) == (202, {"status": "CANCELLATION_REQUESTED"})
    status, done, _ = await _json(http, "GET", sub["status_url"])
    assert status == 200 and done["status"] == "COMPLETED"
    status, result, _ = await _json(http, "GET", sub["response_url"])
    assert (status, result) == (499, {"detail": "Request cancelled by the client."})
    assert (await _json(http, "PUT", sub["cancel_url"]))[:2] == (400, {"status": "ALREADY_COMPLETED"})
    missing = sub["cancel_url"].replace(sub["request_id"], "00000000-0000-0000-0000-00000000ffff")
    assert (await _json(http, "PUT", missing))[:2] == (404, {"status": "NOT_FOUND"})


async def test_fal_app_without_a_cancel_route_runs_to_its_end(
    fakes: FakeProviders, http: aiohttp.ClientSession
) -> None:
    fakes.fal.cancel_route = False
    _, sub, _ = await _json(http, "POST", f"{fakes.fal_url}/fal-ai/flux/dev", json={"polls": 4})
    for _ in range(2):
        await _json(http, "GET", sub["status_url"])
    assert (await _json(http, "PUT", sub["cancel_url"]))[0] == 202
    assert (await _json(http, "GET", sub["status_url"]))[1]["status"] == "IN_PROGRESS"
    done = (await _json(http, "GET", sub["status_url"]))[1]
    assert done["status"] == "COMPLETED" and "error" not in done
    assert (await _json(http, "GET", sub["response_url"]))[:2] == (200, {"done": {"polls": 4}})


async def test_fal_start_deadline(fakes: FakeProviders, http: aiohttp.ClientSession) -> None:
    _, sub, _ = await _json(
        http,
        "POST",
        f"{fakes.fal_url}/fal-ai/flux/dev",
        json={"hold": True},
        headers={"X-Fal-Request-Timeout": "30.0"},
    )
    fakes.fal.pass_start_deadline(sub["request_id"])
    done = (await _json(http, "GET", sub["status_url"]))[1]
    assert (done["error"], done["error_type"]) == ("Request timed out", "request_timeout")
    status, body, headers = await _json(http, "GET", sub["response_url"])
    assert status == 504 and headers["X-Fal-Request-Timeout-Type"] == "user"
    assert body == {"detail": "Request timed out", "error_type": "request_timeout"}


async def test_modal_303_call_id_result_url_and_cancel(
    fakes: FakeProviders, http: aiohttp.ClientSession
) -> None:
    fakes.web.modal_cut_s = 0.05
    async with http.post(
        f"{fakes.base_url}/run", json={"mode": "modal", "until_released": True}, allow_redirects=False
    ) as resp:
        assert resp.status == 303
        location = resp.headers["Location"]
    assert "__modal_function_call_id=fc-" in location
    call_id = location.split("=", 1)[1]
    async with http.get(f"{fakes.base_url}{location}", allow_redirects=False) as resp:
        assert resp.status == 303  # still running: the result URL redirects to itself
    assert not fakes.web.modal_calls[call_id].task.done()  # a closed connection stopped nothing
    assert (await _json(http, "POST", f"{fakes.base_url}/modal/cancel/{call_id}"))[0] == 200
    await fakes.web.until(lambda: fakes.web.modal_calls[call_id].task.done())
