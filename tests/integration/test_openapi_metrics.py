from __future__ import annotations

import aiohttp
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



async def test_metrics_port_keeps_metrics_off_the_main_port(cluster: Cluster,
    dsn: str, settings: Settings, http: aiohttp.ClientSession
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
