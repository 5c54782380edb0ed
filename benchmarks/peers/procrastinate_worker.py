"""A procrastinate worker whose task holds an HTTP call to the fake GPU endpoint."""

from __future__ import annotations

import asyncio
import sys

import aiohttp
import procrastinate

DSN, FAKE, CONCURRENCY = sys.argv[1], sys.argv[2], int(sys.argv[3])
app = procrastinate.App(connector=procrastinate.PsycopgConnector(conninfo=DSN))
http: aiohttp.ClientSession | None = None


@app.task(name="hold")
async def hold(key: str) -> None:
    assert http is not None
    async with http.get(f"{FAKE}/hold", params={"key": key}) as resp:
        await resp.read()


async def main() -> None:
    global http
    http = aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=0))
    async with app.open_async():
        print("ready", flush=True)
        await app.run_worker_async(concurrency=CONCURRENCY, wait=True)


if __name__ == "__main__":
    asyncio.run(main())
