"""A plain HTTP endpoint (Modal-style web endpoints): POST the input, the JSON reply is the output."""

from __future__ import annotations

from typing import Any, ClassVar
from urllib.parse import urljoin, urlsplit
from uuid import UUID

import aiohttp

from runner.backends.base import CancelResult, ExecutionCall, HttpBackendBase, classify
from runner.errors import PermanentBackendError, TransientBackendError

# Modal answers a long call with 303 to a result URL, which redirects to itself while the
# work goes on (each hop waits ~150 s there); so allow many hops, all on the same origin.
MAX_REDIRECTS = 1000


def _origin(url: str) -> tuple[str, str]:
    parts = urlsplit(url)
    return parts.scheme, parts.netloc


class HttpBackend(HttpBackendBase):
    default_timeout_s: ClassVar[float] = 3600.0

    async def run(self, call: ExecutionCall) -> Any:
        return await self.retrying(lambda: self._call(call), submits=call)

    async def _call(self, call: ExecutionCall) -> Any:
        assert self.spec.url is not None
        method, url, body = "POST", self.spec.url, call.input
        try:
            for _ in range(MAX_REDIRECTS):
                async with self.session.request(
                    method, url, json=body if method == "POST" else None,
                    headers=self.headers(call), timeout=self.request_timeout, allow_redirects=False,
                ) as resp:
                    if resp.status not in (301, 302, 303, 307, 308):
                        return await classify(resp, "http call", self.spec.max_output_bytes)
                    location = resp.headers.get("Location")
                    if not location:
                        raise PermanentBackendError(f"http call: HTTP {resp.status} without Location")
                    next_url = urljoin(url, location)
                    # Never follow a reply to another host: URLs come from the config only.
                    if _origin(next_url) != _origin(self.spec.url):
                        raise PermanentBackendError(f"http call: refusing an off-origin redirect: {next_url}")
                    url = next_url
                    if resp.status == 303:
                        method, body = "GET", None
        except (aiohttp.ClientError, TimeoutError) as exc:
            raise TransientBackendError(f"http call: {type(exc).__name__}: {exc}") from None
        raise PermanentBackendError(f"http call: more than {MAX_REDIRECTS} redirects")

    async def cancel_remote(self, job_id: UUID, execution_id: UUID, remote_id: str | None) -> CancelResult:
        assert self.spec.cancel_url is not None
        url = self.spec.cancel_url.replace("{execution_id}", str(execution_id)).replace(
            "{job_id}", str(job_id))
        return await self.cancel_call("POST", url, "http cancel_url")
