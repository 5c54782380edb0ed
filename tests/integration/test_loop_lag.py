"""No request or reply holds the event loop: whatever a body or a backend's answer holds,
the loop goes on serving (measured here by a ticker on the same loop as the service)."""

from __future__ import annotations

import asyncio
import contextlib
import json
from collections.abc import AsyncIterator

import aiohttp

from runner.fakes import FakeProviders
from runner.runtime import Runtime
from tests.client import Api

# The target is 50 ms (benchmarks/hostile.py measures it); this bound leaves room for a
# loaded 2-core machine. The faults it guards against held the loop for seconds to hours.
MAX_LAG_S = 0.5
ONE_MIB = 1024 * 1024


@contextlib.asynccontextmanager
async def loop_lag() -> AsyncIterator[list[float]]:
    """The longest time the loop was held while the block ran (a 5 ms ticker's lateness)."""
    worst = [0.0]
    loop = asyncio.get_running_loop()

    async def tick() -> None:
        while True:
            began = loop.time()
            await asyncio.sleep(0.005)
            worst[0] = max(worst[0], loop.time() - began - 0.005)

    ticker = asyncio.create_task(tick(), name="lag-ticker")
    await asyncio.sleep(0)
    try:
        yield worst
    finally:
        ticker.cancel()
        await asyncio.gather(ticker, return_exceptions=True)


def escaped_quotes(size: int) -> bytes:
    """One quote and then escaped quotes: a string that never closes (JSON inside JSON looks
    much like it)."""
    return b'"' + b'\\"' * ((size - 1) // 2)


async def _post(
    http: aiohttp.ClientSession, url: str, body: bytes, headers: dict[str, str]
) -> tuple[int, dict[str, str]]:
    async with http.post(
        url,
        data=body,
        headers={"Content-Type": "application/json", **headers},
        timeout=aiohttp.ClientTimeout(total=60),
    ) as resp:
        return resp.status, await resp.json()


async def test_a_mebibyte_of_escaped_quotes_before_sign_in_does_not_hold_the_loop(
    service: Runtime, base_url: str, http: aiohttp.ClientSession
) -> None:
    body = escaped_quotes(ONE_MIB - 64)
    for path, headers in (("/auth/login", {}), ("/jobs", {"Authorization": "Bearer nobody"})):
        async with loop_lag() as worst:
            status, reply = await _post(http, base_url + path, body, headers)
        assert status in (400, 401), reply
        assert worst[0] < MAX_LAG_S, f"{path}: the loop was held {worst[0]:.3f} s"


async def test_an_escaped_string_inside_a_valid_body_is_parsed_without_holding_the_loop(
    api: Api, base_url: str, http: aiohttp.ClientSession
) -> None:
    """Honest data can look like the attack: JSON inside JSON strings."""
    inner = json.dumps({"prompt": 'a "quoted" word ' * 24_000})
    body = json.dumps({"executions": [{"backend": "demo", "input": {"seconds": 0, "doc": inner}}]}).encode()
    assert len(body) > 500_000
    async with loop_lag() as worst:
        status, reply = await _post(http, base_url + "/jobs", body, api.headers)
    assert status == 201, reply
    assert worst[0] < MAX_LAG_S, f"the loop was held {worst[0]:.3f} s"


async def test_concurrent_mebibyte_submits_of_tiny_items_do_not_hold_the_loop(
    api: Api, base_url: str, http: aiohttp.ClientSession
) -> None:
    items = (ONE_MIB - 200) // 2
    body = (
        b'{"executions": [{"backend": "demo", "input": {"seconds": 0, "a": ['
        + b"0," * (items - 1)
        + b"0]}}]}"
    )
    assert len(body) < ONE_MIB
    async with loop_lag() as worst:
        answers = await asyncio.gather(
            *(_post(http, base_url + "/jobs", body, api.headers) for _ in range(10))
        )
    assert [status for status, _ in answers] == [201] * 10, [r for _, r in answers][:1]
    assert worst[0] < MAX_LAG_S, f"the loop was held {worst[0]:.3f} s"


async def test_a_reply_of_escaped_quotes_fails_its_execution_without_holding_the_loop(
    api: Api, fake_gpu: FakeProviders
) -> None:
    poison = escaped_quotes(ONE_MIB // 3).decode("latin-1")  # doubled by JSON escaping on the way in
    async with loop_lag() as worst:
        job = await api.submit({"backend": "plain", "input": {"mode": "raw", "raw": poison}})
        done = await api.until(job["id"], "failed", "completed", timeout=60)
    assert done["status"] == "failed", done
    assert "non-JSON" in done["executions"][0]["error"], done["executions"][0]["error"][:200]
    assert done["executions"][0]["attempts"] == 1
    assert worst[0] < MAX_LAG_S, f"the loop was held {worst[0]:.3f} s"


# -- replies are read only up to max_output_bytes, counted once inflated ------------------------------


async def test_an_endless_reply_fails_its_execution_once_the_cap_is_read(
    api: Api, fake_gpu: FakeProviders
) -> None:
    job = await api.submit({"backend": "capped", "input": {"mode": "endless"}})
    done = await api.until(job["id"], "failed", "completed", timeout=60)
    execution = done["executions"][0]
    assert done["status"] == "failed"
    assert "larger than 1048576 bytes" in execution["error"], execution["error"]
    assert execution["attempts"] == 1  # never sent again: the work was done
    sent = fake_gpu.web.endless_sent[execution["id"]]
    assert sent < 64 << 20, f"the runner went on reading: {sent} bytes"


async def test_a_gzip_bomb_fails_its_execution_at_the_cap_counted_inflated(
    api: Api, fake_gpu: FakeProviders
) -> None:
    job = await api.submit({"backend": "capped", "input": {"mode": "gzip_bomb", "mib": 64}})
    done = await api.until(job["id"], "failed", "completed", timeout=60)
    execution = done["executions"][0]
    assert done["status"] == "failed"
    assert "larger than 1048576 bytes" in execution["error"], execution["error"]
