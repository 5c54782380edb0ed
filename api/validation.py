"""What a submit or cancel body may say; anything else is a 400 with its reason."""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from api.errors import BadRequest
from runner.backends.config import BackendSpec
from runner.errors import JobNotFound, UnknownBackend
from runner.jobs import NewExecution
from runner.timeutil import parse_iso
from runner.webhooks.addresses import Refused, check_url

MAX_EXECUTIONS = 64
MAX_METADATA_BYTES = 16 * 1024
MAX_TIMEOUT_S = 86400
MAX_REASON_CHARS = 500
MAX_NAME_CHARS = 200
MAX_IDEMPOTENCY_KEY = 255
MAX_CONCURRENCY_KEY = 255
SUBMIT_FIELDS = {
    "executions",
    "timeout_s",
    "metadata",
    "webhook",
    "webhook_events",
    "concurrency_key",
    "on_conflict",
}
WEBHOOK_EVENTS = ("started", "completed", "failed", "cancelled", "remote_stopped")


@dataclass(frozen=True, slots=True)
class Submission:
    executions: list[NewExecution]
    timeout_s: int | None
    metadata: dict[str, Any]
    webhook: str | None = None
    webhook_events: list[str] | None = None  # with a webhook: the events it gets (default all)
    concurrency_key: str | None = None
    supersede: bool = False  # on_conflict: cancel the wallet's active jobs with the same key


def _only(body: Mapping[str, Any], allowed: set[str], where: str) -> None:
    unknown = sorted(set(body) - allowed)
    if unknown:
        raise BadRequest(
            f"{where}: unknown field(s) {', '.join(map(repr, unknown))}; "
            f"allowed: {', '.join(sorted(allowed))}"
        )


# RunPod decodes `input` into an object (runpodctl cmd/serverless/run.go); Replicate's and
# fal's inputs are objects of named parameters.
OBJECT_INPUT_KINDS = frozenset({"runpod", "replicate", "fal"})


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def parse_id(value: str, what: str = "job") -> uuid.UUID:
    """An id from a URL; one that is not a UUID names nothing (404)."""
    try:
        return uuid.UUID(value)
    except ValueError:
        raise JobNotFound(f"no {what} {value!r}") from None


def parse_submission(
    body: Mapping[str, Any], backends: Mapping[str, BackendSpec], *, allow_http: bool = False
) -> Submission:
    _only(body, SUBMIT_FIELDS, "body")
    executions = body.get("executions")
    if not isinstance(executions, list) or not executions:
        raise BadRequest("'executions' must be a non-empty list")
    if len(executions) > MAX_EXECUTIONS:
        raise BadRequest(f"at most {MAX_EXECUTIONS} executions per job, got {len(executions)}")
    parsed = []
    for i, item in enumerate(executions):
        where = f"executions[{i}]"
        if not isinstance(item, dict):
            raise BadRequest(f"{where} must be an object")
        _only(item, {"backend", "input", "name"}, where)
        backend = item.get("backend")
        if not isinstance(backend, str) or not backend:
            raise BadRequest(f"{where}.backend must be a backend name")
        if backend not in backends:
            raise UnknownBackend(
                f"{where}.backend: no backend named {backend[:100]!r}; "
                f"configured: {', '.join(sorted(backends))}"
            )
        name = item.get("name")
        if name is not None and (not isinstance(name, str) or len(name) > MAX_NAME_CHARS):
            raise BadRequest(f"{where}.name must be a string of at most {MAX_NAME_CHARS} characters")
        value = item.get("input", {})
        kind = backends[backend].kind
        if kind in OBJECT_INPUT_KINDS and not isinstance(value, dict):
            # The provider would refuse it after the job was queued.
            raise BadRequest(
                f"$.executions[{i}].input must be a JSON object for backend {backend!r} (kind {kind})"
            )
        parsed.append(NewExecution(backend=backend, input=value, name=name))

    timeout_s = body.get("timeout_s")
    if timeout_s is not None and (not _is_int(timeout_s) or not 1 <= timeout_s <= MAX_TIMEOUT_S):
        raise BadRequest(f"'timeout_s' must be a whole number of seconds from 1 to {MAX_TIMEOUT_S}, or null")

    metadata = body.get("metadata", {})
    if not isinstance(metadata, dict):
        raise BadRequest("'metadata' must be an object")
    if len(json.dumps(metadata, separators=(",", ":")).encode()) > MAX_METADATA_BYTES:
        raise BadRequest(f"'metadata' is larger than {MAX_METADATA_BYTES // 1024} KiB")
    webhook, events = parse_webhook(body, allow_http=allow_http)
    key, supersede = parse_concurrency(body)
    return Submission(parsed, timeout_s, metadata, webhook, events, key, supersede)


def parse_concurrency(body: Mapping[str, Any]) -> tuple[str | None, bool]:
    """`concurrency_key` (stored on the job) and `on_conflict` ("cancel_running": cancel the
    wallet's active jobs with that key)."""
    key, on_conflict = body.get("concurrency_key"), body.get("on_conflict")
    if key is not None and (
        not isinstance(key, str) or not 1 <= len(key) <= MAX_CONCURRENCY_KEY or not key.isprintable()
    ):
        raise BadRequest(f"'concurrency_key' must be 1-{MAX_CONCURRENCY_KEY} printable characters")
    if on_conflict is None:
        return key, False
    if on_conflict != "cancel_running":
        raise BadRequest("'on_conflict' must be \"cancel_running\" (or absent)")
    if key is None:
        raise BadRequest("'on_conflict' needs a 'concurrency_key'")
    return key, True


def parse_webhook(body: Mapping[str, Any], *, allow_http: bool) -> tuple[str | None, list[str] | None]:
    """The webhook URL's form and its events; where its host leads is checked by the caller
    (it takes a DNS lookup: runner.webhooks.addresses.check_destination)."""
    url, events = body.get("webhook"), body.get("webhook_events")
    if url is None:
        if events is not None:
            raise BadRequest("'webhook_events' needs a 'webhook'")
        return None, None
    try:
        check_url(url, allow_http=allow_http)
    except Refused as exc:
        raise BadRequest(f"'webhook' {exc}") from None
    if events is None:
        return url, list(WEBHOOK_EVENTS)
    if (
        not isinstance(events, list)
        or not events
        or not all(isinstance(e, str) and e in WEBHOOK_EVENTS for e in events)
    ):
        raise BadRequest(f"'webhook_events' must be a non-empty list of: {', '.join(WEBHOOK_EVENTS)}")
    return url, [e for e in WEBHOOK_EVENTS if e in events]


def parse_reason(body: Mapping[str, Any], extra: set[str] | None = None) -> str | None:
    _only(body, {"reason"} | (extra or set()), "body")
    reason = body.get("reason")
    if reason is not None and (not isinstance(reason, str) or len(reason) > MAX_REASON_CHARS):
        raise BadRequest(f"'reason' must be a string of at most {MAX_REASON_CHARS} characters")
    return reason


def parse_limit(value: str | None, default: int = 50, maximum: int = 200) -> int:
    if value is None:
        return default
    try:
        limit = int(value)
    except ValueError:
        raise BadRequest(f"'limit' must be a whole number from 1 to {maximum}") from None
    if not 1 <= limit <= maximum:
        raise BadRequest(f"'limit' must be from 1 to {maximum}")
    return limit


def parse_rerun(body: Mapping[str, Any]) -> list[uuid.UUID] | None:
    """The executions a re-run runs again (None: every one that did not complete)."""
    _only(body, {"executions"}, "body")
    named = body.get("executions")
    if named is None:
        return None
    if not isinstance(named, list) or not all(isinstance(x, str) for x in named):
        raise BadRequest("'executions' must be a list of execution ids")
    try:
        return [uuid.UUID(x) for x in named]
    except ValueError:
        raise BadRequest("'executions' must be a list of execution ids (UUIDs)") from None


def parse_time(name: str, value: str | None) -> datetime | None:
    """An ISO 8601 time from a query string (a date alone is its midnight UTC)."""
    if value is None or value == "":
        return None
    try:
        return parse_iso(value)
    except (ValueError, OverflowError):
        raise BadRequest(f"'{name}' must be an ISO 8601 time, such as 2026-11-01T00:00:00Z") from None


def parse_bool(name: str, value: str | None) -> bool:
    if value is None or value in ("false", "0", ""):
        return False
    if value in ("true", "1"):
        return True
    raise BadRequest(f"'{name}' must be true or false")


def parse_idempotency_key(value: str | None) -> str | None:
    if value is None:
        return None
    if not 1 <= len(value) <= MAX_IDEMPOTENCY_KEY or not value.isprintable():
        raise BadRequest(f"Idempotency-Key must be 1-{MAX_IDEMPOTENCY_KEY} printable characters")
    return value
