"""Live progress of a job in a terminal: one line per execution with its status and elapsed
time, redrawn in place on a TTY; plain lines, one per change, otherwise."""

from __future__ import annotations

import asyncio
import contextlib
from datetime import UTC, datetime
from typing import Any, TextIO

from runner.statuses import TERMINAL


def _elapsed(started: str | None, finished: str | None) -> str:
    if not started:
        return "-"
    start = datetime.fromisoformat(started.replace("Z", "+00:00"))
    end = datetime.fromisoformat(finished.replace("Z", "+00:00")) if finished else datetime.now(UTC)
    return f"{max((end - start).total_seconds(), 0.0):.1f}s"


def execution_line(index: int, execution: dict[str, Any]) -> str:
    label = execution.get("name") or execution["backend"]
    extra = ""
    if execution.get("error"):
        extra = f"  {execution['error'][:80]}"
    elif execution.get("remote_cancel"):
        extra = f"  remote cancel {execution['remote_cancel']}"
    elapsed = _elapsed(execution.get("started_at"), execution.get("finished_at"))
    return f"  [{index}] {label:<20} {execution['status']:<10} {elapsed:>8}{extra}"


def job_line(job: dict[str, Any]) -> str:
    elapsed = _elapsed(job.get("started_at"), job.get("finished_at"))
    reason = f" ({job['cancel_reason']})" if job.get("cancel_reason") else ""
    return f"job {job['id']}  {job['status']}{reason}  {elapsed}"


class Progress:
    def __init__(self, out: TextIO, *, tty: bool) -> None:
        self.out = out
        self.tty = tty
        self._drawn = 0
        self._last: dict[str, Any] | None = None
        self._printed: dict[str, str] = {}

    def show(self, job: dict[str, Any]) -> None:
        self._last = job
        lines = [job_line(job)] + [execution_line(i + 1, e) for i, e in enumerate(job["executions"])]
        if self.tty:
            if self._drawn:
                self.out.write(f"\x1b[{self._drawn}F")  # back to the first line drawn
            for line in lines:
                self.out.write("\x1b[2K" + line + "\n")
            self._drawn = len(lines)
        else:
            # Only what changed (status, not the clock), one line each.
            keys = [f"job {job['status']}"] + [f"{e['id']} {e['status']}" for e in job["executions"]]
            for key, line in zip(keys, lines, strict=True):
                ident = key.split(" ")[0]
                if self._printed.get(ident) != key:
                    self._printed[ident] = key
                    self.out.write(line.strip() + "\n")
        self.out.flush()

    async def tick(self) -> None:
        """On a TTY, redraw twice a second so elapsed times move between events."""
        while self.tty:
            await asyncio.sleep(0.5)
            if self._last is not None and self._last["status"] not in TERMINAL:
                self.show(self._last)


async def follow(events: Any, progress: Progress | None) -> dict[str, Any]:
    """Consume a job's event stream to its end, showing each state; returns the last."""
    ticker = asyncio.create_task(progress.tick(), name="progress_tick") if progress else None
    last: dict[str, Any] | None = None
    try:
        async for job in events:
            last = job
            if progress is not None:
                progress.show(job)
    finally:
        if ticker is not None:
            ticker.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await ticker
    if last is None:
        raise RuntimeError("the event stream ended without a job")
    return last
