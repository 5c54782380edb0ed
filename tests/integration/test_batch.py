"""Batching of writes (the flush here is a plain function: what is tested is when items are
flushed and with which others; the statements themselves are tested against Postgres
through the worker)."""

from __future__ import annotations

import asyncio

import asyncpg

from runner.db.batch import Batcher


class Recorder:
    def __init__(self) -> None:
        self.batches: list[list[int]] = []
        self.flushed = asyncio.Event()

    async def flush(self, items: list[int]) -> list[int]:
        self.batches.append(items)
        self.flushed.set()
        return [item * 10 for item in items]


async def test_without_linger_items_of_one_loop_turn_share_a_flush() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher("t", rec.flush)
    assert await asyncio.gather(*(batcher.submit(i) for i in range(3))) == [0, 10, 20]
    assert rec.batches == [[0, 1, 2]]


async def test_lingering_items_wait_for_each_other_until_the_interval_ends() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher("t", rec.flush, linger_s=0.2)
    first = batcher.put(1)
    for _ in range(5):
        await asyncio.sleep(0)  # loop turns pass; the first item still waits
    second = batcher.put(2)
    assert rec.batches == [] and not first.done()
    assert await asyncio.wait_for(asyncio.gather(first, second), 5) == [10, 20]
    assert rec.batches == [[1, 2]]


async def test_an_urgent_item_takes_the_lingering_ones_with_it_at_once() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher("t", rec.flush, linger_s=60)
    lingering = batcher.put(1)
    assert await asyncio.wait_for(batcher.put(2, urgent=True), 5) == 20
    assert lingering.result() == 10 and rec.batches == [[1, 2]]


async def test_a_full_batch_and_flush_soon_and_close_do_not_wait_for_the_interval() -> None:
    rec = Recorder()
    batcher: Batcher[int, int] = Batcher("t", rec.flush, linger_s=60, max_items=2)
    await asyncio.wait_for(asyncio.gather(batcher.put(1), batcher.put(2)), 5)
    hurried = batcher.put(3)
    batcher.flush_soon()
    assert await asyncio.wait_for(hurried, 5) == 30
    left = batcher.put(4)
    await asyncio.wait_for(batcher.close(), 5)
    assert left.result() == 40
    assert rec.batches == [[1, 2], [3], [4]]


async def test_a_permanent_failure_is_split_so_only_the_bad_item_fails(db: asyncpg.Connection) -> None:
    """A data error in one item (a real Postgres refusal): the items are written apart, and
    only the bad one fails."""
    batches: list[list[str]] = []

    async def flush(items: list[str]) -> list[int]:
        batches.append(items)
        return [r["n"] for r in await db.fetch("SELECT v::int AS n FROM unnest($1::text[]) v", items)]

    batcher: Batcher[str, int] = Batcher("t", flush)
    results = await asyncio.gather(*(batcher.submit(v) for v in ["1", "two", "3"]), return_exceptions=True)
    assert results[0] == 1 and results[2] == 3
    assert isinstance(results[1], asyncpg.InvalidTextRepresentationError)
    assert batches == [["1", "two", "3"], ["1"], ["two"], ["3"]]


async def test_a_transient_failure_is_retried_until_it_goes_away() -> None:
    failures = [
        asyncpg.DeadlockDetectedError("deadlock"),
        ConnectionRefusedError("down"),
        asyncpg.CannotConnectNowError("starting up"),
    ]
    rec = Recorder()

    async def flush(items: list[int]) -> list[int]:
        if failures:
            raise failures.pop(0)
        return await rec.flush(items)

    batcher: Batcher[int, int] = Batcher("t", flush)
    assert await asyncio.wait_for(asyncio.gather(batcher.submit(1), batcher.submit(2)), 10) == [10, 20]
    assert rec.batches == [[1, 2]] and not failures
