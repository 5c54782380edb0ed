"""The bound of a lost NOTIFY (docs/guarantees.md): the worker's listener
connection is terminated just before a cancel, and kept from coming back, so the cancel's
notification reaches nobody; the job still stops within one lease renewal
(RUNNER_LEASE_S / 3) plus a margin -- the renewal reads the row."""

from __future__ import annotations

import time

import aiohttp
import asyncpg

from runner.fakes import FakeProviders
from tests.client import Api, wait_event
from tests.conftest import Cluster

HOLD = {"backend": "gpu", "input": {"mode": "hold"}}
MARGIN_S = 1.0  # the renewal's statement, the task's stop and this loaded machine's scheduling


async def test_a_cancel_whose_notify_is_lost_stops_within_a_renewal(
    cluster: Cluster, db: asyncpg.Connection, fake_gpu: FakeProviders, http: aiohttp.ClientSession
) -> None:
    front = await cluster.start("api")
    worker = await cluster.start("worker")
    assert worker.listener is not None and worker.listener.backend_pid is not None
    api = await Api.signed_in(http, f"http://127.0.0.1:{front.port}")
    job = await api.submit(HOLD)
    execution = job["executions"][0]["id"]
    await wait_event(fake_gpu.web.started[execution])

    # No way back for the listener (it retries a port nothing listens on) ...
    worker.listener.dsn = "postgresql://nobody@127.0.0.1:1/none"
    # ... and its connection ended on the server side; the wait form returns once it is gone.
    assert await db.fetchval("SELECT pg_terminate_backend($1, 5000)", worker.listener.backend_pid)

    began = time.perf_counter()
    status, reply = await api.cancel(job["id"])
    assert status == 200, reply
    await wait_event(fake_gpu.web.closed[execution], timeout=cluster.settings.lease_s)
    took = fake_gpu.web.closed_at[execution] - began
    bound = cluster.settings.lease_renew_s + MARGIN_S
    print(
        f"\nmeasured: a cancel whose NOTIFY was lost stopped the job after {took:.2f} s "
        f"(renewal every {cluster.settings.lease_renew_s:.2f} s; bound {bound:.2f} s)"
    )
    assert not worker.listener.connected  # the NOTIFY did not come: the renewal stopped it
    assert took <= bound
