"""Server-sent events of a job: the stream, by cookie, ticket or bearer token."""

from __future__ import annotations

import json
from typing import Any

import pytest

from tests.client import Api, wait_event
from tests.fakes import FakeGpu

HOLD = {"backend": "gpu", "input": {"mode": "hold"}}


@pytest.mark.parametrize("via", ["cookie", "ticket", "bearer"])
async def test_events_stream_the_job_until_it_ends(api: Api, fake_gpu: FakeGpu, via: str) -> None:
    job = await api.submit(HOLD)
    headers: dict[str, str] = {}
    url = f"{api.base}/jobs/{job['id']}/events"
    if via == "ticket":
        api.http.cookie_jar.clear()
        _, body = await api.call("POST", "/auth/ticket")
        url += f"?ticket={body['ticket']}"
    elif via == "bearer":
        api.http.cookie_jar.clear()
        headers = api.headers
    seen: list[dict[str, Any]] = []
    cancel_sent = False
    async with api.http.get(url, headers=headers) as resp:
        assert resp.status == 200
        assert resp.headers["Content-Type"].startswith("text/event-stream")
        async for raw in resp.content:
            line = raw.decode().rstrip("\n")
            if not line.startswith("data: "):
                continue
            seen.append(json.loads(line[len("data: "):]))
            if not cancel_sent and seen[-1]["executions"][0]["status"] == "running":
                await wait_event(fake_gpu.started[job["executions"][0]["id"]])
                assert (await api.cancel(job["id"]))[0] == 200
                cancel_sent = True
    # The stream ended by itself after the terminal status.
    assert seen[0]["id"] == job["id"]
    assert seen[-1]["status"] == "cancelled"
    assert [s["status"] for s in seen].count("cancelled") == 1
    assert len({str(s) for s in seen}) == len(seen)  # each event is a change
