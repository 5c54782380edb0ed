"""A pgqueuer worker whose job holds an HTTP call inside its cancellation scope."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import asyncpg
from pgqueuer import AsyncpgDriver, Queries, QueueManager
from pgqueuer.models import Job

DSN, FAKE = sys.argv[1], sys.argv[2]


async def main() -> None:
    conn = await asyncpg.connect(DSN)
    qm = QueueManager(Queries(AsyncpgDriver(conn)))
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))

    @qm.entrypoint("hold")
    async def hold(job: Job) -> None:
        with qm.get_context(job.id).cancellation:
            async with http.get(f"{FAKE}/hold", params={"key": (job.payload or b"").decode()}) as resp:
                await resp.read()

    @qm.entrypoint("noop")
    async def noop(job: Job) -> None:
        return None

    print("ready", flush=True)
    await qm.run()


if __name__ == "__main__":
    asyncio.run(main())
