"""The job filter (issue #29): GET /jobs and POST /jobs/cancel (its dry run and the cancel)
on real Postgres, with real sockets."""

from __future__ import annotations

import asyncio
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
    # `status` or `statuses`, one or a comma list or a list, as in a query.
    for status in ("queued", "running"):
        listed = await _dry_run(api, statuses=[status], metadata={"team": "x"})
        assert await _dry_run(api, status=status, metadata={"team": "x"}) == listed
        assert await _dry_run(api, statuses=status, metadata={"team": "x"}) == listed
    assert (await _dry_run(api, status="queued,running", metadata={"team": "x"}))["count"] == 2


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
        ("ids=" + ",".join(["x"] * 1001), "at most 1000 ids"),
        ("meta.=x", "meta."),
        ("meta.k=a&meta.k=b", "meta.k"),
        ("backends=a%00b", "backends"),
        ("meta.k=v%00", "meta.k"),
        ("meta.k%00=v", "meta."),
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
        ({"status": ["completed"]}, "status"),
        ({"status": 5}, "status"),
        ({"statuses": "queued,done"}, "statuses"),
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


async def _audit(api: Api, job_id: str) -> list[dict[str, Any]]:
    status, body = await api.call("GET", f"/jobs/{job_id}/audit")
    assert status == 200
    events: list[dict[str, Any]] = body["events"]
    return events


async def test_a_superseding_submit_cancels_the_keys_active_jobs_in_its_transaction(
    api: Api, fake_gpu: FakeProviders, db: asyncpg.Connection, http: aiohttp.ClientSession
) -> None:
    old = await api.submit(HOLD, concurrency_key="train-7")
    queued_old = await api.submit(QUEUED, concurrency_key="train-7")
    other_key = await api.submit(QUEUED, concurrency_key="train-8")
    stranger = await Api.signed_in(http, api.base)
    theirs = await stranger.submit(QUEUED, concurrency_key="train-7")
    await wait_event(fake_gpu.web.started[old["executions"][0]["id"]])
    # Without on_conflict the key is only stored.
    plain = await api.submit(QUEUED, concurrency_key="train-7")
    assert plain["concurrency_key"] == "train-7" and (await api.job(old["id"]))["status"] == "running"

    new = await api.submit(QUEUED, concurrency_key="train-7", on_conflict="cancel_running")
    assert new["concurrency_key"] == "train-7" and new["status"] == "queued"
    await wait_event(fake_gpu.web.closed[old["executions"][0]["id"]])  # its task stopped
    superseded = {old["id"], queued_old["id"], plain["id"]}
    for job_id in superseded:
        job = await api.job(job_id)
        assert job["status"] == "cancelled" and job["cancel_reason"] == "superseded"
        cancelled = [e for e in await _audit(api, job_id) if e["kind"] == "cancelled"]
        assert len(cancelled) == 1 and cancelled[0]["detail"]["reason"] == "superseded"
        assert cancelled[0]["detail"]["superseded_by"] == new["id"]
    named = [e for e in await _audit(api, new["id"]) if e["kind"] == "superseded"]
    assert len(named) == 1 and set(named[0]["detail"]["jobs"]) == superseded
    assert named[0]["detail"]["concurrency_key"] == "train-7"
    # One transaction: the old jobs' cancel rows and the new job's were written by one.
    xids = await db.fetch(
        "SELECT DISTINCT xmin::text FROM job_events WHERE (kind = 'cancelled' AND job_id = ANY($1::uuid[])) "
        "OR (kind IN ('submitted', 'superseded') AND job_id = $2)",
        [uuid.UUID(i) for i in superseded],
        uuid.UUID(new["id"]),
    )
    assert len(xids) == 1
    assert (await api.job(other_key["id"]))["status"] in ("queued", "running")
    assert (await stranger.job(theirs["id"]))["status"] in ("queued", "running")
    assert (await api.job(old["id"]))["concurrency_key"] == "train-7"
    listed = {j["id"]: j for j in (await api.call("GET", "/jobs"))[1]["jobs"]}
    assert (
        listed[new["id"]]["concurrency_key"] == "train-7"
        and listed[other_key["id"]]["concurrency_key"] == "train-8"
    )


async def test_a_superseding_submit_that_creates_nothing_cancels_nothing(api: Api) -> None:
    old = await api.submit(QUEUED, concurrency_key="k")
    first = await api.call("POST", "/jobs", json={"executions": [QUEUED]}, headers={"Idempotency-Key": "i1"})
    assert first[0] == 201
    # The same Idempotency-Key with another body: 409, and the supersede is rolled back.
    body = {"executions": [QUEUED], "concurrency_key": "k", "on_conflict": "cancel_running"}
    status, reply = await api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "i1"})
    assert status == 409 and reply["error"] == "idempotency_conflict"
    assert (await api.job(old["id"]))["status"] in ("queued", "running")
    # A repeat of a superseding submit returns its job and supersedes nothing more.
    status, new = await api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "i2"})
    assert status == 201 and (await api.job(old["id"]))["cancel_reason"] == "superseded"
    later = await api.submit(QUEUED, concurrency_key="k")
    status, again = await api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "i2"})
    assert status == 201 and again["id"] == new["id"]
    assert (await api.job(later["id"]))["status"] in ("queued", "running")


async def test_a_superseding_submit_stops_a_task_held_by_another_instance(
    cluster: Cluster, http: aiohttp.ClientSession, fake_gpu: FakeProviders
) -> None:
    front = await cluster.start("api")
    worker = await cluster.start("worker")
    api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
    old = await api.submit(HOLD, concurrency_key="k")
    await wait_event(fake_gpu.web.started[old["executions"][0]["id"]])
    assert worker.manager.is_running(uuid.UUID(old["id"]))
    await api.submit(QUEUED, concurrency_key="k", on_conflict="cancel_running")
    await wait_event(fake_gpu.web.closed[old["executions"][0]["id"]])  # heard the NOTIFY
    assert (await api.job(old["id"]))["cancel_reason"] == "superseded"


@pytest.mark.parametrize(
    ("fields", "named"),
    [
        ({"concurrency_key": "k" * 256}, "concurrency_key"),
        ({"concurrency_key": ""}, "concurrency_key"),
        ({"concurrency_key": "a\nb"}, "concurrency_key"),
        ({"concurrency_key": 7}, "concurrency_key"),
        ({"concurrency_key": "k", "on_conflict": "cancel_all"}, "on_conflict"),
        ({"on_conflict": "cancel_running"}, "concurrency_key"),
    ],
)
async def test_bad_concurrency_keys_are_400(api: Api, fields: dict[str, Any], named: str) -> None:
    status, body = await api.call("POST", "/jobs", json={"executions": [QUEUED], **fields})
    assert status == 400 and body["error"] == "invalid_request" and named in body["message"], body
    assert (await api.submit(QUEUED, concurrency_key="k" * 255))["concurrency_key"] == "k" * 255


async def test_concurrent_superseding_submits_leave_one_active_job(api: Api, db: asyncpg.Connection) -> None:
    body = {"executions": [QUEUED], "concurrency_key": "race", "on_conflict": "cancel_running"}
    replies = await asyncio.gather(*(api.call("POST", "/jobs", json=body) for _ in range(8)))
    assert all(status == 201 for status, _ in replies)
    active = await db.fetch(
        "SELECT id FROM jobs WHERE concurrency_key = 'race' AND status IN ('queued', 'running')"
    )
    assert len(active) == 1  # each submit held the wallet's lock from its cancel to its commit
    assert await db.fetchval("SELECT count(*) FROM jobs WHERE cancel_reason = 'superseded'") == 7
