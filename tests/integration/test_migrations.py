from __future__ import annotations

import asyncio
import os
import sys

import asyncpg
import pytest

from runner.db import apply_migrations, connect, load_migrations, migrate
from runner.errors import MigrationError

EXPECTED_TABLES = {
    "jobs",
    "executions",
    "job_events",
    "idempotency_keys",
    "auth_nonces",
    "sessions",
    "auth_tickets",
    "schema_migrations",
    "workers",
    "wallet_turns",
    "cancel_pacing",
    "webhook_secrets",
    "watched",
    "fleet_gauges",
    "webhook_outbox",
}


async def _tables(conn: asyncpg.Connection) -> set[str]:
    rows = await conn.fetch("SELECT tablename FROM pg_tables WHERE schemaname = 'public'")
    return {r["tablename"] for r in rows}


async def test_migrations_apply_on_empty_database_then_are_a_noop(empty_dsn: str) -> None:
    applied = await migrate(empty_dsn)
    assert applied == [m.name for m in load_migrations()]
    assert applied == [
        "0001_init.sql",
        "0002_worker_leases.sql",
        "0003_submit_function.sql",
        "0004_terminal_guard_in_when.sql",
        "0005_final_status_rule.sql",
        "0006_executions_show_input.sql",
        "0007_fleets.sql",
        "0008_proven_stop_and_spend.sql",
        "0009_rerun.sql",
        "0010_wallet_notifications.sql",
        "0011_waiting.sql",
        "0012_providers.sql",
        "0014_webhooks.sql",
        "0015_notify_after_commit.sql",
        "0016_job_filter.sql",
        "0017_watched.sql",
        "0018_fleet_gauges.sql",
    ]
    assert await migrate(empty_dsn) == []
    conn = await connect(empty_dsn)
    try:
        assert await _tables(conn) == EXPECTED_TABLES
        count = await conn.fetchval("SELECT count(*) FROM schema_migrations")
        assert count == len(applied)
    finally:
        await conn.close()


async def test_two_migrate_processes_at_once_give_one_schema(empty_dsn: str) -> None:
    env = {**os.environ, "DATABASE_URL": empty_dsn, "RUNNER_LOG_FORMAT": "json"}
    procs = [
        await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runner",
            "migrate",
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        for _ in range(2)
    ]
    results = await asyncio.gather(*(p.communicate() for p in procs))
    for proc, (_out, err) in zip(procs, results, strict=True):
        assert proc.returncode == 0, err.decode()
    # Exactly one of the two applied the migration; the other found it done.
    applied_lines = sum(err.decode().count('"migration_applied"') for _o, err in results)
    assert applied_lines == len(load_migrations())
    conn = await connect(empty_dsn)
    try:
        assert await _tables(conn) == EXPECTED_TABLES
        rows = await conn.fetch("SELECT version FROM schema_migrations")
        assert len(rows) == len(load_migrations())
    finally:
        await conn.close()


async def test_changed_migration_is_an_error(db: asyncpg.Connection) -> None:
    await db.execute("UPDATE schema_migrations SET checksum = 'tampered' WHERE version = 1")
    with pytest.raises(MigrationError, match=r"0001_init\.sql was changed"):
        await apply_migrations(db)
    # The advisory lock is released even on error: another run can take it.
    assert await db.fetchval("SELECT pg_try_advisory_lock(1)") is True


async def test_terminal_status_is_final_in_the_database(db: asyncpg.Connection) -> None:
    await db.execute(
        "INSERT INTO jobs (id, owner, status, cancelled_at) "
        "VALUES (gen_random_uuid(), '0xabc', 'cancelled', now())"
    )
    with pytest.raises(asyncpg.CheckViolationError, match="terminal"):
        await db.execute("UPDATE jobs SET status = 'completed', cancelled_at = NULL")
    job_id = await db.fetchval("SELECT id FROM jobs")
    await db.execute(
        "INSERT INTO executions (id, job_id, position, backend, input, status) "
        "VALUES (gen_random_uuid(), $1, 0, 'demo', '{}', 'completed')",
        job_id,
    )
    with pytest.raises(asyncpg.CheckViolationError, match=r"executions .* is completed"):
        await db.execute("UPDATE executions SET status = 'running'")
    # Writes that do not move the status are not refused (recording a remote cancel's answer).
    await db.execute("UPDATE executions SET remote_cancel = 'acknowledged'")
    assert await db.fetchval("SELECT status FROM executions") == "completed"


async def test_audit_trail_is_append_only(db: asyncpg.Connection) -> None:
    job_id = await db.fetchval(
        "INSERT INTO jobs (id, owner) VALUES (gen_random_uuid(), '0xabc') RETURNING id"
    )
    await db.execute("INSERT INTO job_events (job_id, kind, actor) VALUES ($1, 'submitted', '0xabc')", job_id)
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("UPDATE job_events SET actor = 'someone else'")
    with pytest.raises(asyncpg.InsufficientPrivilegeError, match="append-only"):
        await db.execute("DELETE FROM job_events")
    assert await db.fetchval("SELECT actor FROM job_events") == "0xabc"


async def test_pool_release_sends_no_reset_round_trip(dsn: str, db: asyncpg.Connection) -> None:
    """A pool connection's last statement is the caller's own: nothing (RESET ALL, UNLISTEN *)
    is sent on release. A transaction left open is still rolled back by asyncpg."""
    from runner.db import create_pool

    pool = await create_pool(dsn, 1)
    try:
        assert await pool.fetchval("SELECT 'released-without-reset'") == "released-without-reset"
        async with pool.acquire() as conn:
            pid = conn.get_server_pid()
        assert (
            await db.fetchval("SELECT query FROM pg_stat_activity WHERE pid = $1", pid)
            == "SELECT 'released-without-reset'"
        )
        async with pool.acquire() as conn:
            await conn.execute("BEGIN")
            await conn.execute("INSERT INTO workers (id, lease_expires_at) VALUES ('left-open', now())")
        async with pool.acquire() as conn:
            assert not conn.is_in_transaction()
        assert await db.fetchval("SELECT count(*) FROM workers WHERE id = 'left-open'") == 0
    finally:
        await pool.close()
