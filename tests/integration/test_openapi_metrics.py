from __future__ import annotations

import aiohttp
import pytest
from aiohttp import web

from api.app import create_app
from api.openapi import document
from runner.config import Settings
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from tests.client import Api, free_port, wait_event
from tests.conftest import Cluster


def _routes(app: web.Application) -> set[tuple[str, str]]:
    routes = set()
    for route in app.router.routes():
        if route.method in ("HEAD", "OPTIONS"):
            continue
        info = route.resource.get_info() if route.resource is not None else {}
        path = info.get("path") or info.get("formatter") or f"{info['prefix']}/{{path}}"
        routes.add((str(path), route.method.lower()))
    return routes


async def test_every_registered_route_is_in_the_openapi_document(service: Runtime) -> None:
    app = create_app(Runtime(settings=service.settings, dsn=service.dsn, pool=service.pool))
    documented = {(path, method) for path, ops in document()["paths"].items() for method in ops}
    registered = _routes(app)
    assert registered, "no routes found"
    missing = registered - documented
    assert not missing, f"routes missing from /openapi.json: {sorted(missing)}"
    assert not documented - registered, "documented routes that do not exist"


async def test_openapi_is_served(http: aiohttp.ClientSession, base_url: str) -> None:
    async with http.get(f"{base_url}/openapi.json") as resp:
        assert resp.status == 200
        doc = await resp.json()
    assert doc["openapi"].startswith("3.")
    assert "/jobs/{job_id}/cancel" in doc["paths"]
    codes = set(doc["components"]["schemas"]["Error"]["properties"]["error"]["enum"])
    assert {"not_cancellable", "invalid_nonce", "quota_exceeded", "payload_too_large"} <= codes


async def test_metrics_port_keeps_metrics_off_the_main_port(
    cluster: Cluster, dsn: str, settings: Settings, http: aiohttp.ClientSession
) -> None:
    port = free_port()
    rt = await cluster.start("all", settings.replace(metrics_port=port))
    async with http.get(f"http://127.0.0.1:{rt.port}/metrics") as resp:
        assert resp.status == 404
    async with http.get(f"http://127.0.0.1:{port}/metrics") as resp:
        assert resp.status == 200
        assert "runner_jobs_running" in await resp.text()


HOLD = {"backend": "gpu", "input": {"mode": "hold"}}


async def test_metrics_count_cancels_and_stops(api: Api, fake_gpu: FakeProviders) -> None:
    job = await api.submit(HOLD)
    await wait_event(fake_gpu.web.started[job["executions"][0]["id"]])
    assert (await api.cancel(job["id"], wait=True))[1]["stopped"] is True
    await api.cancel(job["id"])
    async with api.http.get(f"{api.base}/metrics") as resp:
        assert resp.status == 200
        text = await resp.text()
    lines = set(text.splitlines())
    assert 'runner_cancel_requests_total{result="cancelled"} 1.0' in lines
    assert 'runner_cancel_requests_total{result="already_cancelled"} 1.0' in lines
    assert "runner_cancel_stop_seconds_count 1.0" in lines
    assert 'runner_jobs_finished_total{status="cancelled"} 1.0' in lines
    assert 'runner_remote_cancels_total{backend="gpu",outcome="acknowledged"} 1.0' in lines
    assert "runner_jobs_running 0.0" in lines


async def _metrics_text(http: aiohttp.ClientSession, base: str) -> str:
    async with http.get(base + "/metrics") as resp:
        return await resp.text()


async def test_http_requests_are_counted_by_route_not_raw_url(
    http: aiohttp.ClientSession, base_url: str
) -> None:
    job_id = "0b8e0f0e-35f6-4a4c-9d3e-2f6f3c0f3b11"
    async with http.get(f"{base_url}/jobs/{job_id}") as resp:
        assert resp.status == 401
    async with http.get(f"{base_url}/no/such/page") as resp:
        assert resp.status == 404
    text = await _metrics_text(http, base_url)
    assert 'runner_http_requests_total{method="GET",route="/jobs/{job_id}",status="401"} 1.0' in text
    assert 'route="unmatched",status="404"' in text
    assert job_id not in text and "/no/such/page" not in text  # no label per URL
    assert 'runner_http_request_duration_seconds_count{method="GET",route="/jobs/{job_id}"} 1.0' in text


async def test_queue_depth_and_oldest_age_per_backend(
    cluster: Cluster, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    from runner.backends.config import BackendSpec

    spec = BackendSpec(name="gpu-q", kind="http", url=f"{fake_gpu.base_url}/run")  # type: ignore[call-arg]
    front = await cluster.start("api", backends={"gpu-q": spec})
    worker = await cluster.start("worker")  # runs the default backends only: gpu-q waits
    api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
    for n in range(2):
        await api.submit({"backend": "gpu-q", "input": {"n": n}})
    assert worker.worker is not None
    await worker.worker.housekeeping()
    text = await _metrics_text(http, f"http://127.0.0.1:{worker.port}")
    assert 'runner_jobs_queued{backend="gpu-q"} 2.0' in text
    [age] = [
        ln
        for ln in text.splitlines()
        if ln.startswith('runner_oldest_queued_job_age_seconds{backend="gpu-q"}')
    ]
    assert 0 < float(age.split()[-1]) < 60


async def test_backend_calls_are_timed_and_their_errors_counted(fake_gpu: FakeProviders) -> None:
    import aiohttp as _aiohttp

    from runner.backends import build_backend
    from runner.backends.base import HttpBackendBase, TransientBackendError
    from runner.backends.config import BackendSpec
    from runner.metrics import Metrics

    metrics = Metrics()
    async with _aiohttp.ClientSession() as session:
        backend = build_backend(
            BackendSpec(name="gpu-m", kind="http", url=f"{fake_gpu.base_url}/run"),  # type: ignore[call-arg]
            session,
        )
        assert isinstance(backend, HttpBackendBase)
        backend.metrics = metrics
        with pytest.raises(TransientBackendError):
            await backend.request("GET", "http://127.0.0.1:1/closed", "gpu-m poll")
    text = metrics.render().decode()
    assert (
        'runner_backend_request_errors_total{backend="gpu-m",kind="transient",operation="poll"} 1.0' in text
    )
    assert 'runner_backend_request_seconds_count{backend="gpu-m",operation="poll"} 1.0' in text


async def test_the_document_names_every_field_the_job_routes_take_and_give(api: Api) -> None:
    from api.filtering import BODY_FIELDS, PAGING, QUERY_FIELDS
    from api.validation import SUBMIT_FIELDS

    doc = document()
    schemas, paths = doc["components"]["schemas"], doc["paths"]
    job = await api.submit({"backend": "demo", "input": {"seconds": 0}}, concurrency_key="k")
    assert set(schemas["Job"]["properties"]) == set(job)
    assert set(schemas["Submit"]["properties"]) == SUBMIT_FIELDS
    listed = {p["name"] for p in paths["/jobs"]["get"]["parameters"]}
    assert listed == QUERY_FIELDS | PAGING | {"meta.KEY"}
    body = paths["/jobs/cancel"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert set(body["properties"]) == BODY_FIELDS | {"reason", "dry_run"}
