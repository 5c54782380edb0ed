"""The cancel NOTIFY: its channel and payload format, encoded (as SQL, inside the cancel
statements) and decoded (by every instance that runs jobs) here and nowhere else.

Payloads, on channel `runner_cancel`:
- `<job>`: one job was cancelled;
- `<job>:<execution>`: one execution was cancelled, the job goes on;
- `<instance>;<job>,<job>,...`: a bulk cancel (cancel-all), up to BULK_IDS job ids a
  notification (payloads are limited to 8000 bytes); the sending instance has signalled its
  own tasks already, and skips it.
NOTIFY is a wake-up hint: a lost one is made good by the lease renewal, which reads the rows.
"""

from __future__ import annotations

import uuid

import structlog

log = structlog.get_logger("runner.cancel")

CHANNEL = "runner_cancel"
BULK_IDS = 200


def job_sql(job: str) -> str:
    """SQL sending the notification for a cancelled job (`job`: an SQL uuid expression)."""
    return f"pg_notify('{CHANNEL}', {job}::text)"


def execution_sql(job: str, execution: str) -> str:
    return f"pg_notify('{CHANNEL}', {job}::text || ':' || {execution}::text)"


def bulk_sql(origin: str, ids: str) -> str:
    """SQL sending one notification per BULK_IDS ids: `ids` is a set-returning SQL query of
    job ids, `origin` an SQL text expression naming the sending instance."""
    return f"""SELECT pg_notify('{CHANNEL}', {origin} || ';' || string_agg(id::text, ','))
        FROM (SELECT id, (row_number() OVER ()) / {BULK_IDS} AS chunk FROM ({ids}) ids) c
        GROUP BY chunk"""


def decode(payload: str, instance_id: str) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """The (job, execution or None) pairs a notification names, less a bulk cancel this
    instance sent itself. Malformed entries are logged and skipped."""
    origin, bulk, jobs = payload.partition(";")
    if bulk:
        if origin == instance_id:
            return []
        payload = jobs
    found = []
    for entry in payload.split(","):
        job, _, execution = entry.partition(":")
        try:
            found.append((uuid.UUID(job), uuid.UUID(execution) if execution else None))
        except ValueError:
            log.warning("bad_cancel_notification", payload=entry[:100])
    return found
