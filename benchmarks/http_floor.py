"""What one HTTP round trip costs on this machine, whatever the service: an aiohttp server
(on uvloop, as ours) answering a constant JSON body, called one request at a time by an
aiohttp client. The part of our cancel latency that a queue library called directly does
not pay.

    python -m benchmarks.http_floor [--n 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import subprocess
import sys
import time

import aiohttp
import uvloop
from aiohttp import web

from benchmarks.harness import cpu_seconds, fmt, free_port, machine, percentiles, summary_line


async def serve(port: int) -> None:
    async def constant(_request: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    app = web.Application()
    app.router.add_get("/constant", constant)
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    await asyncio.Event().wait()


async def measure(n: int) -> None:
    port = free_port()
    server = subprocess.Popen(
        [os.path.abspath(sys.executable), "-m", "benchmarks.http_floor", "--serve", str(port)]
    )
    try:
        url = f"http://127.0.0.1:{port}/constant"
        async with aiohttp.ClientSession() as http:
            for _ in range(200):
                try:
                    async with http.get(url) as resp:
                        await resp.read()
                    break
                except aiohttp.ClientError:
                    await asyncio.sleep(0.05)
            samples = []
            cpu_before = cpu_seconds(server.pid)[0]
            for _ in range(n):
                t0 = time.perf_counter()
                async with http.get(url) as resp:
                    await resp.read()
                samples.append((time.perf_counter() - t0) * 1000)
            cpu = cpu_seconds(server.pid)[0] - cpu_before
        summary_line("constant GET, round trip", fmt(percentiles(samples)))
        summary_line("server CPU per request", f"{cpu / n * 1e6:.0f} us")
    finally:
        server.terminate()
        server.wait(10)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=3000)
    parser.add_argument("--serve", type=int, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        uvloop.run(serve(args.serve))
        return
    print("HTTP floor: one aiohttp request at a time to a constant handler")
    print(machine())
    uvloop.run(measure(args.n))


if __name__ == "__main__":
    main()
