"""A user's webhook receiver on a real local socket. Every request is verified with the
`standardwebhooks` library (as a user's backend would); the test waits on what it got."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from aiohttp import web
from standardwebhooks.webhooks import Webhook, WebhookVerificationError

from tests.client import free_port


@dataclass
class Receiver:
    secret: str = ""  # whsec_...; set once the test has it
    port: int = field(default_factory=free_port)
    arrivals: list[dict[str, Any]] = field(default_factory=list)  # every request, as it came
    verified: list[dict[str, Any]] = field(default_factory=list)  # those answered 2xx: the payloads
    refused_signatures: int = 0
    hold: asyncio.Event | None = None  # when set up: each request waits on it (a slow receiver)
    hold_first: int = 0  # only this many first requests wait on `hold`
    status: int = 204  # the answer to a verified request
    _changed: asyncio.Condition = field(default_factory=asyncio.Condition)
    _runner: web.AppRunner | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}/hook"

    async def start(self) -> Receiver:
        app = web.Application()
        app.router.add_post("/hook", self._hook)
        self._runner = web.AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        await web.TCPSite(self._runner, "127.0.0.1", self.port, reuse_address=True).start()
        return self

    async def stop(self) -> None:
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None

    async def _hook(self, request: web.Request) -> web.Response:
        body = await request.read()
        arrival = {"headers": dict(request.headers), "body": body}
        async with self._changed:
            self.arrivals.append(arrival)
            self._changed.notify_all()
        if self.hold is not None and len(self.arrivals) <= self.hold_first:
            await self.hold.wait()
        try:
            payload = Webhook(self.secret).verify(body, dict(request.headers))
        except WebhookVerificationError:
            async with self._changed:
                self.refused_signatures += 1
                self._changed.notify_all()
            return web.Response(status=400, text="bad signature")
        if 200 <= self.status < 300:
            async with self._changed:
                self.verified.append({"id": request.headers["webhook-id"], **payload})
                self._changed.notify_all()
        headers = {"Location": "/hook"} if 300 <= self.status < 400 else {}
        return web.Response(status=self.status, text="x" * 100_000, headers=headers)  # more than is read

    async def wait(self, predicate: Any, timeout: float = 30.0) -> None:
        """Until predicate(self) holds (checked on every request)."""
        async with asyncio.timeout(timeout), self._changed:
            await self._changed.wait_for(lambda: predicate(self))

    def events_of(self, job_id: str) -> list[str]:
        return [p["type"] for p in self.verified if p["data"]["id"] == job_id]


def payload_of(arrival: dict[str, Any]) -> dict[str, Any]:
    parsed: dict[str, Any] = json.loads(arrival["body"])
    return parsed
