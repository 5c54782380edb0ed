"""The Backend protocol, the per-execution call handle, and the shared HTTP plumbing."""

from __future__ import annotations

import asyncio
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from enum import StrEnum
from typing import TYPE_CHECKING, Any, ClassVar, Protocol
from urllib.parse import urlsplit
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
# Answers worth another try (of a poll, a result, a cancel): the provider was busy, throttled
# or timed out. fal_client retries 408/409/429 and 502-504; runpodctl 429 and 5xx.
TRANSIENT_STATUSES = frozenset({408, 409, 429})
# A cancel refused for its credentials (a rotated key) may go through once the key is fixed:
# retried with backoff and alerted on, never final while the work may run.
KEY_REFUSALS = frozenset({401, 403})


class CancelOutcome(StrEnum):
    ACKNOWLEDGED = "acknowledged"  # the backend accepted the cancel (or the work was already over)
    FAILED = "failed"  # the backend refused for good; not retried
    RETRY = "retry"  # transient trouble: the sweeper tries again
    GONE = "gone"  # the provider no longer knows the work


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
    on_remote_id: Callable[[str, int, dict[str, str] | None], Awaitable[None]] | None = None
    # URLs the provider returned for the work (fal's status/response/cancel, Modal's result
    # URL), stored with the remote id: a resume or a cancel from another instance uses them.
    remote_urls: dict[str, str] | None = None
    # Told of a status the runner does not know (it is waited out as still running).
    on_unknown_status: Callable[[str], None] | None = None
    # The provider stops the work after this many seconds, whatever becomes of us (RunPod's
    # policy.executionTimeout, Replicate's Cancel-After); None: no deadline.
    deadline_s: float | None = None
    # The provider's own figure of the GPU time the work took, once it reports one.
    gpu_seconds: float | None = None

    def submitted(self) -> None:
        """Count a submission to the backend (an execution's `attempts`)."""
        self.attempts += 1

    async def set_remote_id(self, remote_id: str, urls: dict[str, str] | None = None) -> None:
        """Store the remote id before anything else, so a cancel can always reach it."""
        self.remote_id, self.remote_urls = remote_id, urls
        if self.on_remote_id is not None:
            await self.on_remote_id(remote_id, self.attempts, urls)


class Backend(Protocol):
    spec: BackendSpec

    async def run(self, call: ExecutionCall) -> Any:
        """Run to the end and return the output; raise BackendError on failure."""
        ...

    async def cancel_remote(
        self, job_id: UUID, execution_id: UUID, remote_id: str | None, urls: Mapping[str, str] | None = None
    ) -> CancelResult:
        """Tell the backend to stop (only for kinds whose spec.cancels_remotely); `urls`: those
        the provider returned for the work (fal), when it did."""
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
                f"{what}: HTTP {resp.status}: the reply is larger than {limit} bytes (max_output_bytes)"
            )
        chunks.append(chunk)
    return b"".join(chunks)


def is_transient(status: int) -> bool:
    """The one rule of which answers are worth another try."""
    return status in TRANSIENT_STATUSES or status >= 500


async def classify(resp: aiohttp.ClientResponse, what: str, limit: int) -> Any:
    """The reply's JSON body, or the BackendError it amounts to (the one place answers are
    classified). The body is read up to `limit` bytes and parsed with its nesting bounded;
    whether the output can be stored is the worker's check, made once for every kind."""
    if resp.status >= 400:  # only its start is kept, as the error's text
        raw = await resp.content.read(ERROR_TEXT_LIMIT * 4)
    else:
        raw = await read_body(resp, limit, what)
    text = raw.decode("utf-8", "replace")
    if is_transient(resp.status):
        raise TransientBackendError(
            f"{what}: HTTP {resp.status}: {text[:ERROR_TEXT_LIMIT]}",
            retry_after=_retry_after(resp.headers.get("Retry-After")),
            status=resp.status,
        )
    if resp.status >= 400:
        raise PermanentBackendError(
            f"{what}: HTTP {resp.status}: {text[:ERROR_TEXT_LIMIT]}", status=resp.status
        )
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

    async def request(
        self,
        method: str,
        url: str,
        what: str,
        *,
        json_body: Any = None,
        call: ExecutionCall | None = None,
        headers: dict[str, str] | None = None,
        client_timeout: aiohttp.ClientTimeout | None = None,
    ) -> Any:
        # "cancelled" until an answer or an error says otherwise: a call cut short by the
        # job's cancel is neither, and is not counted.
        started, failure = time.monotonic(), "cancelled"
        try:
            async with self.session.request(
                method,
                url,
                json=json_body,
                headers={**self.headers(call), **(headers or {})},
                timeout=client_timeout or self.request_timeout,
                allow_redirects=False,
            ) as resp:
                result = await classify(resp, what, self.spec.max_output_bytes)
                failure = ""
                return result
        except aiohttp.ClientConnectorError as exc:  # refused, unresolvable: nothing was sent
            failure = "transient"
            raise TransientBackendError(f"{what}: {type(exc).__name__}: {exc}", sent=False) from None
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
                self.metrics.observe_backend_call(
                    self.spec.name, operation, failure, time.monotonic() - started
                )

    def backoff_s(self, attempt: int, error: BackendError, floor_s: float = 0.0) -> float:
        """Exponential backoff with jitter (half fixed, half drawn, so that throttled callers
        neither hammer nor move in step); a Retry-After is a minimum."""
        step = min(self.backoff_cap_s, max(self.backoff_base_s, floor_s) * 2 ** min(attempt - 1, 30))
        delay = random.uniform(step / 2, step)
        return max(delay, error.retry_after) if error.retry_after is not None else delay

    async def backoff(self, attempt: int, error: BackendError) -> None:
        await asyncio.sleep(self.backoff_s(attempt, error))

    async def retrying(
        self, what: Callable[[], Awaitable[Any]], *, submits: ExecutionCall | None = None
    ) -> Any:
        """Call `what` until it succeeds, a permanent error, or max_attempts transient ones.

        With `submits`, each try is a submission and counts in the execution's attempts; it
        is sent again only where nothing can have started at the provider (the connection
        never reached it, or a 429): after a timeout or a 5xx the provider may have started
        the paid work, and a second create could start it twice.
        """
        attempt = 0
        while True:
            attempt += 1
            if submits is not None:
                submits.submitted()
            try:
                return await what()
            except TransientBackendError as exc:
                if submits is not None and not exc.safe_to_resend:
                    raise PermanentBackendError(
                        f"{exc} (not sent again: the provider may have started the work, and a "
                        "second submission could pay for it twice)",
                        status=exc.status,
                    ) from None
                if attempt >= self.spec.max_attempts:
                    raise TransientBackendError(
                        f"{exc} (gave up after {attempt} attempts)",
                        retry_after=exc.retry_after,
                        status=exc.status,
                        sent=exc.sent,
                    ) from None
                await self.backoff(attempt, exc)

    # A 404 to a cancel: the provider no longer knows the work (queue kinds); for the http
    # kind, a user's endpoint, it is a refusal like any other 4xx.
    cancel_404_is_gone: ClassVar[bool] = True

    async def cancel_call(self, method: str, url: str, what: str) -> CancelResult:
        """A remote cancel: a 2xx is acknowledged; a 401/403 (a rotated key) and transient
        trouble are retried; a 404 is gone; other 4xx are refused for good."""
        try:
            body = await self.request(method, url, what, client_timeout=CANCEL_TIMEOUT)
        except TransientBackendError as exc:
            return CancelResult(CancelOutcome.RETRY, str(exc), retry_after=exc.retry_after)
        except PermanentBackendError as exc:
            if exc.status in KEY_REFUSALS:
                return CancelResult(CancelOutcome.RETRY, str(exc))
            if exc.status == 404 and self.cancel_404_is_gone:
                return CancelResult(CancelOutcome.GONE, str(exc))
            return CancelResult(CancelOutcome.FAILED, str(exc))
        return CancelResult(CancelOutcome.ACKNOWLEDGED, json.dumps(body)[:ERROR_TEXT_LIMIT])


def same_origin(url: str, base: str) -> bool:
    """Whether `url` is on `base`'s scheme, host and port: a URL taken from a provider's reply
    is followed only there, so the API key never goes anywhere else."""

    def origin(u: str) -> tuple[str, str | None, int | None]:
        parts = urlsplit(u)
        return parts.scheme, parts.hostname, parts.port or _DEFAULT_PORTS.get(parts.scheme)

    return origin(url) == origin(base)


_DEFAULT_PORTS = {"http": 80, "https": 443}


def require_object(value: Any, what: str) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise PermanentBackendError(f"{what}: expected a JSON object, got {json.dumps(value)[:200]}")
    return value
