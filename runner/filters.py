"""The job filter: which of a wallet's jobs a listing, a bulk cancel's dry run and the bulk
cancel itself act on. Turned into SQL here and nowhere else, so the three always agree."""

from __future__ import annotations

import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

MAX_IDS = 1000


@dataclass(frozen=True, slots=True)
class JobFilter:
    """Every field given must hold (None: no condition). `metadata`: each pair must be in the
    job's metadata, exactly (scalar values). `created_after` is inclusive, `created_before`
    exclusive. `concurrency_key` is not a user filter: it is what a superseding submit
    cancels."""

    statuses: tuple[str, ...] | None = None
    backends: tuple[str, ...] | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    created_after: datetime | None = None
    created_before: datetime | None = None
    ids: tuple[uuid.UUID, ...] | None = None
    concurrency_key: str | None = None


def where(job_filter: JobFilter, args: list[Any], owner: str = "$1", alias: str = "j") -> str:
    """The filter as one SQL condition on the jobs row `alias` of the wallet `owner` (an SQL
    text expression: every statement filters one wallet's jobs); its values are appended to
    `args`, numbered after those already there. Only the fields given are in it: the plans
    stay index scans however few fields a filter names (the pool forces generic plans, which
    an `$n IS NULL OR ...` would defeat)."""

    def param(value: Any) -> str:
        args.append(value)
        return f"${len(args)}"

    f, a = job_filter, alias
    conditions = []
    if f.statuses is not None:
        conditions.append(f"{a}.status = ANY({param(list(f.statuses))}::text[])")
    if f.backends is not None:
        # A job's backends are kept on the job (migration 0007): any of them will do.
        conditions.append(f"{a}.backends && {param(list(f.backends))}::text[]")
    if f.metadata:
        # The expression of jobs_owned_metadata_idx (migration 0016): the pairs under the owner.
        conditions.append(
            f"jsonb_set('{{}}', ARRAY[{a}.owner], {a}.metadata) "
            f"@> jsonb_build_object({owner}::text, {param(f.metadata)}::jsonb)"
        )
    if f.created_after is not None:
        conditions.append(f"{a}.created_at >= {param(f.created_after)}::timestamptz")
    if f.created_before is not None:
        conditions.append(f"{a}.created_at < {param(f.created_before)}::timestamptz")
    if f.ids is not None:
        conditions.append(f"{a}.id = ANY({param(list(f.ids))}::uuid[])")
    if f.concurrency_key is not None:
        conditions.append(f"{a}.concurrency_key = {param(f.concurrency_key)}::text")
    return " AND ".join(conditions) or "true"
