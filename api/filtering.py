"""The job filter as a request gives it: query parameters on GET /jobs, body fields on
POST /jobs/cancel (runner.filters turns it into SQL). Anything unknown or malformed is a 400
naming it."""

from __future__ import annotations

import uuid
from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any

from multidict import MultiMapping

from api.errors import BadRequest
from api.validation import MAX_NAME_CHARS, parse_time
from runner.filters import MAX_IDS, JobFilter
from runner.statuses import ACTIVE, STATUSES
from runner.storable import text_problem

META_PREFIX = "meta."
# The query parameters GET /jobs takes besides the filter's.
PAGING = frozenset({"limit", "cursor"})
QUERY_FIELDS = frozenset({"status", "statuses", "backends", "created_after", "created_before", "ids"})
BODY_FIELDS = frozenset(
    {"status", "statuses", "backends", "metadata", "created_after", "created_before", "ids"}
)


def _statuses(values: Iterable[str], allowed: tuple[str, ...], where: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(values))
    bad = [s for s in found if s not in allowed]
    if bad or not found:
        raise BadRequest(f"'{where}': unknown status {(bad or [''])[0][:50]!r}; one of {', '.join(allowed)}")
    return found


def _backends(values: Iterable[str], where: str) -> tuple[str, ...]:
    found = tuple(dict.fromkeys(values))
    if not found or not all(0 < len(b) <= MAX_NAME_CHARS for b in found):
        raise BadRequest(f"'{where}' must name one or more backends")
    _storable(found, where)
    return found


def _storable(texts: Iterable[str], where: str) -> None:
    """A query's text reaches Postgres unchecked by the body reader: what its text type
    refuses is the caller's mistake, a 400, not a 500."""
    for text in texts:
        if (problem := text_problem(text)) is not None:
            raise BadRequest(f"'{where[:60]}' holds {problem}")


def _ids(values: Iterable[str], where: str) -> tuple[uuid.UUID, ...]:
    raw = list(values)
    if len(raw) > MAX_IDS:
        raise BadRequest(f"'{where}': at most {MAX_IDS} ids, got {len(raw)}")
    try:
        return tuple(dict.fromkeys(uuid.UUID(x) for x in raw))
    except ValueError:
        raise BadRequest(f"'{where}' must be job ids (UUIDs)") from None


def _range(after: datetime | None, before: datetime | None) -> None:
    if after is not None and before is not None and after >= before:
        raise BadRequest("'created_after' must be before 'created_before'")


def _metadata_value(key: str, value: Any) -> Any:
    # A scalar: `metadata @>` with an object or a list would match by containment, not equality.
    if value is not None and not isinstance(value, str | int | float | bool):
        raise BadRequest(f"'metadata.{key[:50]}': a filter matches strings, numbers, booleans or null")
    return value


def _split(values: list[str]) -> list[str]:
    return [part.strip() for value in values for part in value.split(",") if part.strip()]


def parse_query_filter(query: MultiMapping[str]) -> JobFilter:
    """GET /jobs: `status`/`statuses`, `backends`, `ids` (each one or a comma list, or
    repeated), `created_after`, `created_before`, `meta.KEY=VALUE` (repeated: all must
    hold; VALUE is matched as a string)."""
    unknown = sorted(k for k in set(query) - QUERY_FIELDS - PAGING if not k.startswith(META_PREFIX))
    if unknown:
        raise BadRequest(
            f"unknown query parameter(s) {', '.join(repr(k[:50]) for k in unknown)}; allowed: "
            f"{', '.join(sorted(QUERY_FIELDS | PAGING))}, meta.KEY"
        )
    for name in ("created_after", "created_before", "limit", "cursor"):
        if len(query.getall(name, [])) > 1:
            raise BadRequest(f"'{name}' is given more than once")
    statuses = _split(query.getall("status", []) + query.getall("statuses", []))
    backends = _split(query.getall("backends", []))
    ids = _split(query.getall("ids", []))
    metadata: dict[str, Any] = {}
    for name, value in query.items():
        if not name.startswith(META_PREFIX):
            continue
        key = name.removeprefix(META_PREFIX)
        if not key:
            raise BadRequest("'meta.' needs a key: meta.KEY=VALUE")
        _storable((key, value), name)
        if metadata.get(key, value) != value:
            raise BadRequest(f"'{name[:60]}' is given twice with different values")
        metadata[key] = value
    after = parse_time("created_after", query.get("created_after"))
    before = parse_time("created_before", query.get("created_before"))
    _range(after, before)
    return JobFilter(
        statuses=_statuses(statuses, STATUSES, "status") if statuses else None,
        backends=_backends(backends, "backends") if backends else None,
        metadata=metadata,
        created_after=after,
        created_before=before,
        ids=_ids(ids, "ids") if ids else None,
    )


def _string_list(body: Mapping[str, Any], name: str, *, empty: bool = False) -> list[str] | None:
    value = body.get(name)
    if value is None:
        return None
    if not isinstance(value, list) or not (value or empty) or not all(isinstance(x, str) for x in value):
        raise BadRequest(f"'{name}' must be a non-empty list of strings")
    return value


def _body_statuses(body: Mapping[str, Any]) -> list[str] | None:
    """`status` and/or `statuses`: each one status, a comma list, or a list of them (as a
    query takes them); of 'queued' and 'running', what a cancel can act on."""
    found: list[str] | None = None
    for name in ("status", "statuses"):
        value = body.get(name)
        if value is None:
            continue
        if isinstance(value, str):
            value = [value]
        if not isinstance(value, list) or not value or not all(isinstance(x, str) for x in value):
            raise BadRequest(
                f"'{name}' must be a status, a comma list or a list of 'queued' and/or 'running'"
            )
        found = (found or []) + _split(value)  # the values are checked by _statuses
    return found


def _body_time(body: Mapping[str, Any], name: str) -> datetime | None:
    value = body.get(name)
    if value is not None and not isinstance(value, str):
        raise BadRequest(f"'{name}' must be an ISO 8601 time, such as 2026-11-01T00:00:00Z")
    return parse_time(name, value)


def parse_body_filter(body: Mapping[str, Any], extra: set[str]) -> JobFilter:
    """POST /jobs/cancel: `status`/`statuses` ('queued' and/or 'running': one, a comma list or
    a list), `backends` and
    `ids` (lists), `metadata` (an object: every pair must match), `created_after`,
    `created_before`; `extra`: the route's other fields."""
    allowed = BODY_FIELDS | extra
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"body: unknown field(s) {', '.join(repr(k[:50]) for k in unknown)}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )
    statuses = _body_statuses(body)
    backends = _string_list(body, "backends")
    ids = _string_list(body, "ids", empty=True)  # none: nothing matches (never "all")
    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be an object of KEY: VALUE pairs that must all match")
    after, before = _body_time(body, "created_after"), _body_time(body, "created_before")
    _range(after, before)
    return JobFilter(
        statuses=_statuses(statuses, ACTIVE, "statuses") if statuses is not None else None,
        backends=_backends(backends, "backends") if backends is not None else None,
        metadata={k: _metadata_value(k, v) for k, v in metadata.items()},
        created_after=after,
        created_before=before,
        ids=_ids(ids, "ids") if ids is not None else None,
    )
