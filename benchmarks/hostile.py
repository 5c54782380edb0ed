"""Hostile round 3, re-measured (issue #31): how long attack bodies hold a real `runner serve`'s
event loop, its memory under big and endless replies, and how many event streams one wallet
gets. Every request goes to 127.0.0.1.

    python benchmarks/hostile.py [--keep-logs DIR]

Loop lag is read two ways: the service's own gauge (runner_event_loop_lag_max_seconds, a
100 ms timer's lateness) and, from outside, the slowest GET /healthz answered while the attack
was under way (a probe every 10 ms).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import re
import sys
import time
import zlib
from pathlib import Path
from typing import Any

import aiohttp
from aiohttp import web

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from benchmarks.harness import (
    embedded_postgres,
    fresh_database,
    log_directory,
    machine,
    sign_in,
    start_service,
)

ONE_MIB = 1 << 20


async def attacker_backend() -> tuple[web.AppRunner, str]:
    """A backend whose replies are the attack: endless, 1 GB, a gzip bomb, escaped quotes."""
    bomb = zlib.compressobj(9, zlib.DEFLATED, 31)
    bomb_body = bomb.compress(b"[" + b"0," * (512 * ONE_MIB)) + bomb.compress(b"0]") + bomb.flush()

    async def run(request: web.Request) -> web.StreamResponse:
        mode = (await request.json())["mode"]
        if mode == "quotes":
            return web.Response(body=b'"' + b'\\"' * (ONE_MIB // 2), content_type="application/json")
        if mode == "none":
            return web.json_response({"ok": True})
        if mode == "bomb":
            return web.Response(
                body=bomb_body, headers={"Content-Type": "application/json", "Content-Encoding": "gzip"}
            )
        stream = web.StreamResponse(headers={"Content-Type": "application/json"})
        await stream.prepare(request)
        chunk = b"7," * (ONE_MIB // 2)
        await stream.write(b"[")
        sent = 0
        while mode == "endless" or sent < 1024 * ONE_MIB:  # "gigabyte": 1 GiB, then the end
            await stream.write(chunk)
            sent += len(chunk)
        await stream.write(b"7]")
        return stream

    app = web.Application()
    app.router.add_post("/run", run)
    runner = web.AppRunner(app)
    await runner.setup()
    site = web.TCPSite(runner, "127.0.0.1", 0)
    await site.start()
    port = runner.addresses[0][1]
    return runner, f"http://127.0.0.1:{port}"


async def lag_max(http: aiohttp.ClientSession, base: str) -> float:
    async with http.get(base + "/metrics") as resp:
        text = await resp.text()
    found = re.search(r"^runner_event_loop_lag_max_seconds (\S+)$", text, re.M)
    return float(found.group(1)) if found else float("nan")


@contextlib.asynccontextmanager
async def probing(http: aiohttp.ClientSession, base: str) -> Any:
    """The slowest /healthz while the block runs (ms)."""
    worst = [0.0]
    stop = asyncio.Event()

    async def probe() -> None:
        while not stop.is_set():
            began = time.perf_counter()
            async with http.get(base + "/healthz") as resp:
                await resp.read()
            worst[0] = max(worst[0], (time.perf_counter() - began) * 1000)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.01)

    task = asyncio.create_task(probe())
    try:
        yield worst
    finally:
        stop.set()
        await task


async def main(keep: Path | None) -> None:
    print(f"# hostile.py -- {machine()}")
    attacker, attacker_url = await attacker_backend()
    with embedded_postgres() as admin_dsn, log_directory(keep) as logdir:
        dsn = await fresh_database(admin_dsn, "bench_hostile")
        env = {
            "RUNNER_BACKENDS_TOML": f'[backends.evil]\nkind = "http"\nurl = "{attacker_url}/run"\n'
            "max_attempts = 1\n",
            "RUNNER_MAX_SUBMITS_PER_MINUTE": "100000",
        }
        service = await start_service(dsn, "all", env, Path(logdir))
        try:
            async with aiohttp.ClientSession() as http:
                base = service.base
                headers = await sign_in(http, base)
                quotes = b'"' + b'\\"' * ((ONE_MIB - 64) // 2)
                tiny = (
                    b'{"executions": [{"backend": "evil", "input": {"mode": "none", "a": ['
                    + b"0," * ((ONE_MIB - 200) // 2 - 1)
                    + b"0]}}]}"
                )
                inner = json.dumps({"prompt": 'a "quoted" word ' * 30_000})
                nested = json.dumps(
                    {"executions": [{"backend": "evil", "input": {"mode": "none", "doc": inner}}]}
                )
                attacks = [
                    ('1 MiB of \\" to /auth/login, no session', "/auth/login", quotes, {}, 1),
                    ('1 MiB of \\" to /jobs, a bad token', "/jobs", quotes, {"Authorization": "Bearer x"}, 1),
                    ("20 concurrent 1 MiB submits of tiny items", "/jobs", tiny, headers, 20),
                    (
                        "20 concurrent ~1 MiB submits of JSON inside JSON",
                        "/jobs",
                        nested.encode(),
                        headers,
                        20,
                    ),
                ]
                print("\n## event-loop lag under attack bodies (target: under 50 ms)")
                print("| attack | answers | slowest /healthz meanwhile | service's max lag so far |")
                print("| --- | --- | --- | --- |")
                for name, path, body, hdrs, count in attacks:
                    async with probing(http, base) as worst:

                        async def send(
                            path: str = path, body: bytes = body, hdrs: dict[str, str] = hdrs
                        ) -> int:
                            async with http.post(
                                base + path, data=body, headers={"Content-Type": "application/json", **hdrs}
                            ) as resp:
                                await resp.read()
                                return resp.status

                        statuses = await asyncio.gather(*(send() for _ in range(count)))
                    print(
                        f"| {name} | {sorted(set(statuses))} | {worst[0]:.1f} ms | "
                        f"{await lag_max(http, base) * 1000:.1f} ms |"
                    )
                # The service cancels what it started above (the submitted jobs hold nothing).
                async with http.post(base + "/jobs/cancel", headers=headers, json={}) as resp:
                    await resp.read()

                print("\n## memory under big replies (max_output_bytes 16 MiB)")
                print("| reply | execution | error | service RSS peak |")
                print("| --- | --- | --- | --- |")
                for mode in ("quotes", "gigabyte", "endless", "bomb"):
                    async with probing(http, base) as worst:
                        async with http.post(
                            base + "/jobs",
                            headers=headers,
                            json={"executions": [{"backend": "evil", "input": {"mode": mode}}]},
                        ) as resp:
                            job = await resp.json()
                        while True:
                            async with http.get(f"{base}/jobs/{job['id']}", headers=headers) as resp:
                                job = await resp.json()
                            if job["status"] in ("completed", "failed", "cancelled"):
                                break
                            await asyncio.sleep(0.1)
                    error = (job["executions"][0]["error"] or "")[:70]
                    print(
                        f"| {mode} | {job['status']} | {error} | {service.rss_peak_mb():.0f} MiB "
                        f"(slowest /healthz {worst[0]:.1f} ms) |"
                    )

                print("\n## event streams of one wallet")
                opened = []
                refused = None
                async with contextlib.AsyncExitStack() as stack:
                    for _ in range(100):
                        resp = await stack.enter_async_context(http.get(base + "/events", headers=headers))
                        if resp.status != 200:
                            refused = (resp.status, (await resp.json())["error"])
                            break
                        opened.append(resp)
                    print(f"streams opened: {len(opened)}; the next: {refused}")
                print(
                    f"\nthe service's max event-loop lag over the whole run: "
                    f"{await lag_max(http, base) * 1000:.1f} ms; RSS peak {service.rss_peak_mb():.0f} MiB"
                )
        finally:
            service.stop()
    await attacker.cleanup()


if __name__ == "__main__":
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--keep-logs", type=Path, default=None)
    asyncio.run(main(parser.parse_args().keep_logs))
