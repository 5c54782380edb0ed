"""A plain HTTP endpoint (Modal-style web endpoints): POST the input, the JSON reply is the output.

Modal (modal.com/docs/guide/webhook-timeouts) cuts a request at 150 s and answers a redirect
(303 today; 301 and 302 in older copies of the page) to the same URL with
`__modal_function_call_id=fc-...`: that result URL can be fetched again without starting a
new call. The call id is the execution's remote id: a resumed execution GETs the result URL
instead of POSTing the work a second time, and a `cancel_url` with `{remote_id}` reaches the
user's endpoint that calls `modal.FunctionCall.from_id(id).cancel()` -- closing the
connection is not documented to stop a Modal call."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, ClassVar
from urllib.parse import parse_qs, quote, urljoin, urlsplit
from uuid import UUID

import aiohttp
import structlog

from runner.backends.base import (
    CancelOutcome,
    CancelResult,
    ExecutionCall,
    HttpBackendBase,
    classify,
    is_transient,
    same_origin,
)
from runner.backends.polling import MAX_REMOTE_ID
from runner.errors import BackendError, PermanentBackendError, TransientBackendError
from runner.storable import text_problem

log = structlog.get_logger("runner.backends")

# Modal answers a long call with a redirect to a result URL, which redirects to itself while
# the work goes on (each hop waits ~150 s there); so allow many hops, all on the same origin.
MAX_REDIRECTS = 1000
MODAL_CALL_ID = "__modal_function_call_id"


def modal_call_id(url: str) -> str | None:
    values = parse_qs(urlsplit(url).query).get(MODAL_CALL_ID)
    value = values[0] if values else None
    if not value or len(value) > MAX_REMOTE_ID or text_problem(value):
        return None
    return value


class HttpBackend(HttpBackendBase):
    default_timeout_s: ClassVar[float] = 3600.0
    cancel_404_is_gone: ClassVar[bool] = False  # a user's endpoint: a 404 is a refusal

    async def run(self, call: ExecutionCall) -> Any:
        assert self.spec.url is not None
        if call.remote_id is None:
            try:
                return await self.retrying(
                    lambda: self._exchange(call, "POST", self.spec.url or ""), submits=call
                )
            except BackendError as exc:
                if call.remote_id is None or (exc.status is not None and not is_transient(exc.status)):
                    raise
                # The call was started and its id is known: fetch its result, never POST again.
                log.info(
                    "result_url_refetched", backend=self.spec.name, remote_id=call.remote_id, error=str(exc)
                )
        return await self.retrying(lambda: self._exchange(call, "GET", self.result_url(call)))

    def result_url(self, call: ExecutionCall) -> str:
        stored = (call.remote_urls or {}).get("result")
        if stored:
            return stored
        url = self.spec.url or ""
        return f"{url}{'&' if '?' in url else '?'}{MODAL_CALL_ID}={call.remote_id}"

    async def _exchange(self, call: ExecutionCall, method: str, url: str) -> Any:
        """One request and the redirects it is answered with, to the reply."""
        body = call.input
        try:
            for _ in range(MAX_REDIRECTS):
                async with self.session.request(
                    method,
                    url,
                    json=body if method == "POST" else None,
                    headers=self.headers(call),
                    timeout=self.request_timeout,
                    allow_redirects=False,
                ) as resp:
                    if resp.status not in (301, 302, 303, 307, 308):
                        return await classify(resp, "http call", self.spec.max_output_bytes)
                    location = resp.headers.get("Location")
                    if not location:
                        raise PermanentBackendError(f"http call: HTTP {resp.status} without Location")
                    next_url = urljoin(url, location)
                    # Never follow a reply to another origin: the key goes to the configured one only.
                    if not same_origin(next_url, self.spec.url or ""):
                        raise PermanentBackendError(f"http call: refusing an off-origin redirect: {next_url}")
                    call_id = modal_call_id(next_url)
                    if call_id is not None and call.remote_id is None:
                        await call.set_remote_id(call_id, {"result": next_url})
                    url = next_url
                    if resp.status in (301, 302, 303):  # the result URL is fetched, not posted to
                        method = "GET"
        except aiohttp.ClientConnectorError as exc:
            raise TransientBackendError(f"http call: {type(exc).__name__}: {exc}", sent=False) from None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientBackendError(f"http call: {type(exc).__name__}: {exc}") from None
        raise PermanentBackendError(f"http call: more than {MAX_REDIRECTS} redirects")

    async def cancel_remote(
        self, job_id: UUID, execution_id: UUID, remote_id: str | None, urls: Mapping[str, str] | None = None
    ) -> CancelResult:
        assert self.spec.cancel_url is not None
        if "{remote_id}" in self.spec.cancel_url and remote_id is None:
            return CancelResult(CancelOutcome.FAILED, "no remote id is known to cancel")
        url = (
            self.spec.cancel_url.replace("{execution_id}", str(execution_id))
            .replace("{job_id}", str(job_id))
            .replace("{remote_id}", quote(remote_id or "", safe=""))
        )
        return await self.cancel_call("POST", url, "http cancel_url")
