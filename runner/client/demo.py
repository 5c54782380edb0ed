"""`runner demo`: the product in one run. Starts the service on the embedded Postgres with a
simulated GPU endpoint (the web endpoint of runner.fakes, the same fake the tests use), signs
in, submits three executions, cancels them while their HTTP calls are in flight, and prints
what happened when, in milliseconds."""

from __future__ import annotations

import asyncio
import contextlib
import json
import socket
import time
import uuid
from collections.abc import AsyncIterator
from typing import Any, TextIO
from urllib.parse import urlsplit, urlunsplit

import asyncpg
from eth_account import Account

from runner.backends.config import BackendSpec
from runner.client.http import Client, WalletKey
from runner.config import Settings
from runner.db import connect, resolve_dsn
from runner.fakes import FakeProviders, FakeWebEndpoint
from runner.service import running_service

EXECUTIONS = 3
STEP_TIMEOUT_S = 10.0


DEMO_DATABASE = "runner_demo"


@contextlib.asynccontextmanager
async def _demo_database(settings: Settings) -> AsyncIterator[str]:
    """The demo's own database: on the embedded server, a database of its own beside the one
    `runner serve` uses on the same data directory, so that neither takes the other's jobs.
    (With DATABASE_URL, that database; `runner serve` there does not have the demo's backend.)"""
    if settings.database_url:
        yield settings.database_url
        return
    dsn, embedded = await resolve_dsn(None, settings.data_dir)
    try:
        conn = await connect(dsn)
        try:
            with contextlib.suppress(asyncpg.DuplicateDatabaseError):
                await conn.execute(f'CREATE DATABASE "{DEMO_DATABASE}"')
        finally:
            await conn.close()
        parts = urlsplit(dsn)
        yield urlunsplit(parts._replace(path="/" + DEMO_DATABASE))
    finally:
        if embedded is not None:
            embedded.stop()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def run_demo(base: Settings, out: TextIO, *, as_json: bool = False, verbose: bool = False) -> int:
    began = time.perf_counter()
    fakes = FakeProviders()
    gpu_url = await fakes.start()
    gpu = fakes.web
    port = _free_port()
    settings = base.replace(
        host="127.0.0.1",
        port=port,
        siwe_domains=(f"127.0.0.1:{port}",),
        metrics_port=None,
        backends={
            "gpu-sim": BackendSpec(
                name="gpu-sim",
                kind="http",
                url=f"{gpu_url}/run",
                cancel_url=f"{gpu_url}/cancel/{{execution_id}}",
            )
        },
    )

    def say(text: str) -> None:
        if not as_json:
            print(text, file=out, flush=True)

    try:
        async with _demo_database(settings) as dsn, running_service(settings, dsn=dsn) as runtime:
            client = Client(f"http://127.0.0.1:{port}", verbose=verbose)
            try:
                where = (
                    "DATABASE_URL"
                    if settings.database_url
                    else f"database {DEMO_DATABASE} on {settings.data_dir / 'pg'}"
                )
                say(
                    f"runner demo: service on 127.0.0.1:{port}, Postgres: {where}, "
                    f"simulated GPU endpoint at {gpu_url}"
                )
                key = WalletKey("0x" + bytes(Account.create().key).hex(), development=True)
                await client.login(key)
                say(f"signed in as {key.address} (a development key made for this demo)")
                job = await client.call(
                    "POST",
                    "/jobs",
                    json_body={
                        "executions": [
                            {
                                "backend": "gpu-sim",
                                "name": f"frame-{i}",
                                "input": {"mode": "slow", "prompt": f"frame {i}", "seconds": 600},
                            }
                            for i in range(1, EXECUTIONS + 1)
                        ],
                        "metadata": {"demo": True},
                    },
                )
                ids = [e["id"] for e in job["executions"]]
                say(f"submitted job {job['id']}: {EXECUTIONS} executions of 600 s of simulated GPU work")
                await gpu.until(lambda: all(i in gpu.opened_at for i in ids), STEP_TIMEOUT_S)
                say(f"all {EXECUTIONS} HTTP calls are in flight at the GPU; cancelling now\n")
                result = await _cancel_and_watch(client, runtime, gpu, job["id"], ids)
            finally:
                await client.close()
    finally:
        await fakes.stop()
    result["total_s"] = round(time.perf_counter() - began, 2)
    if as_json:
        print(json.dumps(result), file=out)
    else:
        _print_timeline(result, out)
    return 0 if result["ok"] else 1


async def _cancel_and_watch(
    client: Client, runtime: Any, gpu: FakeWebEndpoint, job_id: str, ids: list[str]
) -> dict[str, Any]:
    ctx = runtime.manager.get(uuid.UUID(job_id))
    stopped_at: dict[str, float] = {}

    async def note_stop() -> None:
        if ctx is not None and runtime.worker is not None:
            await runtime.worker.stops.until_stopped(ctx)
            stopped_at["t"] = time.perf_counter()

    watcher = asyncio.create_task(note_stop(), name="demo_stop_watch")
    t0 = time.perf_counter()
    reply = await client.call(
        "POST", f"/jobs/{job_id}/cancel", json_body={"reason": "demo: cancelled while in flight"}
    )
    answered = time.perf_counter()
    await gpu.until(lambda: all(i in gpu.closed_at and i in gpu.url_cancel_at for i in ids), STEP_TIMEOUT_S)
    await asyncio.wait_for(watcher, STEP_TIMEOUT_S)
    final = await client.call("GET", f"/jobs/{job_id}")
    checked = time.perf_counter()

    def ms(t: float) -> float:
        return round((t - t0) * 1000, 2)

    events: list[dict[str, Any]] = [
        {"ms": 0.0, "what": "cancel requested", "detail": f"POST /jobs/{job_id}/cancel"},
        {
            "ms": ms(answered),
            "what": "API answered",
            "detail": f"200 previous_status={reply['previous_status']}, rows updated: job and "
            f"{reply['executions_cancelled']} executions cancelled in one transaction",
        },
        {
            "ms": ms(stopped_at["t"]),
            "what": "task stopped",
            "detail": "the job's asyncio.Task ended (remote cancels sent first), its stop on record",
        },
        {
            "ms": ms(checked),
            "what": "rows checked",
            "detail": f"job {final['status']}; executions "
            + ", ".join(f"{e['status']}/remote_cancel={e['remote_cancel']}" for e in final["executions"]),
        },
    ]
    for n, execution_id in enumerate(ids, 1):
        events.append(
            {
                "ms": ms(gpu.closed_at[execution_id]),
                "what": "connection closed",
                "detail": f"frame-{n}, as the simulated GPU saw it",
            }
        )
        events.append(
            {
                "ms": ms(gpu.url_cancel_at[execution_id]),
                "what": "remote cancel received",
                "detail": f"frame-{n}: POST cancel_url at the GPU",
            }
        )
    events.sort(key=lambda e: e["ms"])
    ok = final["status"] == "cancelled" and all(
        e["status"] == "cancelled" and e["remote_cancel"] == "acknowledged" for e in final["executions"]
    )
    return {"ok": ok, "job_id": job_id, "timeline": events}


def _print_timeline(result: dict[str, Any], out: TextIO) -> None:
    print("timeline (ms after the cancel request left the client)", file=out)
    for event in result["timeline"]:
        print(f"  {event['ms']:8.2f}  {event['what']:<24} {event['detail']}", file=out)
    verdict = "every GPU call stopped" if result["ok"] else "NOT everything stopped"
    print(f"\n{verdict}; the demo took {result['total_s']} s and left nothing running.", file=out)
