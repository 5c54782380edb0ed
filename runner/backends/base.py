"""The Backend protocol, the per-execution call handle, and the shared HTTP plumbing."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from uuid import UUID

import aiohttp

from runner import storable
from runner.backends.config import BackendSpec
from runner.errors import (
    BackendError,
    InvalidJson,
    PermanentBackendError,
    TransientBackendError,
    Unstorable,
)

if TYPE_CHECKING:
    from runner.metrics import Metrics

MAX_RETRY_AFTER_S = 60.0
CANCEL_TIMEOUT = aiohttp.ClientTimeout(total=10)
ERROR_TEXT_LIMIT = 500


class CancelOutcome(StrEnum):
    ACKNOWLEDGED = "acknowledged"  # the backend confirmed (or the work was already over)
    FAILED = "failed"  # the backend refused; not retried
    RETRY = "retry"  # transient trouble: the sweeper tries again


@dataclass(frozen=True, slots=True)
class CancelResult:
    outcome: CancelOutcome
    detail: str
    retry_after: float | None = None  # with RETRY: the provider's Retry-After, in seconds


@dataclass
class ExecutionCall:
    """One execution's run at a backend: its input, and hooks back into the runner."""

    job_id: UUID
    execution_id: UUID
    input: Any
    remote_id: str | None = None
    attempts: int = 0
    on_remote_id: Callable[[str, int], Awaitable[None]] | None = None
    # The provider stops the work after this many seconds, whatever becomes of us (RunPod's
    # policy.executionTimeout, Replicate's Cancel-After); None: no deadline.
    deadline_s: float | None = None
    # The provider's own figure of the GPU time the work took, once it reports one.
    gpu_seconds: float | None = None

    def submitted(self) -> None:
        """Count a submission to the backend (an execution's `attempts`)."""
        self.attempts += 1

    async def set_remote_id(self, remote_id: str) -> None:
        """Store the remote id before anything else, so a cancel can always reach it."""
        self.remote_id = remote_id
        if self.on_remote_id is not None:
            await self.on_remote_id(remote_id, self.attempts)


class Backend(Protocol):
    spec: BackendSpec

    async def run(self, call: ExecutionCall) -> Any:
        """Run to the end and return the output; raise BackendError on failure."""
        ...

    async def cancel_remote(self, job_id: UUID, execution_id: UUID, remote_id: str | None) -> CancelResult:
        """Tell the backend to stop (only for kinds whose spec.cancels_remotely)."""
        ...


def _retry_after(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return min(max(float(value), 0.0), MAX_RETRY_AFTER_S)
    except ValueError:
        return None  # an HTTP-date: fall back to our own backoff


async def read_body(resp: aiohttp.ClientResponse, limit: int, what: str) -> bytes:
    """The reply's body, at most `limit` bytes once decompressed (aiohttp inflates it in
    bounded steps as it is read); a longer one fails: the work is over, its answer unusable,
    and a retry would pay for the work again."""
    chunks: list[bytes] = []
    size = 0
    async for chunk in resp.content.iter_chunked(1 << 16):
        size += len(chunk)
        if size > limit:
            raise PermanentBackendError(
                f"{what}: HTTP {resp.status}: the reply is larger than {limit} bytes (max_output_bytes)")
        chunks.append(chunk)
    return b"".join(chunks)


async def classify(resp: aiohttp.ClientResponse, what: str, limit: int) -> Any:
    """The reply's JSON body, or the BackendError it amounts to. The body is read up to
    `limit` bytes and parsed with its nesting bounded; whether the output can be stored is
    the worker's check, made once for every kind."""
    if resp.status >= 400:  # only its start is kept, as the error's text
        raw = await resp.content.read(ERROR_TEXT_LIMIT * 4)
    else:
        raw = await read_body(resp, limit, what)
    text = raw.decode("utf-8", "replace")
    if resp.status == 429 or resp.status >= 500:
        raise TransientBackendError(
            f"{what}: HTTP {resp.status}: {text[:ERROR_TEXT_LIMIT]}",
            retry_after=_retry_after(resp.headers.get("Retry-After")),
        )
    if resp.status >= 400:
        raise PermanentBackendError(f"{what}: HTTP {resp.status}: {text[:ERROR_TEXT_LIMIT]}")
    return await parse_reply(raw, f"{what}: HTTP {resp.status}")


async def parse_reply(raw: bytes, what: str, noun: str = "body") -> Any:
    """A backend's JSON reply, one Postgres can store, or a PermanentBackendError saying why
    it is not (read without holding the event loop, whatever its size)."""
    try:
        return await storable.loads_async(raw)
    except InvalidJson:
        text = raw.decode("utf-8", "replace")[:ERROR_TEXT_LIMIT]
        raise PermanentBackendError(f"{what} with a non-JSON {noun}: {text!r}") from None
    except Unstorable as exc:
        raise PermanentBackendError(f"the backend's reply cannot be stored: {exc} ({what})") from None


@dataclass
class HttpBackendBase:
    """What every HTTP kind shares: the session, headers, one classified call, backoff."""

    spec: BackendSpec
    session: aiohttp.ClientSession
    backoff_base_s: float = 0.5
    backoff_cap_s: float = 30.0
    auth_scheme: ClassVar[str] = "Bearer"  # fal: "Key"
    metrics: Metrics | None = None  # set by the worker that owns the backend

    def headers(self, call: ExecutionCall | None = None) -> dict[str, str]:
        headers = dict(self.spec.headers)
        if self.spec.api_key:
            headers.setdefault("Authorization", f"{self.auth_scheme} {self.spec.api_key}")
        if call is not None:
            headers["X-Runner-Job-Id"] = str(call.job_id)
            headers["X-Runner-Execution-Id"] = str(call.execution_id)
        return headers

    default_timeout_s: ClassVar[float] = 30.0  # one API call; the http kind waits for the work

    @property
    def request_timeout(self) -> aiohttp.ClientTimeout:
        return aiohttp.ClientTimeout(total=self.spec.timeout_s or self.default_timeout_s)

    async def request(self, method: str, url: str, what: str, *, json_body: Any = None,
                      call: ExecutionCall | None = None, headers: dict[str, str] | None = None,
                      client_timeout: aiohttp.ClientTimeout | None = None) -> Any:
        # "cancelled" until an answer or an error says otherwise: a call cut short by the
        # job's cancel is neither, and is not counted.
        started, failure = time.monotonic(), "cancelled"
        try:
            async with self.session.request(
                method, url, json=json_body, headers={**self.headers(call), **(headers or {})},
                timeout=client_timeout or self.request_timeout, allow_redirects=False,
            ) as resp:
                result = await classify(resp, what, self.spec.max_output_bytes)
                failure = ""
                return result
        except (aiohttp.ClientError, TimeoutError) as exc:
            failure = "transient"
            raise TransientBackendError(f"{what}: {type(exc).__name__}: {exc}") from None
        except TransientBackendError:
            failure = "transient"
            raise
        except PermanentBackendError:
            failure = "permanent"
            raise
        finally:
            if self.metrics is not None and failure != "cancelled":
                # A call with an execution submits it; one named "... cancel..." cancels it.
                operation = "submit" if call is not None else "cancel" if "cancel" in what else "poll"
                self.metrics.observe_backend_call(self.spec.name, operation, failure,
                                                  time.monotonic() - started)

    async def backoff(self, attempt: int, error: BackendError) -> None:
        """Exponential backoff with full jitter; a Retry-After is honoured as given."""
        if error.retry_after is not None:
            delay = error.retry_after
        else:
            delay = random.uniform(0, min(self.backoff_cap_s, self.backoff_base_s * 2 ** (attempt - 1)))
        await asyncio.sleep(delay)

    async def retrying(
        self, what: Callable[[], Awaitable[Any]], *, submits: ExecutionCall | None = None
    ) -> Any:
        """Call `what` until it succeeds, a permanent error, or max_attempts transient ones.

        With `submits`, each try is a submission and counts in the execution's attempts.
        """
        attempt = 0
        while True:
            attempt += 1
            if submits is not None:
                submits.submitted()
            try:
                return await what()
            except TransientBackendError as exc:
                if attempt >= self.spec.max_attempts:
                    raise TransientBackendError(
                        f"{exc} (gave up after {attempt} attempts)", retry_after=exc.retry_after
                    ) from None
                await self.backoff(attempt, exc)

    async def cancel_call(self, method: str, url: str, what: str) -> CancelResult:
        """A remote cancel whose 2xx means acknowledged and other 4xx means refused."""
        try:
            body = await self.request(method, url, what, client_timeout=CANCEL_TIMEOUT)
        except TransientBackendError as exc:
            return CancelResult(CancelOutcome.RETRY, str(exc), retry_after=exc.retry_after)
        except PermanentBackendError as exc:
            return CancelResult(CancelOutcome.FAILED, str(exc))
        return CancelResult(CancelOutcome.ACKNOWLEDGED, json.dumps(body)[:ERROR_TEXT_LIMIT])


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PermanentBackendError(f"{what}: expected a JSON object, got {json.dumps(value)[:200]}")
    return value
