"""The JSON the API answers with: jobs, audit events and cancel outcomes, rendered from what
the daemon returns (rows and outcome dataclasses). Times are ISO 8601 UTC ending in Z."""

from __future__ import annotations

from typing import Any

from runner.cancel.canceller import BulkCancel, DryRun, ExecutionCancel, JobCancel
from runner.jobs import JobRow
from runner.timeutil import iso


def job(row: JobRow) -> dict[str, Any]:
    return {
        "id": str(row["id"]),
        "owner": row["owner"],
        "status": row["status"],
        "created_at": iso(row["created_at"]),
        "started_at": iso(row["started_at"]),
        "finished_at": iso(row["finished_at"]),
        "cancelled_at": iso(row["cancelled_at"]),
        "cancelled_by": row["cancelled_by"],
        "cancel_reason": row["cancel_reason"],
        "timeout_s": row["timeout_s"],
        "metadata": row["metadata"],
        "error": row["error"],
        "gpu_seconds": row["gpu_seconds"],
        "rerun_of": str(row["rerun_of"]) if row["rerun_of"] else None,
        "webhook": row["webhook"],
        "webhook_events": row["webhook_events"],
        "concurrency_key": row["concurrency_key"],
        "executions": row["executions"],
    }


def audit_event(row: JobRow) -> dict[str, Any]:
    execution = {"execution_id": str(row["execution_id"])} if row["execution_id"] else {}
    return {
        "at": iso(row["at"]),
        "kind": row["kind"],
        "actor": row["actor"],
        "detail": {**row["detail"], **execution},
    }


def job_cancel(outcome: JobCancel) -> dict[str, Any]:
    return {
        "ok": True,
        "job_id": str(outcome.job_id),
        "previous_status": outcome.previous_status,
        "new_status": "cancelled",
        "context_cancelled": outcome.context_cancelled,
        "executions_cancelled": outcome.executions_cancelled,
        "cancelled_at": iso(outcome.cancelled_at),
    }


def execution_cancel(outcome: ExecutionCancel) -> dict[str, Any]:
    return {
        "ok": True,
        "job_id": str(outcome.job_id),
        "execution_id": str(outcome.execution_id),
        "previous_status": outcome.previous_status,
        "new_status": "cancelled",
        "context_cancelled": outcome.context_cancelled,
        "cancelled_at": iso(outcome.cancelled_at),
    }


def bulk_cancel(outcome: BulkCancel) -> dict[str, Any]:
    return {
        "ok": True,
        "cancelled": [str(i) for i in outcome.job_ids],
        "count": len(outcome.job_ids),
        "executions_cancelled": outcome.executions_cancelled,
    }


def dry_run(found: DryRun) -> dict[str, Any]:
    return {"ok": True, "count": found.count, "ids": [str(i) for i in found.first_ids]}
