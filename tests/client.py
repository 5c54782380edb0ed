"""A small client for the API in tests."""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from typing import Any

import aiohttp

from tests.wallets import Wallet, sign_in

TERMINAL = ("completed", "failed", "cancelled")


@dataclass
class Api:
    http: aiohttp.ClientSession
    base: str
    token: str = ""
    wallet: Wallet | None = None

    @classmethod
    async def signed_in(cls, http: aiohttp.ClientSession, base: str, wallet: Wallet | None = None) -> Api:
        wallet = wallet or Wallet()
        return cls(http, base, await sign_in(http, base, wallet), wallet)

    def on(self, base: str) -> Api:
        """The same session against another instance."""
        return Api(self.http, base, self.token, self.wallet)

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}

    async def call(
        self, method: str, path: str, *, json: Any = None, headers: dict[str, str] | None = None
    ) -> tuple[int, Any]:
        async with self.http.request(
            method, self.base + path, json=json, headers={**self.headers, **(headers or {})}
        ) as resp:
            return resp.status, await resp.json()

    async def submit(self, *executions: dict[str, Any], **fields: Any) -> dict[str, Any]:
        status, body = await self.call("POST", "/jobs", json={"executions": list(executions), **fields})
        assert status == 201, body
        job: dict[str, Any] = body
        return job

    async def job(self, job_id: str) -> dict[str, Any]:
        status, body = await self.call("GET", f"/jobs/{job_id}")
        assert status == 200, body
        job: dict[str, Any] = body
        return job

    async def cancel(self, job_id: str, *, wait: bool = False, reason: str | None = None) -> tuple[int, Any]:
        query = "?wait=true" if wait else ""
        return await self.call(
            "POST", f"/jobs/{job_id}/cancel{query}", json={"reason": reason} if reason else None
        )

    async def until(self, job_id: str, *statuses: str, timeout: float = 15.0) -> dict[str, Any]:
        """Wait on the row until the job reaches one of `statuses`."""
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if job["status"] in statuses:
                return job
            assert time.monotonic() < deadline, f"job still {job['status']}: {job}"
            await asyncio.sleep(0.01)

    async def until_execution(
        self, job_id: str, index: int, predicate: Any, timeout: float = 15.0
    ) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        while True:
            job = await self.job(job_id)
            if predicate(job["executions"][index]):
                return job
            assert time.monotonic() < deadline, f"execution {index} not there yet: {job}"
            await asyncio.sleep(0.01)


def free_port() -> int:
    """A port nothing listens on now (for a server that must know its port before binding)."""
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


async def wait_event(event: asyncio.Event, timeout: float = 10.0) -> None:
    await asyncio.wait_for(event.wait(), timeout)


def freeze(runtime: Any) -> None:
    """Make an instance behave as if its process died: no more lease renewals, claims,
    notifications or sweeps, and its job tasks stop without writing anything."""
    from runner.cancel.registry import StopReason

    runtime.worker.draining = True
    runtime.supervisor.halt()
    runtime.manager.cancel_all(StopReason.LEASE_LOST)
