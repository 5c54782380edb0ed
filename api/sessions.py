"""Wallet sessions: nonces, tokens and tickets, stored only as hashes.

Looking a token up is on every request's path, so results are cached in memory for less
than a second; a logout also NOTIFYs every instance to drop the entry at once. A token in
use is re-read in the background once its entry is half-way to expiry, so requests rarely
wait for the database; an entry is never trusted longer than CACHE_TTL_S after the look-up
that produced it began.
"""

from __future__ import annotations

import asyncio
import hashlib
import secrets
import string
import time
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime

import asyncpg
import structlog

from api import statements
from runner.config import Settings
from runner.db.notify import AUTH

log = structlog.get_logger("api.sessions")

NONCE_TTL_S = 600
TICKET_TTL_S = 60
CACHE_TTL_S = 0.8  # a revoked token is refused everywhere within a second, even unnotified
REFRESH_AFTER_S = 0.4
CACHE_MAX = 50_000
_ALPHANUMERIC = string.ascii_letters + string.digits


def token_hash(token: str) -> bytes:
    # A header or cookie of bytes that are not UTF-8 reaches us with surrogates in it: it
    # hashes to a token nobody holds (401), never to an error.
    return hashlib.sha256(token.encode("utf-8", "surrogatepass")).digest()


@dataclass(frozen=True, slots=True)
class Identity:
    address: str
    admin: bool
    expires_at: datetime
    token_hash: bytes


@dataclass(frozen=True, slots=True)
class _Cached:
    identity: Identity
    valid_until: float  # time.monotonic()
    refresh_after: float


class Sessions:
    def __init__(self, pool: asyncpg.Pool, settings: Settings) -> None:
        self.pool = pool
        self.settings = settings
        self._cache: dict[bytes, _Cached] = {}
        self._refreshing: dict[bytes, asyncio.Task[None]] = {}
        # Bumped by every eviction: a look-up that began before one is not cached.
        self._generation = 0
        # Every token this instance has verified and not seen revoked, until it expires:
        # consulted only while Postgres cannot be reached, for a cancel (remembered()).
        self._verified: dict[bytes, Identity] = {}
        self.on_revoked: list[Callable[[bytes], None]] = []  # told of each revoked token hash

    def _identity(self, address: str, expires_at: datetime, hashed: bytes) -> Identity:
        return Identity(address, address in self.settings.admin_wallets, expires_at, hashed)

    async def issue_nonce(self) -> tuple[str, datetime]:
        nonce = "".join(secrets.choice(_ALPHANUMERIC) for _ in range(17))  # ~101 bits
        expires_at: datetime = await self.pool.fetchval(statements.ISSUE_NONCE, nonce, NONCE_TTL_S)
        return nonce, expires_at

    async def login(self, nonce: str, address: str) -> tuple[str, datetime] | None:
        """Consume the nonce and open a session, atomically; None if the nonce is not valid."""
        token = secrets.token_urlsafe(32)
        expires_at: datetime | None = await self.pool.fetchval(
            statements.LOGIN,
            nonce,
            token_hash(token),
            address,
            self.settings.session_ttl_s,
        )
        return None if expires_at is None else (token, expires_at)

    async def authenticate(self, token: str) -> Identity | None:
        return await self.by_hash(token_hash(token))

    async def by_hash(self, hashed: bytes) -> Identity | None:
        """The live session of a token's hash (cached as authenticate's), or None."""
        now = time.monotonic()
        cached = self._cache.get(hashed)
        if cached is not None and cached.valid_until > now:
            if cached.refresh_after <= now and hashed not in self._refreshing:
                self._refresh_in_background(hashed)
            return cached.identity
        return await self._look_up(hashed)

    async def _look_up(self, hashed: bytes) -> Identity | None:
        began = time.monotonic()
        generation = self._generation
        row = await self.pool.fetchrow(statements.SESSION, hashed)
        if row is None:
            self._cache.pop(hashed, None)
            return None
        identity = self._identity(row["address"], row["expires_at"], hashed)
        if generation == self._generation:
            self._remember(identity)
            if len(self._cache) >= CACHE_MAX:
                self._cache = {k: v for k, v in self._cache.items() if v.valid_until > began}
            # Never cached past the session's own expiry.
            ttl = min(CACHE_TTL_S, (row["expires_at"] - datetime.now(UTC)).total_seconds())
            self._cache[hashed] = _Cached(identity, began + ttl, began + min(REFRESH_AFTER_S, ttl))
        return identity

    def _remember(self, identity: Identity) -> None:
        if identity.token_hash not in self._verified and len(self._verified) >= CACHE_MAX:
            now = datetime.now(UTC)
            self._verified = {k: v for k, v in self._verified.items() if v.expires_at > now}
            if len(self._verified) >= CACHE_MAX:
                self._verified.pop(next(iter(self._verified)))
        self._verified[identity.token_hash] = identity

    def remembered(self, token: str) -> Identity | None:
        """The session of a token this instance verified earlier and has not seen revoked,
        if it has not expired -- for a cancel while Postgres cannot be reached, never else."""
        identity = self._verified.get(token_hash(token))
        if identity is None or identity.expires_at <= datetime.now(UTC):
            return None
        return identity

    def _refresh_in_background(self, hashed: bytes) -> None:
        task = asyncio.get_running_loop().create_task(self._refresh(hashed), name="session_refresh")
        self._refreshing[hashed] = task
        task.add_done_callback(lambda _: self._refreshing.pop(hashed, None))

    async def _refresh(self, hashed: bytes) -> None:
        try:
            await self._look_up(hashed)
        except (OSError, asyncpg.PostgresError, asyncpg.InterfaceError) as exc:
            # The entry still expires on time; the request after that looks up itself.
            log.warning("session_refresh_failed", error=repr(exc))

    async def close(self) -> None:
        """Stop the background refreshes (the API is stopping, before the pool closes)."""
        tasks = list(self._refreshing.values())
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    async def revoke(self, identity: Identity) -> None:
        self._generation += 1
        self._cache.pop(identity.token_hash, None)
        self._verified.pop(identity.token_hash, None)
        await self.pool.execute(
            statements.REVOKE,
            identity.token_hash,
            AUTH,
            identity.token_hash.hex(),
        )
        for revoked in self.on_revoked:  # at once here, whatever becomes of the NOTIFY
            revoked(identity.token_hash)

    def evict(self, hashed_hex: str) -> None:
        """NOTIFY handler: an instance (this one too) revoked this token."""
        self._generation += 1
        try:
            hashed = bytes.fromhex(hashed_hex)
        except ValueError:
            return
        self._cache.pop(hashed, None)
        self._verified.pop(hashed, None)
        for revoked in self.on_revoked:
            revoked(hashed)

    def clear(self) -> None:
        """After the listener reconnects: revocations may have been missed, so nothing is
        taken on trust (the outage path's tokens included) until looked up again."""
        self._generation += 1
        self._cache.clear()
        self._verified.clear()

    async def issue_ticket(self, identity: Identity) -> tuple[str, datetime]:
        ticket = secrets.token_urlsafe(24)
        expires_at: datetime = await self.pool.fetchval(
            statements.ISSUE_TICKET,
            token_hash(ticket),
            identity.token_hash,
            TICKET_TTL_S,
        )
        return ticket, expires_at

    async def redeem_ticket(self, ticket: str) -> Identity | None:
        """A ticket works once, within 60 s, and only while its session is valid."""
        row = await self.pool.fetchrow(statements.REDEEM_TICKET, token_hash(ticket))
        if row is None:
            return None
        return self._identity(row["address"], row["expires_at"], row["token_hash"])

    async def cleanup(self) -> None:
        """Forget what can no longer be used (run periodically on every instance)."""
        async with self.pool.acquire() as conn:
            for statement in statements.CLEANUP:
                await conn.execute(statement)
