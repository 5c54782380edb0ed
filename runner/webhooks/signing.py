"""Standard Webhooks signing (https://www.standardwebhooks.com): a secret `whsec_<base64>` per
wallet, and `v1,<base64 HMAC-SHA256 of "{id}.{timestamp}.{body}">`. The standard library does
it in a few lines; the `standardwebhooks` package (used by the tests' receiver) verifies it."""

from __future__ import annotations

import base64
import hashlib
import hmac
import secrets

import asyncpg

from runner.webhooks import statements

PREFIX = "whsec_"
SECRET_BYTES = 32


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
        secret: str | None = await conn.fetchval(statements.CURRENT_SECRET, owner, new_secret())
        if secret is not None:
            return secret
        # Another request created it after this statement's snapshot: read it next time round.


async def rotate_secret(pool: asyncpg.Pool, owner: str) -> str:
    """A new secret; the one it replaces still signs for statements.ROTATION_OVERLAP."""
    secret: str = await pool.fetchval(statements.ROTATE_SECRET, owner, new_secret())
    return secret


async def signing_secrets(conn: asyncpg.Pool | asyncpg.Connection, owner: str) -> list[str]:
    """Every secret a delivery is signed with now: the current one, and a rotated one still valid."""
    current = await current_secret(conn, owner)
    previous: str | None = await conn.fetchval(statements.PREVIOUS_SECRET, owner)
    return [current] if previous is None else [current, previous]
