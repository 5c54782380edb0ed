"""Simulated GPU work in-process: input {"seconds": s, "fail": false}. A cancel ends the sleep."""

from __future__ import annotations

import asyncio
import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from uuid import UUID

from runner.backends.base import CancelOutcome, CancelResult, ExecutionCall
from runner.backends.config import BackendSpec
from runner.errors import PermanentBackendError

MAX_SECONDS = 86400


@dataclass
class DemoBackend:
    spec: BackendSpec

    async def run(self, call: ExecutionCall) -> Any:
        data = call.input if isinstance(call.input, dict) else None
        seconds = data.get("seconds", 1) if data is not None else None
        fail = data.get("fail", False) if data is not None else None
        if (
            not isinstance(seconds, int | float)
            or isinstance(seconds, bool)
            or not math.isfinite(seconds)
            or not 0 <= seconds <= MAX_SECONDS
            or not isinstance(fail, bool)
        ):
            raise PermanentBackendError(
                f'demo input must be {{"seconds": 0-{MAX_SECONDS}, "fail": true|false}}'
            )
        call.submitted()
        await asyncio.sleep(seconds)
        if fail:
            raise PermanentBackendError("simulated failure (input had fail: true)")
        return {"slept_s": seconds}

    async def cancel_remote(
        self, job_id: UUID, execution_id: UUID, remote_id: str | None, urls: Mapping[str, str] | None = None
    ) -> CancelResult:
        return CancelResult(CancelOutcome.ACKNOWLEDGED, "in-process: the sleep was cancelled")
