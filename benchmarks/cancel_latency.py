"""Cancel latency: N jobs running at once, each holding an open HTTP call to a local fake GPU
endpoint; cancel them one at a time through the API and measure from the cancel request
leaving the client to the fake endpoint seeing its connection close.

    python -m benchmarks.cancel_latency [--n 1000] [--cross] [--listener-down] [--no-peers] [--repeat K]

--cross:          the API on one instance, the worker on another (the NOTIFY path).
--listener-down:  (implies --cross) the worker's listener connection is terminated and kept
                  from reconnecting: only the lease renewal can deliver the cancels.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path
from typing import Any

import asyncpg

from benchmarks.harness import (
    FakeGpu,
    embedded_postgres,
    fmt,
    fresh_database,
    http_session,
    machine,
    percentiles,
    raise_fd_limit,
    sign_in,
    start_service,
    summary_line,
)

ROLE = "runner_bench"  # a plain login role: its connections can be refused (--listener-down)


async def _submit_all(http: Any, base: str, headers: dict[str, str], n: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> dict[str, Any]:
        async with sem, http.post(f"{base}/jobs", headers=headers,
                                  json={"executions": [{"backend": "gpu", "input": {"i": i}}]}) as r:
            assert r.status == 201, await r.text()
            job: dict[str, Any] = await r.json()
            return job

    return await asyncio.gather(*(one(i) for i in range(n)))


async def _floor(http: Any, base: str, headers: dict[str, str], job_id: str, count: int = 300) -> float:
    """p50 of an authenticated GET /jobs/{id}: what any API round trip costs here."""
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        async with http.get(f"{base}/jobs/{job_id}", headers=headers) as resp:
            await resp.read()
        samples.append((time.perf_counter() - t0) * 1000)
    return percentiles(samples)["p50"]


async def measure_ours(admin_dsn: str, n: int, *, cross: bool, listener_down: bool,
                       lease_s: float, logdir: Path) -> dict[str, Any]:
    fake = FakeGpu()
    await fake.start()
    dsn = await fresh_database(admin_dsn, f"bench_cancel_{int(cross)}{int(listener_down)}", role=ROLE)
    env = {"RUNNER_CONCURRENCY": str(n + 100), "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": str(n + 100),
           "RUNNER_LEASE_S": str(lease_s), "RUNNER_SHUTDOWN_GRACE_S": "0",
           "RUNNER_BACKENDS_TOML": f'[backends.gpu]\nkind = "http"\nurl = "{fake.url}/hold"\n'}
    services = []
    try:
        if cross:
            api = await start_service(dsn, "api", env, logdir)
            services.append(api)
            services.append(await start_service(dsn, "worker", env, logdir))
        else:
            api = await start_service(dsn, "all", env, logdir)
            services.append(api)
        async with http_session() as http:
            headers = await sign_in(http, api.base)
            jobs = await _submit_all(http, api.base, headers, n)
            await fake.wait_open(n)
            floor = await _floor(http, api.base, headers, jobs[0]["id"])
            if listener_down:
                admin = await asyncpg.connect(admin_dsn)
                try:
                    await admin.execute(f'ALTER ROLE "{ROLE}" CONNECTION LIMIT 0')  # no reconnecting
                    killed = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'runner-listener' AND usename = $1", ROLE)
                finally:
                    await admin.close()
                summary_line("listener connections terminated", killed)
            samples = []
            for job in jobs:
                closed = fake.close_of(job["executions"][0]["id"])
                t0 = time.perf_counter()
                async with http.post(f"{api.base}/jobs/{job['id']}/cancel", headers=headers) as resp:
                    assert resp.status == 200, await resp.text()
                    await resp.read()
                samples.append((await asyncio.wait_for(closed, 60) - t0) * 1000)
        return {"samples": samples, "floor_p50_ms": floor}
    finally:
        if listener_down:
            admin = await asyncpg.connect(admin_dsn)
            await admin.execute(f'ALTER ROLE "{ROLE}" CONNECTION LIMIT -1')
            await admin.close()
        for service in services:
            service.stop()
        await fake.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--n", type=int)
    parser.add_argument("--cross", action="store_true")
    parser.add_argument("--listener-down", action="store_true")
    parser.add_argument("--lease-s", type=float, default=None)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument("--repeat", type=int, default=1,
                        help="rounds (ours, then the peers) in one invocation; noise on a small VM is large")
    parser.add_argument("--json", type=Path, help="also write the samples to this file")
    args = parser.parse_args()
    cross = args.cross or args.listener_down
    n = args.n or (100 if args.listener_down else 1000)
    lease_s = args.lease_s or (3.0 if args.listener_down else 15.0)
    raise_fd_limit()
    mode = "listener down (lease fallback)" if args.listener_down else "cross-instance (NOTIFY)" \
        if cross else "single instance"
    print(f"cancel latency, {mode}: {n} jobs in flight, cancelled one at a time")
    print(machine())
    results: dict[str, Any] = {}
    ratios = []
    with embedded_postgres() as admin_dsn, tempfile.TemporaryDirectory() as logs:
        for round_ in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"-- round {round_} of {args.repeat}")
            ours = await measure_ours(admin_dsn, n, cross=cross, listener_down=args.listener_down,
                                      lease_s=lease_s, logdir=Path(logs))
            results.setdefault("runner", []).extend(ours["samples"])
            summary_line("runner: request -> connection closed", fmt(percentiles(ours["samples"])))
            summary_line("runner: floor, GET /jobs/{id} p50", f"{ours['floor_p50_ms']:.3f} ms")
            if args.listener_down:
                summary_line("lease renewal period", f"{lease_s / 3:.3f} s (RUNNER_LEASE_S={lease_s})")
            if not args.no_peers and not args.listener_down:
                from benchmarks.peers import run_peers

                peers = await run_peers(admin_dsn, n, Path(logs))
                for name, samples in peers.items():
                    results.setdefault(name, []).extend(samples)
                    summary_line(f"{name}: cancel call -> connection closed", fmt(percentiles(samples)))
                best = min(percentiles(s)["p99"] for s in peers.values())
                ratios.append(percentiles(ours["samples"])["p99"] / best)
                summary_line("p99 ratio runner / best peer", f"{ratios[-1]:.2f}")
    if len(ratios) > 1:
        summary_line("p99 ratios per round", ", ".join(f"{r:.2f}" for r in ratios))
        summary_line("median p99 ratio", f"{sorted(ratios)[len(ratios) // 2]:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "n": n, "samples_ms": results, "p99_ratios": ratios}))


if __name__ == "__main__":
    asyncio.run(main())
