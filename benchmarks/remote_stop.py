"""Remote stop: N jobs running at RunPod (the faithful fake of runner.fakes, on a local
socket: submit, poll status, cancel); cancel them one at a time and measure from the cancel
request leaving the client to the provider receiving `/cancel` for that job.

Ours through `POST /jobs/{id}/cancel`; procrastinate and pgqueuer each with a job that
submits, polls, and calls the same fake's `/cancel` from its own cancellation handler (what
a user of theirs would write: benchmarks/peers/runpod_jobs.py), cancelled through their own
cancel API. All three hold their N jobs at once and job i of each is cancelled in turn, the
order rotating (as cancel_latency.py does). `--cross`: our API on one instance, the worker
on another.

Our RunPod backend is configured with cancel_rate_per_s = 1000 here: the default pacing (10
per second, RunPod's own limit) is a deliberate queue that this sequential one-at-a-time
measurement would otherwise measure instead of the stop path.

Our requests go through the harness's light client (harness.RawHttp), as in
cancel_latency.py: the peers are cancelled by a function call in this process, and
aiohttp's client would add its few hundred microseconds of CPU per request to ours alone.

    python -m benchmarks.remote_stop [--n 1000] [--cross] [--poll-s 5] [--client raw|aiohttp]
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path
from typing import Any

import uvloop

from benchmarks.harness import (
    RawHttp,
    aiohttp_requests,
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
from runner.fakes import FakeProviders, FakeRunPod

PEERS = Path(__file__).resolve().parent / "peers"
CancelOne = Callable[[int], Awaitable[float]]


class RunPodFake:
    """The faithful RunPod fake (runner.fakes) on its own socket, with what this measurement
    needs: how many jobs were submitted, and when the provider received each job's /cancel.
    Its per-endpoint cancel limit is lifted (as our pacing is, above): what is measured is
    the stop path, not the limit."""

    def __init__(self) -> None:
        self.fakes = FakeProviders(runpod=FakeRunPod(cancel_limit=None))
        self.remote_ids: dict[str, str] = {}  # the job's key -> its remote id

    @property
    def url(self) -> str:
        return self.fakes.base_url

    async def start(self) -> None:
        await self.fakes.start()

    async def stop(self) -> None:
        await self.fakes.stop()

    async def wait_running(self, n: int) -> None:
        runpod = self.fakes.runpod
        await runpod.until(lambda: len(runpod.submits) >= n, 300)
        self.remote_ids = {str(job.input.get("key")): job.id for job in runpod.jobs.values()}

    async def cancel_received(self, key: str) -> float:
        """When (perf_counter) the provider received /cancel for the job with this key."""
        runpod, remote_id = self.fakes.runpod, self.remote_ids[key]
        await runpod.until(lambda: remote_id in runpod.cancel_received, 60)
        return runpod.cancel_received[remote_id]


async def _worker(
    kind: str, dsn: str, fake: RunPodFake, n: int, poll_s: float, log: Path
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, str(PEERS / "runpod_jobs.py"), kind, dsn, fake.url, str(n + 10), str(poll_s)],
        stdout=subprocess.PIPE,
        stderr=log.open("wb"),
    )
    assert proc.stdout is not None
    if (await asyncio.to_thread(proc.stdout.readline)).strip() != b"ready":
        raise RuntimeError(f"{kind} did not start: {log.read_text()[-2000:]}")
    return proc


@contextlib.asynccontextmanager
async def ours(
    admin: str, n: int, poll_s: float, cross: bool, logdir: Path, client: str
) -> AsyncIterator[CancelOne]:
    fake = RunPodFake()
    await fake.start()
    dsn = await fresh_database(admin, "bench_remote_ours")
    toml = (
        f'[backends.rp]\nkind = "runpod"\nbase_url = "{fake.url}/v2"\nendpoint_id = "ep1"\n'
        f"poll_interval_s = {poll_s}\ncancel_rate_per_s = 1000\n"
    )
    # The measuring connection idles while the peers set up (minutes on a loaded machine):
    # the server must not close it as idle meanwhile.
    env = {
        "RUNNER_BACKENDS_TOML": toml,
        "RUNNER_CONCURRENCY": str(n + 10),
        "RUNNER_DB_POOL_SIZE": "20",
        "RUNNER_READ_TIMEOUT_S": "3600",
        "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": str(n + 10),
        "RUNNER_MAX_SUBMITS_PER_MINUTE": str(100 * n + 1000),
    }
    services = []
    try:
        api = await start_service(dsn, "api" if cross else "all", env, logdir)
        services.append(api)
        if cross:
            services.append(await start_service(dsn, "worker", env, logdir))
        async with http_session() as http, contextlib.AsyncExitStack() as stack:
            headers = await sign_in(http, api.base)
            sem = asyncio.Semaphore(50)

            async def submit(i: int) -> str:
                async with (
                    sem,
                    http.post(
                        f"{api.base}/jobs",
                        headers=headers,
                        json={"executions": [{"backend": "rp", "input": {"key": f"ours-{i}"}}]},
                    ) as resp,
                ):
                    job: dict[str, Any] = await resp.json()
                    return str(job["id"])

            running = asyncio.ensure_future(fake.wait_running(n))
            ids = await asyncio.gather(*(submit(i) for i in range(n)))
            await running

            request = (
                (await stack.enter_async_context(RawHttp(api.base, headers))).request
                if client == "raw"
                else aiohttp_requests(http, api.base, headers)
            )

            async def cancel(i: int) -> float:
                send = request("POST", f"/jobs/{ids[i]}/cancel")  # built before the clock starts
                t0 = time.perf_counter()
                status, body = await send()
                assert status == 200, body
                return (await fake.cancel_received(f"ours-{i}") - t0) * 1000

            yield cancel
    finally:
        for service in services:
            service.stop()
        await fake.stop()


@contextlib.asynccontextmanager
async def procrastinate_peer(admin: str, n: int, poll_s: float, logdir: Path) -> AsyncIterator[CancelOne]:
    import procrastinate

    fake = RunPodFake()
    await fake.start()
    dsn = await fresh_database(admin, "bench_remote_procrastinate")
    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=dsn))
    async with app.open_async():
        await app.schema_manager.apply_schema_async()
        worker = await _worker("procrastinate", dsn, fake, n, poll_s, logdir / "procrastinate-remote.log")
        try:
            running = asyncio.ensure_future(fake.wait_running(n))
            deferrer = app.configure_task("runpod")
            ids = [await deferrer.defer_async(key=f"procrastinate-{i}") for i in range(n)]
            await running

            async def cancel(i: int) -> float:
                t0 = time.perf_counter()
                assert await app.job_manager.cancel_job_by_id_async(ids[i], abort=True)
                return (await fake.cancel_received(f"procrastinate-{i}") - t0) * 1000

            yield cancel
        finally:
            worker.terminate()
            worker.wait(20)
            await fake.stop()


@contextlib.asynccontextmanager
async def pgqueuer_peer(admin: str, n: int, poll_s: float, logdir: Path) -> AsyncIterator[CancelOne]:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries

    fake = RunPodFake()
    await fake.start()
    dsn = await fresh_database(admin, "bench_remote_pgqueuer")
    conn = await asyncpg.connect(dsn)
    queries = Queries(AsyncpgDriver(conn))
    await queries.install()
    worker = await _worker("pgqueuer", dsn, fake, n, poll_s, logdir / "pgqueuer-remote.log")
    try:
        running = asyncio.ensure_future(fake.wait_running(n))
        ids = await queries.enqueue(["runpod"] * n, [f"pgqueuer-{i}".encode() for i in range(n)], [0] * n)
        await running

        async def cancel(i: int) -> float:
            t0 = time.perf_counter()
            await queries.mark_job_as_cancelled([ids[i]])
            return (await fake.cancel_received(f"pgqueuer-{i}") - t0) * 1000

        yield cancel
    finally:
        worker.terminate()
        worker.wait(20)
        await conn.close()
        await fake.stop()


async def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=1000)
    parser.add_argument("--cross", action="store_true")
    parser.add_argument("--poll-s", type=float, default=5.0, help="every system's status poll interval")
    parser.add_argument(
        "--client",
        choices=("raw", "aiohttp"),
        default="raw",
        help="the measuring HTTP client for our API (raw: see harness.RawHttp)",
    )
    args = parser.parse_args()
    raise_fd_limit()
    print(
        f"remote stop: {args.n} RunPod-style jobs each, cancel request -> the provider's /cancel received"
        f"{' (API and worker on two instances)' if args.cross else ''}; {machine()}"
    )
    with embedded_postgres() as admin, tempfile.TemporaryDirectory(prefix="remote-stop-") as tmp:
        logdir = Path(tmp)
        async with contextlib.AsyncExitStack() as stack:
            systems = {
                "runner": await stack.enter_async_context(
                    ours(admin, args.n, args.poll_s, args.cross, logdir, args.client)
                ),
                "procrastinate": await stack.enter_async_context(
                    procrastinate_peer(admin, args.n, args.poll_s, logdir)
                ),
                "pgqueuer": await stack.enter_async_context(
                    pgqueuer_peer(admin, args.n, args.poll_s, logdir)
                ),
            }
            names = list(systems)
            samples: dict[str, list[float]] = {name: [] for name in names}
            for i in range(args.n):
                for k in range(len(names)):
                    name = names[(i + k) % len(names)]
                    samples[name].append(await systems[name](i))
        for name in names:
            summary_line(f"{name}: cancel -> /cancel received", fmt(percentiles(samples[name])))
        best = min(percentiles(samples[p])["p99"] for p in names[1:])
        summary_line("p99 ratio runner / best peer", f"{percentiles(samples['runner'])['p99'] / best:.2f}")


if __name__ == "__main__":
    uvloop.run(main())
