"""Peer workers whose job drives a RunPod-style API the way a user of theirs would write it:
submit, poll, and -- in its own cancellation handler -- POST the provider's /cancel.

    python runpod_jobs.py procrastinate|pgqueuer DSN FAKE_URL CONCURRENCY POLL_S
"""

from __future__ import annotations

import asyncio
import sys

import aiohttp

KIND, DSN, FAKE, CONCURRENCY, POLL_S = (
    sys.argv[1],
    sys.argv[2],
    sys.argv[3],
    int(sys.argv[4]),
    float(sys.argv[5]),
)
http: aiohttp.ClientSession | None = None


async def run_at_runpod(key: str) -> None:
    """The job: submit, poll until done; cancelled, tell RunPod to stop (shielded)."""
    assert http is not None
    async with http.post(f"{FAKE}/v2/ep1/run", json={"input": {"key": key}}) as resp:
        remote_id = (await resp.json())["id"]
    try:
        while True:
            async with http.get(f"{FAKE}/v2/ep1/status/{remote_id}") as resp:
                # Still queued or running (RUNNING is in runpod/docs job-states.mdx too).
                if (await resp.json())["status"] not in ("IN_QUEUE", "IN_PROGRESS", "RUNNING"):
                    return
            await asyncio.sleep(POLL_S)
    except asyncio.CancelledError:
        await asyncio.shield(_cancel(remote_id))
        raise


async def _cancel(remote_id: str) -> None:
    assert http is not None
    async with http.post(f"{FAKE}/v2/ep1/cancel/{remote_id}") as resp:
        await resp.read()


async def procrastinate_main() -> None:
    import procrastinate

    app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))

    @app.task(name="runpod")
    async def runpod(key: str) -> None:
        await run_at_runpod(key)

    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(concurrency=CONCURRENCY, wait=True)


async def pgqueuer_main() -> None:
    import asyncpg
    from pgqueuer import AsyncpgDriver, Queries, QueueManager
    from pgqueuer.models import Job

    conn = await asyncpg.connect(DSN)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))

    @qm.entrypoint("runpod", concurrency_limit=CONCURRENCY)
    async def runpod(job: Job) -> None:
        with qm.get_context(job.id).cancellation:
            await run_at_runpod((job.payload or b"").decode())

    print("ready", flush=True)
    await qm.run()


async def main() -> None:
    global http
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    await (procrastinate_main() if KIND == "procrastinate" else pgqueuer_main())


if __name__ == "__main__":
    asyncio.run(main())
