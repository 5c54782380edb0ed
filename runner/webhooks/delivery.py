"""Delivering the webhook outbox (migration 0014): any live worker instance claims due rows
(FOR UPDATE SKIP LOCKED), POSTs each signed, and marks it delivered only after a 2xx.

A claim pushes the row's next attempt past the attempt's timeout instead of holding a lock or
a connection for it: if the instance dies mid-delivery (kill -9, Postgres gone) the row simply
comes due again and another instance sends it, with the same webhook-id (at least once).
A job's events go out in order: a row waits while an earlier one of its job is pending."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import Callable
from typing import Any

import aiohttp
import asyncpg
import structlog

from runner import jsontext
from runner.config import Settings
from runner.db import notify, until_written
from runner.jobs import JobRow
from runner.metrics import Metrics
from runner.timeutil import iso
from runner.webhooks import statements
from runner.webhooks.addresses import CheckedResolver, Refused, check_literal
from runner.webhooks.signing import signature_header, signing_secrets

log = structlog.get_logger("runner.webhooks")

MAX_ANSWER_BYTES = 64 * 1024  # what is read of a receiver's answer (then dropped, never stored)
MAX_IN_FLIGHT = 32  # deliveries one instance makes at once
# The longest an instance goes without looking at the outbox: new events wake it by NOTIFY,
# and each look learns when the next retry is due, so this only bounds a lost NOTIFY.
LONGEST_WAIT_S = 5.0
RETRY_CAP_S = 3600.0  # the longest wait between two attempts
WAKE_CHANNEL = notify.WEBHOOK


def retry_delay_s(attempt: int, base_s: float) -> float:
    """Exponential backoff with jitter (half to all of the step), so that a receiver coming
    back is not hit by every instance's retries at once."""
    step = min(RETRY_CAP_S, base_s * 2 ** (attempt - 1))
    return random.uniform(step / 2, step)


class WebhookSender:
    def __init__(
        self,
        pool: asyncpg.Pool,
        settings: Settings,
        metrics: Metrics,
        instance_id: str,
        render: Callable[[JobRow], dict[str, Any]],
    ) -> None:
        self.pool = pool
        self.settings = settings
        self.metrics = metrics
        self.instance_id = instance_id
        self.render = render
        self.in_flight: set[asyncio.Task[None]] = set()  # deliveries under way
        # Set by a NOTIFY of a new event and by each attempt's end: look again at once.
        self.woken = asyncio.Event()
        self._http: aiohttp.ClientSession | None = None
        self._closed = False

    @property
    def http(self) -> aiohttp.ClientSession:
        if self._http is None:
            # Its own client: no proxy from the environment, no cookies, and a resolver that
            # leaves out every address a webhook may not reach (checked again at each connect).
            connector = aiohttp.TCPConnector(
                resolver=CheckedResolver(allow_private=self.settings.webhook_allow_private),
                use_dns_cache=False,
                limit=MAX_IN_FLIGHT,
            )
            self._http = aiohttp.ClientSession(
                connector=connector, trust_env=False, cookie_jar=aiohttp.DummyCookieJar()
            )
        return self._http

    def wake(self, _payload: str = "") -> None:
        """A NOTIFY from a trigger: an event was just written; look now, not when due."""
        self.woken.set()

    async def tick(self) -> float | None:
        """Claim what is due (as many as there is room for) and start delivering it. Returns
        in how many seconds the next row comes due; None when none is known (nothing
        pending, or no room left: an attempt's end wakes the sender)."""
        if self._closed:  # its deliveries, cancelled by close(), wake it one last time
            return None
        room = MAX_IN_FLIGHT - len(self.in_flight)
        if room > 0:
            lease_s = self.settings.webhook_timeout_s + 5.0
            for row in await self.pool.fetch(statements.CLAIM, room, lease_s):
                task = asyncio.get_running_loop().create_task(self._guarded(row), name="webhook")
                self.in_flight.add(task)
                task.add_done_callback(self.in_flight.discard)
        if len(self.in_flight) >= MAX_IN_FLIGHT:
            return None
        due_in_s: float | None = await self.pool.fetchval(statements.NEXT_DUE)
        return due_in_s

    async def close(self) -> None:
        """Stop: deliveries under way are abandoned (their rows come due again elsewhere)."""
        self._closed = True
        tasks = [*self.in_flight]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._http is not None:
            await self._http.close()

    async def _body(self, row: asyncpg.Record) -> bytes | None:
        if row["payload"] is not None:
            return str(row["payload"]).encode()
        job = await self.pool.fetchrow(statements.JOB, row["job_id"])
        if job is None:
            return None  # deleted by retention; its outbox rows go with it
        body = jsontext.dumps_bytes(
            {"type": f"job.{row['event']}", "timestamp": iso(row["created_at"]), "data": self.render(job)}
        ).decode()
        # Fixed at the first attempt (another instance may have fixed it first: keep theirs).
        fixed: str = await self.pool.fetchval(statements.FIX_PAYLOAD, row["id"], body)
        return fixed.encode() if fixed is not None else None

    async def _guarded(self, row: asyncpg.Record) -> None:
        try:
            await self._deliver(row)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            # Unrecorded: the row's claim lapses and it is tried again (here or elsewhere).
            log.warning("webhook_attempt_unrecorded", job_id=str(row["job_id"]), error=repr(exc))
        finally:
            # Its retry, or its job's next event, may be due before the next look; and its
            # room is free now (the done-callback that frees it would run after the wake-up).
            self.in_flight.discard(asyncio.current_task())
            self.woken.set()

    async def _deliver(self, row: asyncpg.Record) -> None:
        body = await self._body(row)
        if body is None:
            return
        secrets = await signing_secrets(self.pool, row["owner"])
        status, error = await self._post(row["url"], row["msg_id"], body, secrets)
        fields = {
            "job_id": str(row["job_id"]),
            "hook_event": row["event"],
            "webhook_id": row["msg_id"],
            "attempt": row["attempts"],
        }
        if status is not None and 200 <= status < 300:
            await until_written(
                lambda: self.pool.execute(statements.DELIVERED, row["id"], self.instance_id, status),
                "webhook_delivered",
                **fields,
            )
            log.info("webhook_delivered", status=status, **fields)
            return
        label = str(status) if status is not None else (error or "error").split(":")[0]
        self.metrics.webhook_failures.labels(label).inc()
        delay = retry_delay_s(row["attempts"], self.settings.webhook_retry_base_s)
        await until_written(
            lambda: self.pool.execute(
                statements.FAILED,
                row["id"],
                self.instance_id,
                delay,
                self.settings.webhook_retry_for_s,
                error,
                status,
            ),
            "webhook_failed",
            **fields,
        )
        log.warning("webhook_failed", status=status, error=error, retry_in_s=round(delay, 2), **fields)

    async def _post(
        self, url: str, msg_id: str, body: bytes, secrets: list[str]
    ) -> tuple[int | None, str | None]:
        """(status, None) for an answer, (None, why) for none. The answer's body is read up
        to MAX_ANSWER_BYTES and dropped: a receiver cannot make us hold more."""
        stamp = int(time.time())
        headers = {
            "content-type": "application/json",
            "webhook-id": msg_id,
            "webhook-timestamp": str(stamp),
            "webhook-signature": signature_header(secrets, msg_id, stamp, body),
            "user-agent": "runner-webhooks",
        }
        try:
            check_literal(url, allow_private=self.settings.webhook_allow_private)
            async with asyncio.timeout(self.settings.webhook_timeout_s):
                async with self.http.post(url, data=body, headers=headers, allow_redirects=False) as resp:
                    await resp.content.read(MAX_ANSWER_BYTES)
                    return resp.status, None
        except Refused as exc:
            return None, f"refused: {exc}"
        except TimeoutError:
            return None, f"timeout: no answer within {self.settings.webhook_timeout_s:g} s"
        except (aiohttp.ClientError, OSError) as exc:
            return None, f"network: {type(exc).__name__}: {exc}"[:500]
