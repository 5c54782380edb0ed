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
    """A backend answered something other than a result.

    `status`: the HTTP status, if an answer came. `sent`: False only where the request never
    reached the provider (the connection was refused), so nothing can have started there.
    `work_over`: the provider reported the work over (failed, timed out, gone): no cancel is
    owed for it."""

    def __init__(
        self,
        message: str,
        *,
        retry_after: float | None = None,
        status: int | None = None,
        sent: bool = True,
        work_over: bool = False,
    ) -> None:
        super().__init__(message)
        self.retry_after = retry_after
        self.status = status
        self.sent = sent
        self.work_over = work_over

    @property
    def safe_to_resend(self) -> bool:
        """Whether a create may be sent again: only where no paid work can have started -- the
        provider never got it, or throttled it (429). Never after a timeout or a 5xx."""
        return not self.sent or self.status == 429


class TransientBackendError(BackendError):
    """Worth another try: connection errors, timeouts, 5xx, 408, 409, 429."""


class PermanentBackendError(BackendError):
    """Not worth another try: a 4xx, an unexpected answer, a failed job."""


class RemoteGone(PermanentBackendError):
    """The provider no longer knows the work (404 / NOT_FOUND: its record expired): nothing
    more can be learnt of it or sent to it."""

    def __init__(self, message: str, *, status: int | None = 404) -> None:
        super().__init__(message, status=status, work_over=True)


class InvalidJson(RunnerError):
    """Text that is not JSON."""


class Unstorable(RunnerError):
    """A value Postgres would refuse (runner.storable), and where it is."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"{problem} at {path}")
        self.path = path
        self.problem = problem
