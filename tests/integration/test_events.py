"""Server-sent events of a job: the stream, by cookie, ticket or bearer token."""

from __future__ import annotations

import asyncio
import json
from typing import Any

import pytest

from runner.fakes import FakeProviders
from tests.client import Api, wait_event

HOLD = {"backend": "gpu", "input": {"mode": "hold"}}


@pytest.mark.parametrize("via", ["cookie", "ticket", "bearer"])
async def test_events_stream_the_job_until_it_ends(api: Api, fake_gpu: FakeProviders, via: str) -> None:
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
            seen.append(json.loads(line[len("data: ") :]))
            if not cancel_sent and seen[-1]["executions"][0]["status"] == "running":
                await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
                assert (await api.cancel(job["id"]))[0] == 200
                cancel_sent = True
    # The stream ended by itself after the terminal status.
    assert seen[0]["id"] == job["id"]
    assert seen[-1]["status"] == "cancelled"
    assert [s["status"] for s in seen].count("cancelled") == 1
    assert len({str(s) for s in seen}) == len(seen)  # each event is a change


async def _read_event(resp: Any) -> dict[str, str]:
    """The next server-sent event (comments skipped): its fields."""
    fields: dict[str, str] = {}
    while True:
        line = (await asyncio.wait_for(resp.content.readline(), 10)).decode().rstrip("\n")
        if line == "" and fields:
            return fields
        if line.startswith(":") or line == "":
            continue
        key, _, value = line.partition(": ")
        fields[key] = value


async def test_one_stream_carries_every_change_of_the_callers_jobs(
    api: Api, http: Any, fake_gpu: FakeProviders
) -> None:
    from tests.wallets import Wallet

    stranger = await Api.signed_in(http, api.base, Wallet())
    async with http.get(f"{api.base}/events", headers=api.headers) as resp:
        assert resp.status == 200
        ready = await _read_event(resp)
        assert ready["event"] == "ready"
        theirs = await stranger.submit({"backend": "demo", "input": {"seconds": 0}})
        mine = await api.submit({"backend": "demo", "input": {"seconds": 0}})
        seen: list[dict[str, Any]] = []
        ids: list[int] = []
        while not seen or seen[-1]["status"] != "completed":
            event = await _read_event(resp)
            ids.append(int(event["id"]))
            seen.append(json.loads(event["data"]))
        assert {s["id"] for s in seen} == {mine["id"]} and theirs["id"] not in {s["id"] for s in seen}
        assert ids == sorted(ids) and ids[0] > int(ready["id"])
    # A reconnect from before the changes gets what it missed: the job as it is now, once.
    # (Not from the first change seen: on a busy machine the first one seen may be the last.)
    async with http.get(f"{api.base}/events", headers={**api.headers, "Last-Event-ID": ready["id"]}) as resp:
        replayed = await _read_event(resp)
        assert json.loads(replayed["data"])["status"] == "completed" and int(replayed["id"]) == ids[-1]


async def test_a_reconnect_past_the_kept_history_is_told_to_reset(api: Api, service: Any, db: Any) -> None:
    import uuid
    from datetime import UTC, datetime, timedelta

    job = await api.submit({"backend": "demo", "input": {"seconds": 0}})
    await api.until(job["id"], "completed")
    await db.execute(
        "UPDATE jobs SET finished_at = $1 WHERE id = $2",
        datetime.now(UTC) - timedelta(days=40),
        uuid.UUID(job["id"]),
    )
    await service.worker.apply_retention(30)  # its events are gone
    later = await api.submit({"backend": "demo", "input": {"seconds": 0}})
    await api.until(later["id"], "completed")
    async with api.http.get(f"{api.base}/events", headers={**api.headers, "Last-Event-ID": "1"}) as resp:
        assert (await _read_event(resp))["event"] == "reset"


async def test_a_client_gone_mid_stream_ends_the_stream_quietly(
    api: Api, http: Any, service: Any, caplog: pytest.LogCaptureFixture
) -> None:
    """A browser tab closed while its stream waits: the next change finds the client gone,
    and that is the end of the stream, not an error with a trace."""
    for path in ("/events", None):
        job = await api.submit({"backend": "gpu", "input": {"mode": "hold"}})
        resp = await http.get(f"{api.base}{path or '/jobs/' + job['id'] + '/events'}", headers=api.headers)
        await _read_event(resp)
        assert service.watch._events, "the stream is waiting for changes"
        resp.connection.transport.abort()  # gone without a goodbye, as a closed tab is
        resp.release()
        await api.cancel(job["id"])
        async with asyncio.timeout(10):
            # The handler's end has no event of its own; its listener registration going is it.
            while service.watch._events:  # noqa: ASYNC110
                await asyncio.sleep(0.01)
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert errors == [], [r.getMessage() for r in errors]
