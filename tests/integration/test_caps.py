"""Nothing one wallet does grows without bound: a listing page is bounded in bytes, event
streams per wallet and per instance, submits per minute -- each a setting, each failing
clearly."""

from __future__ import annotations

import asyncio
import contextlib
import json
from typing import Any

import aiohttp
import pytest

from runner import jobs
from runner.config import Settings
from tests.client import Api
from tests.conftest import Cluster
from tests.integration.test_events import _read_event
from tests.wallets import Wallet


async def test_a_listing_page_stops_at_its_byte_budget_and_the_cursor_goes_on(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession
) -> None:
    runtime = await cluster.start("all", settings.replace(max_page_bytes=2 << 20))
    api = await Api.signed_in(http, f"http://127.0.0.1:{runtime.port}")
    big = "x" * 600_000
    ids = [
        (await api.submit({"backend": "demo", "input": {"seconds": 0, "pad": big}}))["id"] for _ in range(7)
    ]
    seen: list[str] = []
    pages = []
    cursor = None
    while True:
        status, body = await api.call("GET", "/jobs?limit=200" + (f"&cursor={cursor}" if cursor else ""))
        assert status == 200, body
        pages.append(len(body["jobs"]))
        seen += [j["id"] for j in body["jobs"]]
        cursor = body["next_cursor"]
        if cursor is None:
            break
    assert pages == [3, 3, 1], pages  # 3 x 600 kB fit in 2 MiB, a fourth would not
    assert seen == list(reversed(ids))


async def test_one_job_larger_than_the_budget_still_comes_alone(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession
) -> None:
    runtime = await cluster.start("all", settings.replace(max_page_bytes=100_000))
    api = await Api.signed_in(http, f"http://127.0.0.1:{runtime.port}")
    ids = [
        (await api.submit({"backend": "demo", "input": {"seconds": 0, "pad": "y" * 300_000}}))["id"]
        for _ in range(2)
    ]
    status, body = await api.call("GET", "/jobs")
    assert status == 200 and [j["id"] for j in body["jobs"]] == [ids[1]] and body["next_cursor"], body


# -- event streams ---------------------------------------------------------------------------------


async def _open(stack: contextlib.AsyncExitStack, api: Api, path: str = "/events") -> aiohttp.ClientResponse:
    resp = await stack.enter_async_context(api.http.get(api.base + path, headers=api.headers))
    if resp.status == 200:
        assert (await _read_event(resp))["event"] == "ready"
    return resp


async def test_event_streams_are_capped_per_wallet_and_per_instance(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    import api.events

    monkeypatch.setattr(api.events, "PING_S", 0.2)
    runtime = await cluster.start("all", settings.replace(max_streams_per_wallet=3, max_streams=5))
    base = f"http://127.0.0.1:{runtime.port}"
    one, two = await Api.signed_in(http, base), await Api.signed_in(http, base, Wallet())
    async with contextlib.AsyncExitStack() as stack:
        streams = [await _open(stack, one) for _ in range(3)]
        assert [s.status for s in streams] == [200] * 3
        refused = await _open(stack, one)
        body = await refused.json()
        assert refused.status == 429 and body["error"] == "rate_limited", body
        assert "RUNNER_MAX_STREAMS_PER_WALLET" in body["message"], body
        job = await one.submit({"backend": "demo", "input": {"seconds": 60}})
        per_job = await _open(stack, one, f"/jobs/{job['id']}/events")  # one stream, whichever route
        assert per_job.status == 429
        assert [(await _open(stack, two)).status for _ in range(2)] == [200, 200]
        third = await _open(stack, two)  # five open on the instance now
        assert third.status == 429 and "RUNNER_MAX_STREAMS" in (await third.json())["message"]
        streams[0].close()  # seen gone at the server's next write (a ping, 0.2 s here)
        for _ in range(200):
            reopened = await _open(stack, two)
            if reopened.status == 200:
                break
            await asyncio.sleep(0.05)
        assert reopened.status == 200, "a closed stream did not free its place"


async def test_a_wallets_streams_share_one_query_per_change(
    api: Api, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = jobs.changed_since

    async def counted(pool: Any, *, owner: str, after: int, limit: int) -> Any:
        calls.append(after)
        return await real(pool, owner=owner, after=after, limit=limit)

    monkeypatch.setattr(jobs, "changed_since", counted)
    async with contextlib.AsyncExitStack() as stack:
        streams = [await _open(stack, api) for _ in range(12)]
        calls.clear()
        job = await api.submit({"backend": "demo", "input": {"seconds": 60}})
        for stream in streams:  # every stream sees the new job
            while json.loads((await _read_event(stream))["data"])["id"] != job["id"]:
                pass
        assert len(calls) < 12 / 2, f"{len(calls)} queries for 12 streams of one wallet"
        await api.cancel(job["id"])


async def test_a_stream_ends_at_logout(api: Api) -> None:
    async with contextlib.AsyncExitStack() as stack:
        stream = await _open(stack, api)
        status, _ = await api.call("POST", "/auth/logout")
        assert status == 200
        assert (await _read_event(stream))["event"] == "signed_out"
        assert await asyncio.wait_for(stream.content.read(), 10) == b""  # and then it ends


async def test_a_stream_ends_when_its_session_expires(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession
) -> None:
    runtime = await cluster.start("all", settings.replace(session_ttl_s=2.0))
    api = await Api.signed_in(http, f"http://127.0.0.1:{runtime.port}")
    job = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    async with contextlib.AsyncExitStack() as stack:
        streams = [
            await stack.enter_async_context(api.http.get(api.base + path, headers=api.headers))
            for path in ("/events", f"/jobs/{job['id']}/events")
        ]
        for stream in streams:
            assert stream.status == 200
            events = []
            while not events or events[-1].get("event") != "signed_out":
                events.append(await _read_event(stream))
            assert await asyncio.wait_for(stream.content.read(), 10) == b""


# -- submits per minute ------------------------------------------------------------------------------


async def test_submits_past_the_wallets_rate_are_429_and_other_wallets_go_on(
    cluster: Cluster, settings: Settings, http: aiohttp.ClientSession
) -> None:
    runtime = await cluster.start("all", settings.replace(max_submits_per_minute=5))
    base = f"http://127.0.0.1:{runtime.port}"
    one, two = await Api.signed_in(http, base), await Api.signed_in(http, base, Wallet())
    for _ in range(4):
        await one.submit({"backend": "demo", "input": {"seconds": 0}})
    fifth = await one.submit({"backend": "demo", "input": {"seconds": 60}})
    assert (await one.cancel(fifth["id"]))[0] == 200
    status, body = await one.call(
        "POST", "/jobs", json={"executions": [{"backend": "demo", "input": {"seconds": 0}}]}
    )
    assert status == 429 and body["error"] == "rate_limited", body
    assert "RUNNER_MAX_SUBMITS_PER_MINUTE" in body["message"] and 0 < body["retry_after_s"] <= 60, body
    status, body = await one.call("POST", f"/jobs/{fifth['id']}/rerun")
    assert status == 429 and body["error"] == "rate_limited", body  # a re-run is a submit too
    assert (await two.submit({"backend": "demo", "input": {"seconds": 0}}))["status"] == "queued"
