"""Cancel latency: N jobs running at once, each holding an open HTTP call to a local fake GPU
endpoint; cancel them one at a time through the API and measure from the cancel request
leaving the client to the fake endpoint seeing its connection close.

    python -m benchmarks.cancel_latency [--n 1000] [--cross] [--listener-down] [--no-peers]
        [--sequential] [--repeat K] [--client raw|aiohttp] [--logs DIR]
        [--profile FILE [--profile-api]] [--during CMD] [--json FILE]

The peers (benchmarks/peers) run in the same invocation. By default the three systems hold
their N jobs at the same time and their cancels are interleaved (job i of each in turn, the
order rotating), so the machine's noise at any moment falls on all three alike; with
--sequential, ours runs first, then each peer.

--cross:          the API on one instance, the worker on another (the NOTIFY path).
--listener-down:  (implies --cross) the worker's listener connection is terminated and kept
                  from reconnecting: only the lease renewal can deliver the cancels.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import shlex
import statistics
import time
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import asyncpg
import uvloop

from benchmarks.harness import (
    FakeGpu,
    RawHttp,
    Requests,
    aiohttp_requests,
    cpu_seconds,
    embedded_postgres,
    fmt,
    fresh_database,
    host_cpu,
    http_session,
    log_directory,
    machine,
    percentiles,
    raise_fd_limit,
    sign_in,
    start_py_spy,
    start_recorder,
    start_service,
    steal_line,
    stop_recorder,
    summary_line,
)
from benchmarks.peers import CancelOne

ROLE = "runner_bench"  # a plain login role: its connections can be refused (--listener-down)


async def _submit_all(http: Any, base: str, headers: dict[str, str], n: int) -> list[dict[str, Any]]:
    sem = asyncio.Semaphore(50)

    async def one(i: int) -> dict[str, Any]:
        async with (
            sem,
            http.post(
                f"{base}/jobs", headers=headers, json={"executions": [{"backend": "gpu", "input": {"i": i}}]}
            ) as r,
        ):
            assert r.status == 201, await r.text()
            job: dict[str, Any] = await r.json()
            return job

    return await asyncio.gather(*(one(i) for i in range(n)))


async def _floor(request: Requests, job_id: str, count: int = 300) -> float:
    """p50 of an authenticated GET /jobs/{id}: what any API round trip costs here."""
    get = request("GET", f"/jobs/{job_id}")
    samples = []
    for _ in range(count):
        t0 = time.perf_counter()
        status, _body = await get()
        samples.append((time.perf_counter() - t0) * 1000)
        assert status == 200, status
    return percentiles(samples)["p50"]


@contextlib.asynccontextmanager
async def ours_running(
    admin_dsn: str,
    n: int,
    *,
    cross: bool,
    listener_down: bool,
    lease_s: float,
    logdir: Path,
    results: dict[str, Any],
    client: str,
) -> AsyncIterator[CancelOne]:
    """Our service(s) with N jobs in flight; yields `cancel(i)` (ms until job i's connection
    closed) and puts the floor (p50 of GET /jobs/{id}) in `results`."""
    fake = FakeGpu()
    await fake.start()
    dsn = await fresh_database(admin_dsn, f"bench_cancel_{int(cross)}{int(listener_down)}", role=ROLE)
    env = {
        "RUNNER_CONCURRENCY": str(n + 100),
        "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": str(n + 100),
        "RUNNER_MAX_SUBMITS_PER_MINUTE": str(100 * n + 1000),
        "RUNNER_LEASE_S": str(lease_s),
        "RUNNER_SHUTDOWN_GRACE_S": "0",
        "RUNNER_BACKENDS_TOML": f'[backends.gpu]\nkind = "http"\nurl = "{fake.url}/hold"\n',
    }
    services = []
    results["answered_ms"], results["close_after_answer_ms"] = [], []
    try:
        if cross:
            api = await start_service(dsn, "api", env, logdir)
            services.append(api)
            services.append(await start_service(dsn, "worker", env, logdir))
        else:
            api = await start_service(dsn, "all", env, logdir)
            services.append(api)
        results["holder_pid"] = services[-1].proc.pid
        results["api_pid"] = api.proc.pid
        async with http_session() as http, contextlib.AsyncExitStack() as stack:
            headers = await sign_in(http, api.base)
            jobs = await _submit_all(http, api.base, headers, n)
            await fake.wait_open(n)
            request = (
                (await stack.enter_async_context(RawHttp(api.base, headers))).request
                if client == "raw"
                else aiohttp_requests(http, api.base, headers)
            )
            results["floor_p50_ms"] = await _floor(request, jobs[0]["id"])
            if listener_down:
                admin = await asyncpg.connect(admin_dsn)
                try:
                    await admin.execute(f'ALTER ROLE "{ROLE}" CONNECTION LIMIT 0')  # no reconnecting
                    killed = await admin.fetchval(
                        "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
                        "WHERE application_name = 'runner-listener' AND usename = $1",
                        ROLE,
                    )
                finally:
                    await admin.close()
                summary_line("listener connections terminated", killed)

            async def cancel(i: int) -> float:
                job = jobs[i]
                closed = fake.close_of(job["executions"][0]["id"])
                post = request("POST", f"/jobs/{job['id']}/cancel")
                t0 = time.perf_counter()
                status, body = await post()
                assert status == 200, body
                answered = time.perf_counter()
                closed_at = closed.result() if closed.done() else await asyncio.wait_for(closed, 60)
                results["answered_ms"].append((answered - t0) * 1000)
                results["close_after_answer_ms"].append((closed_at - answered) * 1000)
                return (closed_at - t0) * 1000

            yield cancel
    finally:
        if listener_down:
            admin = await asyncpg.connect(admin_dsn)
            await admin.execute(f'ALTER ROLE "{ROLE}" CONNECTION LIMIT -1')
            await admin.close()
        for service in services:
            service.stop()
        await fake.stop()


async def one_round(
    admin_dsn: str, n: int, args: argparse.Namespace, cross: bool, lease_s: float, logdir: Path
) -> tuple[dict[str, list[float]], float]:
    """One round: ours and (unless told otherwise) the peers. Returns the samples by system
    and our floor. Interleaved: all three hold N jobs at once and job i of each is cancelled
    in turn (the order rotating), so a moment of machine noise falls on all of them alike."""
    from benchmarks.peers import PEER_RUNNERS, run_peers

    with_peers = not args.no_peers and not args.listener_down
    extra: dict[str, Any] = {}
    samples: dict[str, list[float]] = {}
    async with contextlib.AsyncExitStack() as stack:
        systems = {
            "runner": await stack.enter_async_context(
                ours_running(
                    admin_dsn,
                    n,
                    cross=cross,
                    listener_down=args.listener_down,
                    lease_s=lease_s,
                    logdir=logdir,
                    results=extra,
                    client=args.client,
                )
            )
        }
        if with_peers and not args.sequential:
            for name, running in PEER_RUNNERS.items():
                systems[name] = await stack.enter_async_context(running(admin_dsn, n, logdir))
        profiled = extra["api_pid"] if args.profile_api else extra["holder_pid"]
        spy = start_py_spy(profiled, args.profile) if args.profile else None
        tracer = start_recorder(shlex.split(args.during)) if args.during else None
        names = list(systems)
        for name in names:
            samples[name] = []
        cpu_before, host_before = cpu_seconds(extra["holder_pid"]), host_cpu()
        api_before = cpu_seconds(extra["api_pid"])[0]
        client_before = time.process_time()
        for i in range(n):
            for k in range(len(names)):
                name = names[(i + k) % len(names)]
                samples[name].append(await systems[name](i))
        cpu_after = cpu_seconds(extra["holder_pid"])
        if cross:
            api_cpu = cpu_seconds(extra["api_pid"])[0] - api_before
            summary_line("runner: CPU per cancel, the API instance", f"{api_cpu / n * 1e6:.0f} us")
        summary_line("vm: CPU stolen by the host meanwhile", steal_line(host_before, host_cpu()))
        summary_line(
            "runner: CPU per cancel, the job's service", f"{(cpu_after[0] - cpu_before[0]) / n * 1e6:.0f} us"
        )
        if len(names) == 1:
            summary_line(
                "the measuring client and fake: CPU per cancel",
                f"{(time.process_time() - client_before) / n * 1e6:.0f} us ({args.client})",
            )
            summary_line(
                "runner: CPU per cancel, Postgres", f"{(cpu_after[1] - cpu_before[1]) / n * 1e6:.0f} us"
            )
        summary_line("runner: request -> answer read", fmt(percentiles(extra["answered_ms"])))
        summary_line(
            "runner: answer read -> connection closed", fmt(percentiles(extra["close_after_answer_ms"]))
        )
        stop_recorder(tracer)
        stop_recorder(spy)
    if with_peers and args.sequential:
        samples.update(await run_peers(admin_dsn, n, logdir))
    return samples, extra["floor_p50_ms"]


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int)
    parser.add_argument("--cross", action="store_true")
    parser.add_argument("--listener-down", action="store_true")
    parser.add_argument("--lease-s", type=float, default=None)
    parser.add_argument("--no-peers", action="store_true")
    parser.add_argument(
        "--repeat",
        type=int,
        default=1,
        help="rounds (ours, then the peers) in one invocation; noise on a small VM is large",
    )
    parser.add_argument(
        "--sequential",
        action="store_true",
        help="measure ours, then each peer, instead of interleaving their cancels",
    )
    parser.add_argument("--json", type=Path, help="also write the samples to this file")
    parser.add_argument("--logs", type=Path, help="keep the services' logs in this directory")
    parser.add_argument(
        "--profile", metavar="FILE", help="record our service with py-spy while it cancels (speedscope JSON)"
    )
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the measuring HTTP client (raw: see harness.RawHttp)",
    )
    parser.add_argument(
        "--during",
        metavar="CMD",
        help="run CMD while our cancels go on, interrupted after (e.g. 'perf sched record -a')",
    )
    parser.add_argument(
        "--profile-api", action="store_true", help="with --cross: record the API instance, not the job's"
    )
    args = parser.parse_args()
    cross = args.cross or args.listener_down
    n = args.n or (100 if args.listener_down else 1000)
    lease_s = args.lease_s or (3.0 if args.listener_down else 15.0)
    raise_fd_limit()
    mode = (
        "listener down (lease fallback)"
        if args.listener_down
        else "cross-instance (NOTIFY)"
        if cross
        else "single instance"
    )
    print(f"cancel latency, {mode}: {n} jobs in flight, cancelled one at a time")
    print(machine())
    results: dict[str, Any] = {}
    ratios = []
    with embedded_postgres() as admin_dsn, log_directory(args.logs) as logs:
        for round_ in range(1, args.repeat + 1):
            if args.repeat > 1:
                print(f"-- round {round_} of {args.repeat}")
            samples, floor = await one_round(admin_dsn, n, args, cross, lease_s, Path(logs))
            for name, values in samples.items():
                results.setdefault(name, []).extend(values)
            summary_line("runner: request -> connection closed", fmt(percentiles(samples["runner"])))
            summary_line("runner: floor, GET /jobs/{id} p50", f"{floor:.3f} ms")
            if args.listener_down:
                summary_line("lease renewal period", f"{lease_s / 3:.3f} s (RUNNER_LEASE_S={lease_s})")
            peers = {name: values for name, values in samples.items() if name != "runner"}
            for name, values in peers.items():
                summary_line(f"{name}: cancel call -> connection closed", fmt(percentiles(values)))
            if peers:
                best = min(percentiles(values)["p99"] for values in peers.values())
                ratios.append(percentiles(samples["runner"])["p99"] / best)
                summary_line("p99 ratio runner / best peer", f"{ratios[-1]:.2f}")
    if len(ratios) > 1:
        summary_line("p99 ratios per round", ", ".join(f"{r:.2f}" for r in ratios))
        summary_line("median p99 ratio", f"{statistics.median(ratios):.2f}")
        pooled = {name: percentiles(values)["p99"] for name, values in results.items()}
        best_pooled = min(p99 for name, p99 in pooled.items() if name != "runner")
        summary_line("p99 ratio, all rounds pooled", f"{pooled['runner'] / best_pooled:.2f}")
    if args.json:
        args.json.write_text(json.dumps({"mode": mode, "n": n, "samples_ms": results, "p99_ratios": ratios}))


if __name__ == "__main__":
    uvloop.run(main())  # the measuring client costs less; the same for every system measured
