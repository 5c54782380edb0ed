"""Scale: N (default 10,000) jobs in flight on one instance, each holding an HTTP call to the
fake GPU endpoint. Prints the service's peak RSS, then sends POST /jobs/cancel and measures
the time until the endpoint has seen every connection close.

    python -m benchmarks.scale [--n 10000]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import tempfile
import time
from pathlib import Path

import uvloop

from benchmarks.harness import (
    FakeGpu,
    cpu_seconds,
    embedded_postgres,
    fresh_database,
    http_session,
    machine,
    raise_fd_limit,
    sign_in,
    start_py_spy,
    start_service,
    stop_recorder,
    summary_line,
)


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=10_000)
    parser.add_argument(
        "--profile", metavar="FILE", help="record the service with py-spy during the cancel (speedscope JSON)"
    )
    args = parser.parse_args()
    n = args.n
    raise_fd_limit()
    print(f"scale: {n} jobs in flight on one instance, then cancel-all")
    print(machine())
    with embedded_postgres() as admin_dsn, tempfile.TemporaryDirectory() as logs:
        fake = FakeGpu()
        await fake.start()
        dsn = await fresh_database(admin_dsn, "bench_scale")
        env = {
            "RUNNER_CONCURRENCY": str(n + 100),
            "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": str(n + 100),
            "RUNNER_MAX_SUBMITS_PER_MINUTE": str(100 * n + 1000),
            "RUNNER_SHUTDOWN_GRACE_S": "0",
            "RUNNER_BACKENDS_TOML": f'[backends.gpu]\nkind = "http"\nurl = "{fake.url}/hold"\n',
        }
        service = await start_service(dsn, "all", env, Path(logs))
        try:
            summary_line("service RSS at start", f"{service.rss_peak_mb():.0f} MB")
            async with http_session() as http:
                headers = await sign_in(http, service.base)
                started = time.perf_counter()
                sem = asyncio.Semaphore(64)

                async def submit(i: int) -> None:
                    async with (
                        sem,
                        http.post(
                            f"{service.base}/jobs",
                            headers=headers,
                            json={"executions": [{"backend": "gpu", "input": {"i": i}}]},
                        ) as resp,
                    ):
                        assert resp.status == 201, await resp.text()

                await asyncio.gather(*(submit(i) for i in range(n)))
                await fake.wait_open(n, timeout=600)
                summary_line("time to submit and start all", f"{time.perf_counter() - started:.1f} s")
                summary_line("service peak RSS with all in flight", f"{service.rss_peak_mb():.0f} MB")
                closes = [fake.close_of(key) for key in list(fake.opened)]
                spy = start_py_spy(service.proc.pid, args.profile) if args.profile else None
                cpu_before = cpu_seconds(service.proc.pid)
                own_before = time.process_time()
                t0 = time.perf_counter()
                async with http.post(
                    f"{service.base}/jobs/cancel", headers=headers, json={"reason": "scale benchmark"}
                ) as resp:
                    body = await resp.json()
                answered = time.perf_counter() - t0
                done = await asyncio.wait_for(asyncio.gather(*closes), 120)
                last = max(done) - t0
                cpu_after = cpu_seconds(service.proc.pid)
                own_cpu = time.process_time() - own_before
                stop_recorder(spy)
                summary_line(
                    "POST /jobs/cancel answered after", f"{answered * 1000:.0f} ms ({body['count']} jobs)"
                )
                summary_line("every connection closed after", f"{last * 1000:.0f} ms")
                first = min(done) - t0
                summary_line("first connection closed after", f"{first * 1000:.0f} ms")
                summary_line("service peak RSS overall", f"{service.rss_peak_mb():.0f} MB")
                summary_line(
                    "CPU during cancel-all: service",
                    f"{cpu_after[0] - cpu_before[0]:.2f} s "
                    f"({(cpu_after[0] - cpu_before[0]) / n * 1e6:.0f} us per job)",
                )
                summary_line(
                    "CPU during cancel-all: all Postgres processes", f"{cpu_after[1] - cpu_before[1]:.2f} s"
                )
                summary_line("CPU during cancel-all: this client + fake GPU", f"{own_cpu:.2f} s")
                for line in service.log.read_text().splitlines():
                    if '"jobs_cancelled"' in line:
                        event = json.loads(line)
                        summary_line(
                            "  inside: first chunk committed, tasks signalled",
                            f"{event['first_signal_ms']} ms",
                        )
                        summary_line("  inside: every chunk committed", f"{event['total_ms']} ms")
                        summary_line(
                            "  inside: waiting for statements", f"{event['waited_for_statements_ms']} ms"
                        )
        finally:
            service.stop()
            await fake.stop()


if __name__ == "__main__":
    uvloop.run(main())  # the measuring client costs less; the same for every system measured
