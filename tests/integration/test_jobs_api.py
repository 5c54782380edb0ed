"""POST/GET /jobs: validation, idempotency, quota, ownership, pagination."""

from __future__ import annotations

import asyncio
import json
import uuid
from typing import Any

import aiohttp
import pytest

from runner.config import Settings
from tests.client import Api
from tests.conftest import Cluster
from tests.wallets import Wallet

DEMO = {"backend": "demo", "input": {"seconds": 0}}


async def test_submit_returns_the_queued_job(api: Api) -> None:
    status, job = await api.call(
        "POST",
        "/jobs",
        json={
            "executions": [{"backend": "demo", "input": {"seconds": 0}, "name": "first"}, DEMO],
            "timeout_s": 900,
            "metadata": {"project": "x"},
        },
    )
    assert status == 201
    assert set(job) == {
        "id",
        "owner",
        "status",
        "created_at",
        "started_at",
        "finished_at",
        "cancelled_at",
        "cancelled_by",
        "cancel_reason",
        "timeout_s",
        "metadata",
        "executions",
        "error",
        "gpu_seconds",
        "rerun_of",
        "webhook",
        "webhook_events",
        "concurrency_key",
    }
    assert job["concurrency_key"] is None
    assert uuid.UUID(job["id"]) and job["owner"] == api.wallet.address  # type: ignore[union-attr]
    assert job["status"] == "queued" and job["timeout_s"] == 900 and job["metadata"] == {"project": "x"}
    assert job["created_at"].endswith("Z")
    assert [e["name"] for e in job["executions"]] == ["first", None]
    assert set(job["executions"][0]) == {
        "id",
        "name",
        "backend",
        "input",
        "status",
        "remote_id",
        "attempts",
        "started_at",
        "finished_at",
        "output",
        "error",
        "remote_cancel",
        "remote_stopped_at",
        "gpu_seconds",
    }
    done = await api.until(job["id"], "completed")
    assert [e["output"] for e in done["executions"]] == [{"slept_s": 0}, {"slept_s": 0}]
    assert done["executions"][0]["attempts"] == 1


@pytest.mark.parametrize(
    ("body", "code", "fragment"),
    [
        ({}, "invalid_request", "executions"),
        ({"executions": []}, "invalid_request", "non-empty"),
        ({"executions": "demo"}, "invalid_request", "non-empty list"),
        ({"executions": [DEMO] * 65}, "invalid_request", "at most 64"),
        ({"executions": [1]}, "invalid_request", "must be an object"),
        ({"executions": [{"input": {}}]}, "invalid_request", "backend"),
        ({"executions": [{"backend": "nope"}]}, "unknown_backend", "no backend named 'nope'"),
        ({"executions": [{"backend": "https://evil.example/run"}]}, "unknown_backend", "no backend"),
        ({"executions": [{"backend": "demo", "url": "http://x"}]}, "invalid_request", "unknown field"),
        ({"executions": [DEMO], "timeout_s": -1}, "invalid_request", "timeout_s"),
        ({"executions": [DEMO], "timeout_s": 0}, "invalid_request", "timeout_s"),
        ({"executions": [DEMO], "timeout_s": 86401}, "invalid_request", "timeout_s"),
        ({"executions": [DEMO], "timeout_s": 1.5}, "invalid_request", "timeout_s"),
        ({"executions": [DEMO], "timeout_s": True}, "invalid_request", "timeout_s"),
        ({"executions": [DEMO], "timeout_s": "60"}, "invalid_request", "timeout_s"),
        ({"executions": [DEMO], "metadata": []}, "invalid_request", "metadata"),
        ({"executions": [DEMO], "metadata": {"x": "y" * 17000}}, "invalid_request", "16 KiB"),
        ({"executions": [DEMO], "owner": "0xabc"}, "invalid_request", "unknown field"),
        ({"executions": [{"backend": "demo", "name": 5}]}, "invalid_request", "name"),
    ],
)
async def test_every_bad_submit_is_refused_with_its_code(
    api: Api, body: dict[str, Any], code: str, fragment: str, db: Any
) -> None:
    status, reply = await api.call("POST", "/jobs", json=body)
    assert status == 400, reply
    assert reply["ok"] is False and reply["error"] == code
    assert fragment in reply["message"]
    assert await db.fetchval("SELECT count(*) FROM jobs") == 0  # nothing half-written


async def test_malformed_bodies(api: Api) -> None:
    for data, ctype, status, code in [
        (b"{nope", "application/json", 400, "invalid_request"),
        (b"[1, 2]", "application/json", 400, "invalid_request"),
        (b'"text"', "application/json", 400, "invalid_request"),
        (b"", "application/json", 400, "invalid_request"),
        (b"executions=1", "application/x-www-form-urlencoded", 415, "unsupported_media_type"),
        (b"\xff\xfe", "application/json", 400, "invalid_request"),
    ]:
        async with api.http.post(
            f"{api.base}/jobs", data=data, headers={**api.headers, "Content-Type": ctype}
        ) as resp:
            assert resp.status == status, data
            assert (await resp.json())["error"] == code


async def test_body_over_1_mib_is_413(api: Api) -> None:
    big = json.dumps({"executions": [{"backend": "demo", "input": {"x": "y" * (1024 * 1024)}}]})
    async with api.http.post(
        f"{api.base}/jobs", data=big, headers={**api.headers, "Content-Type": "application/json"}
    ) as resp:
        assert resp.status == 413
        assert (await resp.json())["error"] == "payload_too_large"


async def test_idempotency_key(api: Api, db: Any) -> None:
    body = {"executions": [{"backend": "demo", "input": {"seconds": 60}}]}
    first = await api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "k1"})
    again = await api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert first[0] == again[0] == 201
    assert first[1]["id"] == again[1]["id"]
    conflict = await api.call("POST", "/jobs", json={"executions": [DEMO]}, headers={"Idempotency-Key": "k1"})
    assert conflict[0] == 409 and conflict[1]["error"] == "idempotency_conflict"
    # Per wallet: another wallet may use the same key.
    other = await Api.signed_in(api.http, api.base)
    status, theirs = await other.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert status == 201 and theirs["id"] != first[1]["id"]
    # Past 24 h the key is free again.
    await db.execute("UPDATE idempotency_keys SET created_at = now() - interval '25 hours'")
    later = await api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "k1"})
    assert later[0] == 201 and later[1]["id"] not in (first[1]["id"], theirs["id"])
    assert (await api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "x" * 300}))[0] == 400


async def test_concurrent_repeats_of_one_key_make_one_job(api: Api, db: Any) -> None:
    body = {"executions": [{"backend": "demo", "input": {"seconds": 60}}]}
    replies = await asyncio.gather(
        *(api.call("POST", "/jobs", json=body, headers={"Idempotency-Key": "same"}) for _ in range(10))
    )
    assert {status for status, _ in replies} == {201}
    assert len({reply["id"] for _, reply in replies}) == 1
    assert await db.fetchval("SELECT count(*) FROM jobs") == 1


async def test_quota_of_active_jobs(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    rt = await cluster.start("all", settings.replace(max_active_jobs_per_wallet=3))
    api = await Api.signed_in(http, f"http://127.0.0.1:{rt.port}")
    long = {"backend": "demo", "input": {"seconds": 60}}
    replies = await asyncio.gather(
        *(api.call("POST", "/jobs", json={"executions": [long]}) for _ in range(5))
    )
    statuses = sorted(status for status, _ in replies)
    assert statuses == [201, 201, 201, 429, 429]
    refused = next(body for status, body in replies if status == 429)
    assert refused["error"] == "quota_exceeded" and refused["limit"] == 3
    # A finished (cancelled) job frees its slot.
    job_id = next(body["id"] for status, body in replies if status == 201)
    assert (await api.cancel(job_id))[0] == 200
    assert (await api.call("POST", "/jobs", json={"executions": [long]}))[0] == 201


async def test_another_wallets_job_is_403_and_admins_may_read(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    admin = Wallet()
    rt = await cluster.start(admin_wallets=frozenset({admin.address}))
    base = f"http://127.0.0.1:{rt.port}"
    owner, stranger = await Api.signed_in(http, base), await Api.signed_in(http, base)
    boss = await Api.signed_in(http, base, admin)
    job = await owner.submit({"backend": "demo", "input": {"seconds": 60}})
    for path in (f"/jobs/{job['id']}", f"/jobs/{job['id']}/audit"):
        status, body = await stranger.call("GET", path)
        assert status == 403 and body["error"] == "forbidden"
        assert (await boss.call("GET", path))[0] == 200
    assert (await stranger.cancel(job["id"]))[0] == 403
    assert (await owner.job(job["id"]))["status"] in ("queued", "running")
    status, body = await boss.cancel(job["id"])
    assert status == 200
    assert (await owner.job(job["id"]))["cancelled_by"] == admin.address


async def test_unknown_and_malformed_ids_are_404(api: Api) -> None:
    job = await api.submit(DEMO)
    for path in (
        "/jobs/not-a-uuid",
        f"/jobs/{uuid.uuid4()}",
        "/jobs/not-a-uuid/audit",
        f"/jobs/{uuid.uuid4()}/audit",
        f"/jobs/{uuid.uuid4()}/events",
    ):
        status, body = await api.call("GET", path)
        assert status == 404 and body["error"] == "not_found", path
    for path in (
        f"/jobs/{uuid.uuid4()}/cancel",
        "/jobs/xyz/cancel",
        f"/jobs/{job['id']}/executions/{uuid.uuid4()}/cancel",
        f"/jobs/{job['id']}/executions/nope/cancel",
    ):
        status, body = await api.call("POST", path)
        assert status == 404 and body["error"] == "not_found", path


async def test_list_is_newest_first_with_stable_cursor_pagination(api: Api) -> None:
    ids = [(await api.submit({"backend": "demo", "input": {"seconds": 60}}))["id"] for _ in range(5)]
    status, page1 = await api.call("GET", "/jobs?limit=2")
    assert status == 200
    assert [j["id"] for j in page1["jobs"]] == ids[::-1][:2]
    assert all("executions" in j for j in page1["jobs"])
    # Jobs added meanwhile do not shift the next pages.
    newer = (await api.submit(DEMO))["id"]
    _, page2 = await api.call("GET", f"/jobs?limit=2&cursor={page1['next_cursor']}")
    _, page3 = await api.call("GET", f"/jobs?limit=2&cursor={page2['next_cursor']}")
    assert [j["id"] for j in page2["jobs"]] == ids[::-1][2:4]
    assert [j["id"] for j in page3["jobs"]] == ids[:1]
    assert page3["next_cursor"] is None
    _, first = await api.call("GET", "/jobs?limit=1")
    assert first["jobs"][0]["id"] == newer
    # Another wallet sees none of them.
    other = await Api.signed_in(api.http, api.base)
    assert (await other.call("GET", "/jobs"))[1] == {"jobs": [], "next_cursor": None}


async def test_list_filters_and_bad_parameters(api: Api) -> None:
    kept = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    gone = await api.submit({"backend": "demo", "input": {"seconds": 60}})
    assert (await api.cancel(gone["id"]))[0] == 200
    _, cancelled = await api.call("GET", "/jobs?status=cancelled")
    assert [j["id"] for j in cancelled["jobs"]] == [gone["id"]]
    _, active = await api.call("GET", "/jobs?status=queued,running")
    assert [j["id"] for j in active["jobs"]] == [kept["id"]]
    for query in ("limit=0", "limit=201", "limit=x", "status=done", "cursor=garbage", "cursor=" + "A" * 40):
        status, body = await api.call("GET", f"/jobs?{query}")
        assert status == 400 and body["error"] == "invalid_request", query


async def test_backends_are_listed_without_urls_or_keys(api: Api) -> None:
    status, body = await api.call("GET", "/backends")
    assert status == 200
    by_name = {b["name"]: b for b in body["backends"]}
    assert by_name["rp"] == {"name": "rp", "kind": "runpod", "cancels_remotely": True, "concurrency": None}
    assert by_name["demo"]["cancels_remotely"] is False
    text = json.dumps(body)
    assert "rp-key" not in text and "http://" not in text
    api.http.cookie_jar.clear()
    async with api.http.get(api.base + "/backends") as resp:
        assert resp.status == 401


async def test_executions_show_their_input(api: Api) -> None:
    job = await api.submit({"backend": "demo", "input": {"seconds": 0, "tag": "x"}})
    assert job["executions"][0]["input"] == {"seconds": 0, "tag": "x"}
    assert (await api.job(job["id"]))["executions"][0]["input"] == {"seconds": 0, "tag": "x"}


async def test_openapi_names_its_server_and_gives_examples(api: Api) -> None:
    async with api.http.get(api.base + "/openapi.json") as resp:
        doc = await resp.json()
    assert doc["servers"][0]["url"] == api.base
    cancel = doc["paths"]["/jobs/{job_id}/cancel"]["post"]["responses"]["200"]["content"]["application/json"]
    assert cancel["example"]["new_status"] == "cancelled"
    assert doc["components"]["schemas"]["Error"]["example"]["error"] == "not_cancellable"
