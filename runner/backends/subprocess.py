"""A local process: `command` (no shell), input JSON on stdin, output JSON on stdout.

Every way out of a run -- done, failed, timed out, cancelled -- stops what is left of the
process's whole tree (see proctree: a cgroup, or a subreaper walk): SIGTERM, then SIGKILL after
`grace_s`. Its pipes are read as they fill, within limits: stdout up to `max_output_bytes`
(past it the run fails), of stderr only the last `stderr_tail_bytes`.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import math
import os
from collections.abc import Mapping
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
from runner.backends.proctree import CgroupTree, ReaperTree, open_tree, spawning, until
from runner.errors import PermanentBackendError

log = structlog.get_logger("runner.backends.subprocess")

READ_CHUNK = 64 * 1024
PIPES_WAIT_S = 5.0  # after a stop, for the pipes to close: nothing left in the tree writes
_finishing: set[asyncio.Task[None]] = set()  # stops that outlive a second cancel of their run


@dataclass
class SubprocessBackend:
    spec: BackendSpec

    async def run(self, call: ExecutionCall) -> Any:
        call.submitted()
        env = {**os.environ, "RUNNER_JOB_ID": str(call.job_id), "RUNNER_EXECUTION_ID": str(call.execution_id)}
        tree = open_tree(call.execution_id)
        proc: asyncio.subprocess.Process | None = None
        try:
            with spawning():
                try:
                    proc = await asyncio.create_subprocess_exec(
                        *tree.argv(self.spec.command, env.get("PATH")),
                        stdin=asyncio.subprocess.PIPE,
                        stdout=asyncio.subprocess.PIPE,
                        stderr=asyncio.subprocess.PIPE,
                        env=env,
                        start_new_session=True,
                    )
                except OSError as exc:
                    raise PermanentBackendError(f"could not start {self.spec.command[0]!r}: {exc}") from None
                tree.started(proc.pid)
            async with asyncio.timeout(self.spec.timeout_s):
                out, err = await self._exchange(proc, json.dumps(call.input).encode())
        except TimeoutError:
            raise PermanentBackendError(f"the process ran longer than {self.spec.timeout_s} s") from None
        finally:
            # Shielded: a cancel (even a second one) must not leave the tree half stopped.
            finish = asyncio.create_task(self._finish(tree, proc))
            _finishing.add(finish)
            finish.add_done_callback(_finishing.discard)
            await asyncio.shield(finish)
        if proc.returncode != 0:
            tail = err.decode(errors="replace")
            log.warning("subprocess_failed", pid=proc.pid, returncode=proc.returncode, stderr=tail)
            raise PermanentBackendError(
                f"the process exited with {proc.returncode}: {tail[-ERROR_TEXT_LIMIT:]}"
            )
        return await parse_reply(out, "the process exited 0", "output")

    async def _exchange(self, proc: asyncio.subprocess.Process, data: bytes) -> tuple[bytes, bytes]:
        """Write stdin while reading stdout and stderr, in bounded reads (communicate() would
        hold all of both): stdout up to max_output_bytes, of stderr only its tail."""
        assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
        stdin, stdout, stderr = proc.stdin, proc.stdout, proc.stderr
        limit, tail = self.spec.max_output_bytes, self.spec.stderr_tail_bytes
        out, err = bytearray(), bytearray()

        async def feed() -> None:
            with contextlib.suppress(BrokenPipeError, ConnectionResetError):  # need not read it
                stdin.write(data)
                await stdin.drain()
            stdin.close()

        async def read_out() -> None:
            while chunk := await stdout.read(READ_CHUNK):
                if len(out) + len(chunk) > limit:  # the finally of run() stops the process
                    raise PermanentBackendError(
                        f"the output exceeded {limit} bytes (max_output_bytes); the process was stopped"
                    )
                out.extend(chunk)

        async def read_err() -> None:
            while chunk := await stderr.read(READ_CHUNK):
                err.extend(chunk)
                del err[:-tail]  # drained, only the last `tail` bytes kept

        # Not a TaskGroup: on 3.11 one whose task fails leaves our task's cancelling() count
        # raised, and a failure it reports would hide a cancel of ours.
        parts = [asyncio.create_task(part) for part in (feed(), read_out(), read_err())]
        try:
            done, _ = await asyncio.wait(parts, return_when=asyncio.FIRST_EXCEPTION)
            for part in done:
                part.result()  # the first failure, if any
        finally:
            for part in parts:
                part.cancel()
            await asyncio.gather(*parts, return_exceptions=True)
        await proc.wait()
        return bytes(out), bytes(err)

    async def _finish(self, tree: CgroupTree | ReaperTree, proc: asyncio.subprocess.Process | None) -> None:
        """Stop what is left of the tree, let asyncio reap the child, then release the tree.
        Raises nothing: it runs in a finally, where an error would replace a CancelledError."""
        pid = proc.pid if proc is not None else None
        # The child already gone and processes found: it left them behind (a daemon).
        after_exit = proc is None or proc.returncode is not None
        try:
            how = await tree.stop(self.spec.grace_s)
        except Exception:
            how = None
            log.exception("subprocess_stop_failed", pid=pid, containment=tree.kind)
        if how == "terminated":
            log.info(
                "subprocess_terminated",
                pid=pid,
                signal="SIGTERM",
                containment=tree.kind,
                after_exit=after_exit,
            )
        elif how == "killed":
            log.info(
                "subprocess_killed",
                pid=pid,
                signal="SIGKILL",
                grace_s=self.spec.grace_s,
                containment=tree.kind,
                after_exit=after_exit,
            )
        if proc is not None:
            await _reap(proc)
        tree.close()  # after the reap: the subreaper's close reaps the rest, never our child

    async def cancel_remote(
        self, job_id: UUID, execution_id: UUID, remote_id: str | None, urls: Mapping[str, str] | None = None
    ) -> CancelResult:
        return CancelResult(CancelOutcome.ACKNOWLEDGED, "local process: signalled by the task")


async def _reap(proc: asyncio.subprocess.Process) -> None:
    """Wait for asyncio to reap the child. Its wait() also waits for the pipes to close, and
    one left unread when the run ended (output past the limit, a cancel) would stay full and
    open: drain them. Bounded, since a process out of the tree's reach may hold them."""

    async def drain(stream: asyncio.StreamReader | None) -> None:
        while stream is not None and await stream.read(READ_CHUNK):
            pass

    try:
        await asyncio.wait_for(
            asyncio.gather(drain(proc.stdout), drain(proc.stderr), proc.wait()), PIPES_WAIT_S
        )
    except TimeoutError:
        log.warning("subprocess_pipes_held_open", pid=proc.pid, waited_s=PIPES_WAIT_S)
        # SIGKILLed, so reaped soon; and only once it is may the tree be closed.
        await until(lambda: proc.returncode is not None, math.inf)
