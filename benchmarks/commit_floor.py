"""What one statement and one commit cost on this machine, whatever the service: a round trip
that commits nothing (and the client CPU it takes, asyncpg on uvloop), a one-row UPDATE
committed with synchronous_commit on (what a cancel does: it waits for the WAL flush) and
off, and a transaction that only sends a NOTIFY (no WAL to flush). A cancel that crosses
instances waits for a commit before its NOTIFY is delivered; the disk's fsync is in that
path.

    python -m benchmarks.commit_floor [--n 2000] [--rounds 2]
"""

from __future__ import annotations

import argparse
import time

import asyncpg
import uvloop

from benchmarks.harness import embedded_postgres, fmt, fresh_database, machine, percentiles, summary_line

CASES = {
    "SELECT 1 (a round trip, no commit)": ("on", "SELECT 1"),
    "UPDATE, synchronous_commit on": ("on", "UPDATE floor SET v = v + 1 WHERE id = 1"),
    "UPDATE, synchronous_commit off": ("off", "UPDATE floor SET v = v + 1 WHERE id = 1"),
    "NOTIFY only": ("on", "SELECT pg_notify('floor', 'x')"),
}


async def measure(admin_dsn: str, n: int, rounds: int) -> None:
    conn = await asyncpg.connect(await fresh_database(admin_dsn, "bench_commit_floor"))
    try:
        await conn.execute("CREATE TABLE floor (id int PRIMARY KEY, v bigint NOT NULL)")
        await conn.execute("INSERT INTO floor VALUES (1, 0)")
        for round_no in range(1, rounds + 1):
            print(f"-- round {round_no} of {rounds}")
            for name, (sync, statement) in CASES.items():  # alternated: the disk's mood moves
                await conn.execute(f"SET synchronous_commit = {sync}")
                samples = []
                cpu = time.process_time()
                for _ in range(n):
                    t0 = time.perf_counter()
                    await conn.execute(statement)
                    samples.append((time.perf_counter() - t0) * 1000)
                cpu = time.process_time() - cpu
                summary_line(name, fmt(percentiles(samples)))
                summary_line("  this client's CPU per statement", f"{cpu / n * 1e6:.0f} us")
    finally:
        await conn.close()


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--n", type=int, default=2000)
    parser.add_argument("--rounds", type=int, default=2)
    args = parser.parse_args()
    print("commit floor: one statement at a time on one connection, embedded Postgres")
    print(machine())
    with embedded_postgres() as admin_dsn:
        uvloop.run(measure(admin_dsn, args.n, args.rounds))


if __name__ == "__main__":
    main()
