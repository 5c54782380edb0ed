"""Standard Webhooks signing (https://www.standardwebhooks.com): a secret `whsec_<base64>` per
wallet, and `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. The standard library does
it in a few lines; the `standardwebhooks` package (used by the tests' receiver) verifies it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import asyncpg

PREFIX = "whsec_"
SECRET_BYTES = 32
ROTATION_OVERLAP = "24 hours"  # a rotated secret still signs this long (receivers catch up)


def new_secret() -> str:
    return PREFIX + base64.b64encode(secrets.token_bytes(SECRET_BYTES)).decode()


def sign(secret: str, msg_id: str, timestamp: int, body: bytes) -> str:
    key = base64.b64decode(secret.removeprefix(PREFIX))
    signed = f"{msg_id}.{timestamp}.".encode() + body
    return "v1," + base64.b64encode(hmac.new(key, signed, hashlib.sha256).digest()).decode()


def signature_header(secrets_: list[str], msg_id: str, timestamp: int, body: bytes) -> str:
    """One signature per valid secret, space-separated (the standard's rotation)."""
    return " ".join(sign(s, msg_id, timestamp, body) for s in secrets_)


async def current_secret(conn: asyncpg.Pool | asyncpg.Connection, owner: str) -> str:
    """The wallet's secret, created on first use."""
    while True:
        secret: str | None = await conn.fetchval(
            """WITH made AS (INSERT INTO webhook_secrets (owner, secret) VALUES ($1, $2)
                             ON CONFLICT (owner) DO NOTHING RETURNING secret)
               SELECT secret FROM made UNION ALL SELECT secret FROM webhook_secrets WHERE owner = $1
               LIMIT 1""",
            owner,
            new_secret(),
        )
        if secret is not None:
            return secret
        # Another request created it after this statement's snapshot: read it next time round.


async def rotate_secret(pool: asyncpg.Pool, owner: str) -> str:
    """A new secret; the one it replaces still signs for ROTATION_OVERLAP."""
    secret: str = await pool.fetchval(
        f"""INSERT INTO webhook_secrets (owner, secret) VALUES ($1, $2)
            ON CONFLICT (owner) DO UPDATE SET secret = EXCLUDED.secret,
                previous = webhook_secrets.secret, previous_until = now() + interval '{ROTATION_OVERLAP}'
            RETURNING secret""",
        owner,
        new_secret(),
    )
    return secret


async def signing_secrets(conn: asyncpg.Pool | asyncpg.Connection, owner: str) -> list[str]:
    """Every secret a delivery is signed with now: the current one, and a rotated one still valid."""
    current = await current_secret(conn, owner)
    previous: str | None = await conn.fetchval(
        "SELECT previous FROM webhook_secrets WHERE owner = $1 AND previous_until > now()", owner
    )
    return [current] if previous is None else [current, previous]
