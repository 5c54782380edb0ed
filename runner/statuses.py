"""The statuses of jobs and executions, and which are active or terminal (terminal is final:
no write ever leaves one). Shared by the daemon, the API and the command line."""

STATUSES = ("queued", "running", "completed", "failed", "cancelled")
ACTIVE = ("queued", "running")
TERMINAL = ("completed", "failed", "cancelled")
