"""A per-client token bucket, in memory (each instance limits on its own)."""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass

from aiohttp import web


def client_key(request: web.Request, trusted_proxies: Sequence[str]) -> str:
    """The address a rate limit counts a request against. Forwarding headers are anyone's to
    write, so they name the client only behind a proxy the operator trusts
    (RUNNER_TRUSTED_PROXY); otherwise every client behind one proxy would share its bucket,
    or a client could pick a fresh bucket per request."""
    peer = request.remote or "unknown"
    if "fly" in trusted_proxies and (fly := request.headers.get("Fly-Client-IP", "").strip()):
        return fly
    if peer in trusted_proxies:
        # Walk back from the proxy nearest us: the first address not a trusted proxy's is the
        # client; anything left of it the client wrote itself.
        hops = [h.strip() for h in request.headers.get("X-Forwarded-For", "").split(",")]
        for hop in reversed([h for h in hops if h]):
            if hop not in trusted_proxies:
                return hop
    return peer


@dataclass
class _Bucket:
    tokens: float
    updated: float


class RateLimiter:
    def __init__(self, capacity: int, refill_per_s: float, max_clients: int = 100_000) -> None:
        self.capacity = capacity
        self.refill_per_s = refill_per_s
        self.max_clients = max_clients
        self._buckets: dict[str, _Bucket] = {}

    def allow(self, client: str, now: float | None = None) -> bool:
        now = time.monotonic() if now is None else now
        bucket = self._buckets.get(client)
        if bucket is None:
            if len(self._buckets) >= self.max_clients:
                self._prune(now)
            bucket = self._buckets[client] = _Bucket(float(self.capacity), now)
        bucket.tokens = min(self.capacity, bucket.tokens + (now - bucket.updated) * self.refill_per_s)
        bucket.updated = now
        if bucket.tokens < 1:
            return False
        bucket.tokens -= 1
        return True

    def _prune(self, now: float) -> None:
        """Forget clients whose bucket has refilled: they are indistinguishable from new ones."""
        full_after = self.capacity / self.refill_per_s
        self._buckets = {c: b for c, b in self._buckets.items() if now - b.updated < full_after}
        if len(self._buckets) >= self.max_clients:
            self._buckets.clear()
