"""The runner's error hierarchy. The API maps these to HTTP codes in one middleware."""

from __future__ import annotations

from typing import Any


class RunnerError(Exception):
    """Base of every error the runner raises on purpose."""


class ConfigError(RunnerError):
    """A setting or the backends file is wrong: start-up stops (exit code 2)."""


class StartupError(RunnerError):
    """The service cannot start: the port is taken, the database cannot be reached. The
    message is one line, for a person, and names what failed (never a password)."""


class MigrationError(RunnerError):
    """The migrations on disk disagree with what the database has applied."""


class JobError(RunnerError):
    """A request about a job that cannot be honoured as asked."""

    code = "invalid_request"

    def __init__(self, message: str, **extra: Any) -> None:
        super().__init__(message)
        self.message = message
        self.extra = extra


class JobNotFound(JobError):
    code = "not_found"


class JobForbidden(JobError):
    code = "forbidden"


class NotCancellable(JobError):
    code = "not_cancellable"


class NotRerunnable(JobError):
    code = "not_rerunnable"


class QuotaExceeded(JobError):
    code = "quota_exceeded"


class RateExceeded(JobError):
    """More submits (and re-runs) in the last minute than the wallet may make."""

    code = "rate_limited"


class IdempotencyConflict(JobError):
    code = "idempotency_conflict"


class UnknownBackend(JobError):
    code = "unknown_backend"


class BackendError(RunnerError):
    """A backend answered something other than a result."""

    def __init__(self, message: str, *, retry_after: float | None = None) -> None:
        super().__init__(message)
        self.retry_after = retry_after


class TransientBackendError(BackendError):
    """Worth another try: connection errors, timeouts, 5xx, 429."""


class PermanentBackendError(BackendError):
    """Not worth another try: a 4xx, an unexpected answer, a failed job."""


class InvalidJson(RunnerError):
    """Text that is not JSON."""


class Unstorable(RunnerError):
    """A value Postgres would refuse (runner.storable), and where it is."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{problem} at {path}")
        self.path = path
        self.problem = problem
