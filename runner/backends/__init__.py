"""GPU backends: one small class per kind, all behind the `Backend` protocol."""

from __future__ import annotations

from collections.abc import Mapping

import aiohttp

from runner import jsontext
from runner.backends.base import Backend, CancelOutcome, CancelResult, ExecutionCall
from runner.backends.config import BackendSpec
from runner.backends.demo import DemoBackend
from runner.backends.fal import FalBackend
from runner.backends.http import HttpBackend
from runner.backends.replicate import ReplicateBackend
from runner.backends.runpod import RunPodBackend
from runner.backends.subprocess import SubprocessBackend

__all__ = [
    "Backend",
    "CancelOutcome",
    "CancelResult",
    "ExecutionCall",
    "build_backend",
    "build_backends",
    "new_http_session",
]


def build_backend(spec: BackendSpec, session: aiohttp.ClientSession) -> Backend:
    if spec.kind == "demo":
        return DemoBackend(spec)
    if spec.kind == "subprocess":
        return SubprocessBackend(spec)
    kinds: dict[str, type[HttpBackend | RunPodBackend | ReplicateBackend | FalBackend]] = {
        "http": HttpBackend,
        "runpod": RunPodBackend,
        "replicate": ReplicateBackend,
        "fal": FalBackend,
    }
    return kinds[spec.kind](spec, session)


def build_backends(specs: Mapping[str, BackendSpec], session: aiohttp.ClientSession) -> dict[str, Backend]:
    return {name: build_backend(spec, session) for name, spec in specs.items()}


def new_http_session() -> aiohttp.ClientSession:
    """The one client session of an instance.

    No connection cap (limit=0): concurrent calls are bounded by RUNNER_CONCURRENCY jobs and
    their executions, and a library default of 100 would silently queue the rest.
    """
    connector = aiohttp.TCPConnector(limit=0, limit_per_host=0)
    # orjson: a 1 MiB input took the standard library ~80 ms of the event loop to encode.
    return aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None), json_serialize=jsontext.dumps
    )
