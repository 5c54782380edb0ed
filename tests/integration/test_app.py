from __future__ import annotations

from collections.abc import AsyncIterator

import aiohttp
import pytest
import structlog
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer

from api.app import create_app
from runner.config import Settings
from runner.db import create_pool
from runner.runtime import Runtime
from tests.conftest import Cluster


@pytest.fixture
async def client(dsn: str, settings: Settings) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    pool = await create_pool(dsn, 2)
    app = create_app(Runtime(settings=settings, dsn=dsn, pool=pool))

    async def boom(request: web.Request) -> web.Response:
        raise RuntimeError("secret internals")

    app.router.add_get("/boom", boom)
    async with TestClient(TestServer(app)) as c:
        yield c
    await pool.close()


async def test_unknown_route_is_json_404(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/nope")
    assert resp.status == 404
    assert await resp.json() == {"ok": False, "error": "not_found", "message": "no such route"}


async def test_wrong_method_is_json_405(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.post("/healthz")
    assert resp.status == 405
    body = await resp.json()
    assert body["error"] == "method_not_allowed" and body["ok"] is False
    assert resp.headers["Allow"] == "GET,HEAD"


async def test_unexpected_exception_is_json_500_without_trace(
    client: TestClient[web.Request, web.Application],
) -> None:
    with structlog.testing.capture_logs() as logs:
        resp = await client.get("/boom")
    assert resp.status == 500
    body = await resp.json()
    assert body == {"ok": False, "error": "internal_error", "message": "internal error; it has been logged"}
    assert resp.headers["X-Request-Id"]
    assert "secret" not in await resp.text()
    [entry] = [e for e in logs if e["event"] == "unhandled_error"]
    assert entry["log_level"] == "error" and entry["path"] == "/boom"
    again = await client.get("/boom")
    assert again.headers["X-Request-Id"] != resp.headers["X-Request-Id"]
    assert isinstance(entry["exc_info"], tuple) or entry["exc_info"] is True


async def test_service_serves_readyz_then_drains(cluster: Cluster, dsn: str, settings: Settings) -> None:
    runtime = await cluster.start("api")
    url = f"http://127.0.0.1:{runtime.port}"
    async with aiohttp.ClientSession() as http:
        async with http.get(f"{url}/healthz") as resp:
            assert resp.status == 200
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 200 and (await resp.json())["ok"] is True
        runtime.draining.set()
        async with http.get(f"{url}/readyz") as resp:
            assert resp.status == 503
            body = await resp.json()
            assert body["error"] == "unavailable" and body["reasons"] == ["draining"]
