"""The event streams open on this instance: capped per wallet and in all (each holds a
socket and a LISTEN), ended when their session is revoked or expires, and sharing their
reads -- the streams of one wallet woken by one change make one query between them."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, TypeVar

from aiohttp import web

from api.errors import TooManyRequests
from api.sessions import Identity

T = TypeVar("T")


@dataclass(eq=False)
class Stream:
    wake: asyncio.Event  # set at each change of what the stream follows, and when it must end
    ended: str | None = None  # why the stream must end: "signed_out"


class Streams:
    def __init__(self, per_wallet: int, total: int) -> None:
        self.per_wallet = per_wallet
        self.total = total
        self.count = 0
        self._per_wallet: dict[str, int] = {}
        self._by_session: dict[bytes, set[Stream]] = {}
        self._reads: dict[tuple[str, int], asyncio.Future[Any]] = {}

    @contextlib.contextmanager
    def opened(self, identity: Identity, wake: asyncio.Event) -> Iterator[Stream]:
        """Count a stream while it is open; 429 past a cap. When the stream's session is
        revoked, its `ended` is set and `wake` with it."""
        address = identity.address
        if self.count >= self.total:
            raise TooManyRequests(
                f"this instance has {self.total} event streams open (RUNNER_MAX_STREAMS); try again later"
            )
        if self._per_wallet.get(address, 0) >= self.per_wallet:
            raise TooManyRequests(
                f"this wallet has {self.per_wallet} event streams open here "
                "(RUNNER_MAX_STREAMS_PER_WALLET): close one; GET /events carries "
                "every job of the wallet on one stream"
            )
        self.count += 1
        self._per_wallet[address] = self._per_wallet.get(address, 0) + 1
        stream = Stream(wake)
        self._by_session.setdefault(identity.token_hash, set()).add(stream)
        try:
            yield stream
        finally:
            self.count -= 1
            left = self._per_wallet[address] - 1
            if left:
                self._per_wallet[address] = left
            else:
                del self._per_wallet[address]
            session = self._by_session[identity.token_hash]
            session.discard(stream)
            if not session:
                del self._by_session[identity.token_hash]

    def end_session(self, hashed: bytes) -> None:
        """The session was revoked (a logout here or on another instance)."""
        for stream in self._by_session.get(hashed, ()):
            stream.ended = "signed_out"
            stream.wake.set()

    async def shared(self, key: tuple[str, int], read: Callable[[], Awaitable[T]]) -> T:
        """`read()`, run once for every caller that asks with the same key while it is under
        way (the streams of one wallet, woken by one change, at the same event id)."""
        future = self._reads.get(key)
        if future is None:
            future = self._reads[key] = asyncio.ensure_future(read())

            def done(finished: asyncio.Future[Any]) -> None:
                self._reads.pop(key, None)
                if not finished.cancelled():
                    finished.exception()  # its waiters got it; none may be left to

            future.add_done_callback(done)
        result: T = await asyncio.shield(future)
        return result


STREAMS = web.AppKey("streams", Streams)


def seconds_left(identity: Identity) -> float:
    return (identity.expires_at - datetime.now(UTC)).total_seconds()
