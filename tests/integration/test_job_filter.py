"""The job filter (issue #29): GET /jobs and POST /jobs/cancel (its dry run and the cancel)
on real Postgres, with real sockets."""

from __future__ import annotations

import uuid
from typing import Any
from urllib.parse import urlencode

import aiohttp
import asyncpg
import pytest

from runner.fakes import FakeProviders
from tests.client import Api, wait_event
from tests.conftest import Cluster

QUEUED = {"backend": "demo", "input": {"seconds": 60}}
HOLD = {"backend": "gpu", "input": {"mode": "hold"}}
PLAIN_HOLD = {"backend": "plain", "input": {"mode": "hold"}}


async def _ids(api: Api, query: str) -> set[str]:
    status, body = await api.call("GET", f"/jobs?{query}")
    assert status == 200, (query, body)
    return {j["id"] for j in body["jobs"]}


async def _dry_run(api: Api, **fields: Any) -> dict[str, Any]:
    status, body = await api.call("POST", "/jobs/cancel", json={**fields, "dry_run": True})
    assert status == 200, body
    assert set(body) == {"ok", "count", "ids"}
    return dict(body)


async def test_each_filter_field_and_their_combinations(
    api: Api, fake_gpu: FakeProviders, db: asyncpg.Connection
) -> None:
    a = await api.submit(QUEUED, metadata={"team": "x", "n": 1})
    b = await api.submit(PLAIN_HOLD, metadata={"team": "y"})
    c = await api.submit(QUEUED, PLAIN_HOLD, metadata={"team": "x", "run": "7"})
    d = await api.submit({"backend": "demo", "input": {"seconds": 0}}, metadata={"team": "x"})
    await api.until(d["id"], "completed")
    assert (await api.cancel(b["id"]))[0] == 200
    for day, job in enumerate((a, b, c, d), 1):
        await db.execute(
            "UPDATE jobs SET created_at = $2::text::timestamptz WHERE id = $1",
            uuid.UUID(job["id"]),
            f"2026-01-0{day}T12:00:00Z",
        )
    a, b, c, d = (j["id"] for j in (a, b, c, d))

    assert await _ids(api, "") == {a, b, c, d}
    assert await _ids(api, "status=completed") == {d}
    assert await _ids(api, "statuses=cancelled,completed") == {b, d}
    assert await _ids(api, "status=queued&status=running") == {a, c}
    assert await _ids(api, "backends=plain") == {b, c}
    assert await _ids(api, "backends=demo") == {a, c, d}
    assert await _ids(api, "backends=plain,demo") == {a, b, c, d}
    assert await _ids(api, "meta.team=x") == {a, c, d}
    assert await _ids(api, "meta.team=x&meta.run=7") == {c}
    assert await _ids(api, "meta.n=1") == set()  # a query's VALUE is a string; the job holds 1
    assert await _ids(api, "created_after=2026-01-02") == {b, c, d}
    assert await _ids(api, "created_before=2026-01-03T12:00:00Z") == {a, b}  # exclusive
    assert await _ids(api, "created_after=2026-01-02T12:00:00Z&created_before=2026-01-04") == {b, c}
    assert await _ids(api, f"ids={a},{b}") == {a, b}
    assert await _ids(api, f"ids={a},{b}&backends=plain") == {b}
    assert await _ids(api, "meta.team=x&status=completed") == {d}
    assert await _ids(api, "meta.team=x&backends=plain&status=running,queued") == {c}
    assert await _ids(api, f"ids={uuid.uuid4()}") == set()
    assert await api.call("GET", "/jobs?meta.team=nobody") == (200, {"jobs": [], "next_cursor": None})

    # Pages of a filtered list: newest first, the filter on every page.
    seen, query = [], {"limit": "1", "meta.team": "x"}
    while True:
        status, page = await api.call("GET", "/jobs?" + urlencode(query))
        assert status == 200
        seen += [j["id"] for j in page["jobs"]]
        if not page["next_cursor"]:
            break
        query["cursor"] = page["next_cursor"]
    assert seen == [d, c, a]

    # The dry run takes the same filter in a body (active jobs only: it is what a cancel does).
    assert (await _dry_run(api, metadata={"team": "x"}))["count"] == 2
    assert (await _dry_run(api, metadata={"team": "x", "n": 1}))["ids"] == [a]
    assert (await _dry_run(api, metadata={"n": "1"}))["count"] == 0  # exact: 1 is not "1"
    assert (await _dry_run(api, backends=["plain"]))["ids"] == [c]
    assert (await _dry_run(api, created_before="2026-01-02T00:00:00Z"))["ids"] == [a]
    assert (await _dry_run(api, ids=[a, b, d]))["ids"] == [a]  # b and d are finished
    assert (await _dry_run(api, ids=[]))["count"] == 0  # no ids: nothing, never everything
    assert await _dry_run(api, metadata={"team": "nobody"}) == {"ok": True, "count": 0, "ids": []}


@pytest.mark.parametrize(
    ("query", "named"),
    [
        ("foo=1", "'foo'"),
        ("statuss=queued", "'statuss'"),
        ("metadata.team=x", "'metadata.team'"),
        ("status=done", "'done'"),
        ("backends=", None),  # empty: no condition
        ("created_after=yesterday", "created_after"),
        ("created_before=2026-13-01", "created_before"),
        ("created_after=2026-02-01&created_before=2026-01-01", "created_after"),
        ("created_after=2026-01-01&created_after=2026-02-01", "created_after"),
        ("ids=nope", "ids"),
        ("meta.=x", "meta."),
        ("meta.k=a&meta.k=b", "meta.k"),
    ],
)
async def test_bad_query_parameters_are_400_naming_them(api: Api, query: str, named: str | None) -> None:
    status, body = await api.call("GET", f"/jobs?{query}")
    if named is None:
        assert status == 200, body
        return
    assert status == 400 and body["error"] == "invalid_request", body
    assert named in body["message"], body


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"status": ["queued"]}, "'status'"),
        ({"meta.team": "x"}, "'meta.team'"),
        ({"ids": [str(uuid.uuid4()) for _ in range(1001)]}, "1000"),
        ({"ids": ["nope"]}, "ids"),
        ({"ids": "x"}, "ids"),
        ({"statuses": ["completed"]}, "statuses"),
        ({"backends": "demo"}, "backends"),
        ({"backends": [""]}, "backends"),
        ({"metadata": ["team"]}, "metadata"),
        ({"metadata": {"team": {"a": 1}}}, "metadata.team"),
        ({"created_after": 5}, "created_after"),
        ({"created_before": "soon"}, "created_before"),
        ({"dry_run": "yes"}, "dry_run"),
        ({"reason": 5}, "reason"),
    ],
)
async def test_bad_cancel_bodies_are_400_naming_the_field(
    api: Api, db: asyncpg.Connection, fields: dict[str, Any], named: str
) -> None:
    job = await api.submit(QUEUED)
    for body in [fields] if "dry_run" in fields else [{**fields, "dry_run": True}, fields]:
        status, body = await api.call("POST", "/jobs/cancel", json=body)
        assert status == 400 and body["error"] == "invalid_request", body
        assert named in body["message"], body
    assert (await api.job(job["id"]))["status"] in ("queued", "running")


async def _snapshot(db: asyncpg.Connection) -> list[Any]:
    return [
        await db.fetch("SELECT id, status, cancelled_at, xmin::text FROM jobs ORDER BY id"),
        await db.fetch("SELECT id, status, remote_cancel, xmin::text FROM executions ORDER BY id"),
        await db.fetchval("SELECT count(*) FROM job_events WHERE kind = 'cancelled'"),
    ]


async def test_a_dry_run_cancels_nothing_and_counts_what_the_cancel_then_cancels(
    cluster: Cluster, http: aiohttp.ClientSession, db: asyncpg.Connection
) -> None:
    # An API instance only: the jobs stay queued, so no worker changes rows between reads.
    rt = await cluster.start("api")
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    mine = [(await api.submit(QUEUED, metadata={"sweep": "s1", "i": i}))["id"] for i in range(53)]
    other = [(await api.submit(QUEUED, metadata={"sweep": "s2"}))["id"] for _ in range(2)]
    before = await _snapshot(db)
    dry = await _dry_run(api, metadata={"sweep": "s1"}, reason="ignored by a dry run")
    assert dry["count"] == 53 and dry["ids"] == mine[::-1][:50]  # the first 50, newest first
    assert await _snapshot(db) == before  # not a row written

    status, reply = await api.call("POST", "/jobs/cancel", json={"metadata": {"sweep": "s1"}, "reason": "r"})
    assert status == 200 and set(reply) == {"ok", "cancelled", "count", "executions_cancelled"}
    assert reply["count"] == dry["count"] == 53 and sorted(reply["cancelled"]) == sorted(mine)
    assert reply["executions_cancelled"] == 53
    assert {j["id"] for j in (await api.call("GET", "/jobs?status=queued"))[1]["jobs"]} == set(other)
    events = await db.fetch(
        "SELECT detail FROM job_events WHERE kind = 'cancelled' AND job_id = ANY($1::uuid[])",
        [uuid.UUID(i) for i in mine],
    )
    assert len(events) == 53 and all(e["detail"]["reason"] == "r" and e["detail"]["bulk"] for e in events)
    assert (await _dry_run(api, metadata={"sweep": "s1"}))["count"] == 0


async def test_a_filtered_cancel_stops_only_the_matching_running_tasks(
    api: Api, fake_gpu: FakeProviders
) -> None:
    doomed = [await api.submit(HOLD, metadata={"batch": "a"}) for _ in range(2)]
    kept = await api.submit(HOLD, metadata={"batch": "b"})
    by_id = await api.submit(HOLD)
    for job in (*doomed, kept, by_id):
        await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    status, reply = await api.call("POST", "/jobs/cancel", json={"metadata": {"batch": "a"}})
    assert status == 200 and sorted(reply["cancelled"]) == sorted(j["id"] for j in doomed)
    for job in doomed:
        await wait_event(fake_gpu.web.closed[job["executions"][0]["id"]])
    # By ids: the task held here is signalled ahead of the statement.
    status, reply = await api.call(
        "POST", "/jobs/cancel", json={"ids": [by_id["id"]], "statuses": ["running"]}
    )
    assert status == 200 and reply["cancelled"] == [by_id["id"]]
    await wait_event(fake_gpu.web.closed[by_id["executions"][0]["id"]])
    assert (await api.job(kept["id"]))["status"] == "running"
    assert not fake_gpu.web.closed[kept["executions"][0]["id"]].is_set()


async def test_a_filtered_cancel_stops_tasks_held_by_another_instance(
    cluster: Cluster, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    front = await cluster.start("api")
    worker = await cluster.start("worker")
    api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
    doomed = await api.submit(HOLD, metadata={"batch": "a"})
    kept = await api.submit(HOLD, metadata={"batch": "b"})
    for job in (doomed, kept):
        await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    assert worker.manager.is_running(uuid.UUID(doomed["id"]))
    status, reply = await api.call(
        "POST", "/jobs/cancel", json={"backends": ["gpu"], "metadata": {"batch": "a"}}
    )
    assert status == 200 and reply["cancelled"] == [doomed["id"]]
    await wait_event(fake_gpu.web.closed[doomed["executions"][0]["id"]])  # heard the NOTIFY
    assert (await api.job(kept["id"]))["status"] == "running"
