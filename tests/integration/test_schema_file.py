"""migrations/schema.sql is what the migrations produce: a fresh database, migrated and
dumped, matches the checked-in file line for line."""

from __future__ import annotations

import difflib
from pathlib import Path

import pytest

from runner.db.migrations import load_migrations
from runner.db.schema import migrated_schema

SCHEMA_FILE = Path(__file__).resolve().parents[2] / "migrations" / "schema.sql"


async def test_schema_sql_is_what_the_migrations_produce(empty_dsn: str) -> None:
    produced = await migrated_schema(empty_dsn)
    checked_in = SCHEMA_FILE.read_text()
    diff = "".join(
        difflib.unified_diff(
            checked_in.splitlines(keepends=True),
            produced.splitlines(keepends=True),
            fromfile="migrations/schema.sql",
            tofile="after all migrations",
        )
    )
    if diff:
        pytest.fail(
            "migrations/schema.sql disagrees with the migrations; regenerate it with "
            "`python -m runner.db.schema > migrations/schema.sql`\n" + diff,
            pytrace=False,
        )


def test_schema_sql_is_not_a_migration() -> None:
    assert "schema.sql" not in {m.name for m in load_migrations()}
    assert all(m.name[:4].isdigit() for m in load_migrations())
