"""A local process: `command` (no shell), input JSON on stdin, output JSON on stdout.

A cancel sends SIGTERM to the process group, then SIGKILL after `grace_s`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
from dataclasses import dataclass
from typing import Any
from uuid import UUID

import structlog

from runner.backends.base import (
    ERROR_TEXT_LIMIT,
    CancelOutcome,
    CancelResult,
    ExecutionCall,
    parse_reply,
)
from runner.backends.config import BackendSpec
from runner.errors import PermanentBackendError

log = structlog.get_logger("runner.backends.subprocess")


@dataclass
class SubprocessBackend:
    spec: BackendSpec

    async def run(self, call: ExecutionCall) -> Any:
        call.submitted()
        env = {**os.environ, "RUNNER_JOB_ID": str(call.job_id),
               "RUNNER_EXECUTION_ID": str(call.execution_id)}
        try:
            proc = await asyncio.create_subprocess_exec(
                *self.spec.command, stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE, env=env, start_new_session=True,
            )
        except OSError as exc:
            raise PermanentBackendError(f"could not start {self.spec.command[0]!r}: {exc}") from None
        try:
            async with asyncio.timeout(self.spec.timeout_s):
                out, err = await proc.communicate(json.dumps(call.input).encode())
        except TimeoutError:
            await asyncio.shield(self.stop(proc))
            raise PermanentBackendError(f"the process ran longer than {self.spec.timeout_s} s") from None
        except asyncio.CancelledError:
            await asyncio.shield(self.stop(proc))
            raise
        if proc.returncode != 0:
            tail = err.decode(errors="replace")[-ERROR_TEXT_LIMIT:]
            raise PermanentBackendError(f"the process exited with {proc.returncode}: {tail}")
        return await parse_reply(out, "the process exited 0", "output")

    async def stop(self, proc: asyncio.subprocess.Process) -> None:
        """SIGTERM the process group, SIGKILL it after grace_s."""
        if proc.returncode is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), self.spec.grace_s)
            log.info("subprocess_terminated", pid=proc.pid, signal="SIGTERM")
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            await proc.wait()
            log.info("subprocess_killed", pid=proc.pid, signal="SIGKILL", grace_s=self.spec.grace_s)

    async def cancel_remote(self, job_id: UUID, execution_id: UUID, remote_id: str | None) -> CancelResult:
        return CancelResult(CancelOutcome.ACKNOWLEDGED, "local process: signalled by the task")
