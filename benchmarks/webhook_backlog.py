"""A webhook receiver down for a day: what the outbox's backlog costs the statements the
webhook sender runs after every attempt on every worker (the next due row), and the
housekeeper's count of it (runner_webhooks_pending), at several backlog sizes.

Each job of the backlog has two events pending: its first one retried with backoff (due in
ten minutes) and its second waiting behind it (due now, but not claimable before the first).

    python -m benchmarks.webhook_backlog [--sizes 0,10000,100000] [--n 200]
"""

from __future__ import annotations

import argparse
import time

import asyncpg
import uvloop

from benchmarks.harness import embedded_postgres, fmt, fresh_database, machine, percentiles, summary_line
from runner.db.migrations import migrate
from runner.webhooks import statements
from runner.worker import store

FILL = """
WITH j AS (
    INSERT INTO jobs (id, owner, status, finished_at, webhook, webhook_events)
    SELECT gen_random_uuid(), '0x' || lpad(to_hex(i % 1000), 40, '0'), 'completed', now(),
           'https://receiver.example/hook', ARRAY['started', 'completed']
    FROM generate_series(1, $1) i
    RETURNING id)
INSERT INTO webhook_outbox (job_id, event, url, attempts, next_attempt_at)
SELECT id, e.event, 'https://receiver.example/hook', e.attempts, now() + e.due
FROM j, (VALUES ('started', 5, interval '10 minutes'), ('completed', 0, interval '0')) AS e(event, attempts, due)
"""


async def measure(admin_dsn: str, sizes: list[int], n: int) -> None:
    dsn = await fresh_database(admin_dsn, "bench_webhook_backlog")
    await migrate(dsn)
    conn = await asyncpg.connect(dsn)
    try:
        filled = 0
        for size in sizes:
            await conn.execute(FILL, size - filled)
            filled = size
            await conn.execute("VACUUM ANALYZE webhook_outbox")
            pending = await conn.fetchval(store.WEBHOOKS_PENDING)
            for name, statement in (
                ("next due (the sender, after each attempt)", statements.NEXT_DUE),
                ("pending count (the housekeeper, every round)", store.WEBHOOKS_PENDING),
            ):
                samples = []
                for _ in range(n):
                    t0 = time.perf_counter()
                    await conn.fetch(statement)
                    samples.append((time.perf_counter() - t0) * 1000)
                summary_line(f"{size} jobs, {pending} pending: {name}", fmt(percentiles(samples)))
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--sizes", default="0,10000,100000")
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    print("webhook backlog: the sender's and the housekeeper's statements, one connection")
    print(machine())
    with embedded_postgres() as admin_dsn:
        uvloop.run(measure(admin_dsn, [int(s) for s in args.sizes.split(",")], args.n))


if __name__ == "__main__":
    main()
