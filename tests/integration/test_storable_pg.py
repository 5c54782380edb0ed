"""Postgres itself as the judge of what the parser (runner.storable) calls storable."""

from __future__ import annotations

import random
from typing import Any

import asyncpg

from runner import storable
from runner.errors import InvalidJson, Unstorable


async def test_postgres_accepts_whatever_the_parser_accepts(db: asyncpg.Connection) -> None:
    """Postgres is the judge: 2,000 seeded random texts, everything loads() accepts is stored
    as jsonb, and every string in it as text."""
    rng = random.Random(4361)
    atoms = [
        '"a\\u0000"',
        '"\\ud800"',
        '"\\udc00x"',
        '"\\ud83d\\ude00"',
        "NaN",
        "-Infinity",
        "1e309",
        "1e308",
        "-0.0",
        "123456789012345678901234567890",
        '"é"',
        '"\\u2028"',
        "true",
        "null",
        '""',
    ]
    accepted = 0
    for _ in range(2000):

        def build(depth: int) -> str:
            roll = rng.random()
            if depth > 3 or roll < 0.4:
                return rng.choice(atoms)
            if roll < 0.7:
                return "[" + ",".join(build(depth + 1) for _ in range(rng.randint(0, 3))) + "]"
            return (
                "{"
                + ",".join(
                    f"{rng.choice(atoms[:4] + atoms[10:11] + atoms[14:])}:{build(depth + 1)}"
                    for _ in range(rng.randint(0, 3))
                )
                + "}"
            )

        raw = build(0).encode()
        try:
            value = storable.loads(raw)
        except (InvalidJson, Unstorable):
            continue
        accepted += 1
        assert await db.fetchval("SELECT jsonb_typeof(jsonb_build_array($1::jsonb))", value) == "array"
        for text in _strings(value):
            assert await db.fetchval("SELECT length($1::text) >= 0", text)
    assert accepted > 100  # the generator does reach the accepting side


def _strings(value: Any) -> list[str]:
    if isinstance(value, str):
        return [value]
    if isinstance(value, list):
        return [s for v in value for s in _strings(v)]
    if isinstance(value, dict):
        return [s for k, v in value.items() for s in [k, *_strings(v)]]
    return []
