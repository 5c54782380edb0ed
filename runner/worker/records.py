"""What the worker's statements (store) take and return: the jobs a claim hands over, what
this instance can run, an execution's result."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any


@dataclass(frozen=True, slots=True)
class ClaimedExecution:
    id: uuid.UUID
    backend: str
    input: Any
    remote_id: str | None
    attempts: int
    remote_urls: dict[str, str] | None = None


@dataclass(frozen=True, slots=True)
class ClaimedJob:
    id: uuid.UUID
    owner: str
    timeout_s: int | None
    started_at: datetime
    attempts: int
    executions: list[ClaimedExecution]

    def remaining(self) -> float | None:
        """Seconds left of its timeout_s (None: no timeout)."""
        if self.timeout_s is None:
            return None
        elapsed = (datetime.now(UTC) - self.started_at).total_seconds()
        return max(self.timeout_s - elapsed, 0.0)


@dataclass(frozen=True, slots=True)
class Capacity:
    """What a worker can run: its backends, and those limited to a number of running
    executions across every instance (their slots)."""

    backends: list[str]
    limits: dict[str, int]


@dataclass(frozen=True, slots=True)
class ExecutionResult:
    job_id: uuid.UUID
    execution_id: uuid.UUID
    status: str  # completed | failed
    output: Any
    error: str | None
    attempts: int
    owe_remote_cancel: bool = False  # it failed on our side with a remote job still alive
    gpu_seconds: float | None = None  # the provider's figure, or the time it ran here
