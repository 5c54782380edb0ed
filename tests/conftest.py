from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import aiohttp
import asyncpg
import pytest

from runner.backends.config import BackendSpec
from runner.config import Settings
from runner.db import connect
from runner.fakes import FakeProviders
from runner.runtime import Runtime
from runner.service import running_service
from tests.chain import Anvil, running_anvil
from tests.client import Api
from tests.pg import TestPostgres


@pytest.fixture(scope="session")
def postgres(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestPostgres]:
    pg = TestPostgres(tmp_path_factory.mktemp("postgres"))
    pg.start()
    yield pg
    pg.stop()


@pytest.fixture(scope="session")
async def template_db(postgres: TestPostgres) -> AsyncIterator[str]:
    await postgres.create_template()
    yield postgres.template
    await postgres.drop_template()


@pytest.fixture
async def dsn(postgres: TestPostgres, template_db: str) -> AsyncIterator[str]:
    """A fresh, migrated database for one test."""
    name, url = await postgres.create_database()
    yield url
    await postgres.drop_database(name)


@pytest.fixture
async def empty_dsn(postgres: TestPostgres) -> AsyncIterator[str]:
    """A fresh database with no schema at all."""
    name, url = await postgres.create_database(migrated=False)
    yield url
    await postgres.drop_database(name)


@pytest.fixture
async def db(dsn: str) -> AsyncIterator[asyncpg.Connection]:
    conn = await connect(dsn)
    yield conn
    await conn.close()


@pytest.fixture
async def fake_gpu() -> AsyncIterator[FakeProviders]:
    fake = FakeProviders()
    await fake.start()
    yield fake
    await fake.stop()


def backends_for(fake: FakeProviders) -> dict[str, BackendSpec]:
    return {
        "demo": BackendSpec(name="demo", kind="demo"),
        "gpu": BackendSpec(
            name="gpu",
            kind="http",
            url=f"{fake.base_url}/run",
            cancel_url=f"{fake.base_url}/cancel/{{execution_id}}",
            max_attempts=2,
        ),
        "plain": BackendSpec(name="plain", kind="http", url=f"{fake.base_url}/run"),
        "capped": BackendSpec(
            name="capped", kind="http", url=f"{fake.base_url}/run", max_output_bytes=1 << 20
        ),
        "rp": BackendSpec(
            name="rp",
            kind="runpod",
            base_url=f"{fake.base_url}/v2",
            endpoint_id="ep1",
            api_key="rp-key",
            poll_interval_s=0.02,
        ),
        "rep": BackendSpec(
            name="rep",
            kind="replicate",
            base_url=fake.replicate_url,
            version="5c7d5dc6dd8bf75c1acaa8565735e7986bc5b66206b55cca93cb72c9bf15ccaa",
            api_key="r8-key",
            poll_interval_s=0.02,
        ),
        "fal": BackendSpec(
            name="fal",
            kind="fal",
            base_url=fake.fal_url,
            model="fal-ai/flux/dev",
            api_key="fal-key",
            poll_interval_s=0.02,
        ),
        # A Modal web endpoint, with the user's own endpoint that calls FunctionCall.cancel.
        "modal": BackendSpec(
            name="modal",
            kind="http",
            url=f"{fake.base_url}/run",
            cancel_url=f"{fake.base_url}/modal/cancel/{{remote_id}}",
        ),
    }


@pytest.fixture
def settings(tmp_path: Path, fake_gpu: FakeProviders) -> Settings:
    return Settings(
        data_dir=tmp_path / "data",
        host="127.0.0.1",
        port=0,
        siwe_domains=("runner.test",),
        lease_s=3.0,
        max_submits_per_minute=100_000,  # the tests submit in bursts; test_caps tests the cap
        shutdown_grace_s=0.1,
        db_pool_size=5,
        log_format="json",
        backends=backends_for(fake_gpu),
    )


@dataclass
class Cluster:
    """Instances of the service sharing one database, started by a test as it needs them
    and stopped (last started, first stopped) when the test ends."""

    dsn: str
    settings: Settings
    stack: contextlib.AsyncExitStack

    async def start(self, role: str = "all", settings: Settings | None = None, **changes: Any) -> Runtime:
        config = (settings or self.settings).replace(**changes)
        return await self.stack.enter_async_context(running_service(config, role, dsn=self.dsn))


@pytest.fixture
async def cluster(dsn: str, settings: Settings) -> AsyncIterator[Cluster]:
    async with contextlib.AsyncExitStack() as stack:
        yield Cluster(dsn, settings, stack)


@pytest.fixture
async def service(cluster: Cluster) -> Runtime:
    """One running instance (API and worker) on an ephemeral port."""
    return await cluster.start()


@pytest.fixture
def base_url(service: Runtime) -> str:
    return f"http://127.0.0.1:{service.port}"


@pytest.fixture
async def http() -> AsyncIterator[aiohttp.ClientSession]:
    # A cookie jar that keeps cookies for IP hosts too, as a browser on 127.0.0.1 would.
    async with aiohttp.ClientSession(cookie_jar=aiohttp.CookieJar(unsafe=True)) as session:
        yield session


@pytest.fixture
async def api(http: aiohttp.ClientSession, base_url: str) -> Api:
    """A signed-in wallet on the `service` instance."""
    return await Api.signed_in(http, base_url)


@pytest.fixture(scope="session")
async def anvil() -> AsyncIterator[Anvil]:
    """A real Ethereum node (anvil) with the test wallets' factory on it; skipped without one,
    failed under CI (tests/chain.py)."""
    async with running_anvil() as chain:
        yield chain
