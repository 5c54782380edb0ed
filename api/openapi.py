"""GET /openapi.json: the OpenAPI 3 document of every route.

A test compares it with the router, so a route cannot be added without being documented.
"""

from __future__ import annotations

from typing import Any

from aiohttp import web

from runner import __version__


def _ref(name: str) -> dict[str, str]:
    return {"$ref": f"#/components/schemas/{name}"}


def _json(schema: dict[str, Any], description: str = "OK") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _errors(*codes: int) -> dict[str, Any]:
    meaning = {
        400: "Bad request",
        401: "Not signed in / sign-in refused",
        403: "Another wallet's job",
        404: "No such job or route",
        409: "Not cancellable / idempotency conflict",
        413: "Body over 1 MiB",
        415: "Not JSON",
        429: "Quota or rate limit",
        503: "Not ready, or the database (or, at sign-in, the chain's RPC) did not answer (retry)",
    }
    return {str(c): _json(_ref("Error"), meaning[c]) for c in codes}


_TIME = {"type": ["string", "null"], "format": "date-time"}
_ID = {"type": "string", "format": "uuid"}
_SESSION: list[dict[str, list[str]]] = [{"bearer": []}, {"cookie": []}]
_JOB_PATH = {"name": "job_id", "in": "path", "required": True, "schema": _ID}
# The job filter (api.filtering): as GET /jobs's query, and as POST /jobs/cancel's body.
_LIST = {"type": "string", "description": "one, or a comma list (or the parameter repeated)"}
_FILTER_QUERY = [
    {"name": "status", "in": "query", "schema": _LIST, "description": "statuses; `statuses` is the same"},
    {"name": "statuses", "in": "query", "schema": _LIST},
    {"name": "backends", "in": "query", "schema": _LIST, "description": "jobs with an execution on any"},
    {
        "name": "meta.KEY",
        "in": "query",
        "schema": {"type": "string"},
        "description": "repeatable, one per key: the job's metadata has KEY set to this string",
    },
    {"name": "created_after", "in": "query", "schema": {"type": "string", "format": "date-time"}},
    {
        "name": "created_before",
        "in": "query",
        "schema": {"type": "string", "format": "date-time"},
        "description": "exclusive; created_after is inclusive (ISO 8601; a date is its midnight UTC)",
    },
    {"name": "ids", "in": "query", "schema": _LIST, "description": "job ids, at most 1,000"},
]
_BODY_STATUSES = {
    "oneOf": [
        {"type": "array", "minItems": 1, "items": {"enum": ["queued", "running"]}},
        {"type": "string", "description": "one status, or a comma list"},
    ]
}
_FILTER_BODY = {
    "status": _BODY_STATUSES,
    "statuses": _BODY_STATUSES,
    "backends": {"type": "array", "minItems": 1, "items": {"type": "string"}},
    "metadata": {
        "type": "object",
        "additionalProperties": {"type": ["string", "number", "boolean", "null"]},
        "description": "every pair must be in the job's metadata, exactly",
    },
    "created_after": {"type": "string", "format": "date-time", "description": "inclusive"},
    "created_before": {"type": "string", "format": "date-time", "description": "exclusive"},
    "ids": {"type": "array", "maxItems": 1000, "items": _ID, "description": "empty: matches nothing"},
}
_REASON_BODY = {
    "required": False,
    "content": {
        "application/json": {
            "schema": {
                "type": "object",
                "additionalProperties": False,
                "properties": {"reason": {"type": "string", "maxLength": 500}},
            }
        }
    },
}

ERROR_EXAMPLE = {
    "ok": False,
    "error": "not_cancellable",
    "message": "the job is completed; only queued or running ones can be cancelled",
    "status": "completed",
}

SCHEMAS: dict[str, Any] = {
    "Error": {
        "type": "object",
        "required": ["ok", "error", "message"],
        "properties": {
            "ok": {"const": False},
            "error": {
                "type": "string",
                "enum": [
                    "invalid_request",
                    "unknown_backend",
                    "unauthenticated",
                    "invalid_message",
                    "invalid_domain",
                    "invalid_nonce",
                    "expired",
                    "invalid_chain",
                    "invalid_signature",
                    "forbidden",
                    "not_found",
                    "method_not_allowed",
                    "not_cancellable",
                    "idempotency_conflict",
                    "payload_too_large",
                    "unsupported_media_type",
                    "quota_exceeded",
                    "rate_limited",
                    "internal_error",
                    "unavailable",
                ],
            },
            "message": {"type": "string", "description": "for a person: show it as it is"},
            "status": {"type": "string", "description": "with not_cancellable: the job's status"},
        },
        "example": ERROR_EXAMPLE,
    },
    "Execution": {
        "type": "object",
        "properties": {
            "id": _ID,
            "name": {"type": ["string", "null"]},
            "backend": {"type": "string"},
            "input": {"description": "the input as submitted"},
            "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
            "remote_id": {"type": ["string", "null"]},
            "attempts": {"type": "integer"},
            "started_at": _TIME,
            "finished_at": _TIME,
            "output": {},
            "error": {"type": ["string", "null"]},
            "remote_cancel": {"enum": [None, "pending", "acknowledged", "confirmed", "failed", "gone"]},
            "remote_stopped_at": _TIME,
            "gpu_seconds": {
                "type": ["number", "null"],
                "description": "the provider's figure, or the time it ran",
            },
        },
    },
    "Job": {
        "type": "object",
        "properties": {
            "id": _ID,
            "owner": {"type": "string"},
            "status": {"enum": ["queued", "running", "completed", "failed", "cancelled"]},
            "created_at": _TIME,
            "started_at": _TIME,
            "finished_at": _TIME,
            "cancelled_at": _TIME,
            "cancelled_by": {"type": ["string", "null"]},
            "cancel_reason": {"type": ["string", "null"]},
            "timeout_s": {"type": ["integer", "null"]},
            "metadata": {"type": "object"},
            "error": {"type": ["string", "null"]},
            "gpu_seconds": {"type": ["number", "null"]},
            "rerun_of": {"type": ["string", "null"], "format": "uuid"},
            "webhook": {"type": ["string", "null"], "format": "uri"},
            "webhook_events": {"type": ["array", "null"], "items": _ref("WebhookEvent")},
            "concurrency_key": {"type": ["string", "null"], "maxLength": 255},
            "executions": {"type": "array", "items": _ref("Execution")},
        },
    },
    "WebhookEvent": {
        "enum": ["started", "completed", "failed", "cancelled", "remote_stopped"],
        "description": "remote_stopped: the provider reported cancelled work over",
    },
    "WebhookSecret": {
        "type": "object",
        "properties": {
            "secret": {
                "type": "string",
                "pattern": "^whsec_",
                "description": "Standard Webhooks signing secret (whsec_<base64>)",
            }
        },
    },
    "Submit": {
        "type": "object",
        "required": ["executions"],
        "additionalProperties": False,
        "properties": {
            "executions": {
                "type": "array",
                "minItems": 1,
                "maxItems": 64,
                "items": {
                    "type": "object",
                    "required": ["backend"],
                    "additionalProperties": False,
                    "properties": {
                        "backend": {"type": "string"},
                        "input": {},
                        "name": {"type": "string", "maxLength": 200},
                    },
                },
            },
            "timeout_s": {"type": ["integer", "null"], "minimum": 1, "maximum": 86400},
            "metadata": {"type": "object", "description": "at most 16 KiB"},
            "webhook": {
                "type": "string",
                "format": "uri",
                "maxLength": 2048,
                "description": "POSTed each event, signed the Standard Webhooks way (see /webhooks/secret); "
                "https only (http with RUNNER_WEBHOOK_ALLOW_HTTP=1); a host resolving to a "
                "loopback, private, link-local, multicast or metadata address is a 400 "
                "(unless RUNNER_WEBHOOK_ALLOW_PRIVATE=1)",
            },
            "webhook_events": {
                "type": "array",
                "minItems": 1,
                "items": _ref("WebhookEvent"),
                "description": "which events; default all (needs webhook)",
            },
            "concurrency_key": {
                "type": "string",
                "minLength": 1,
                "maxLength": 255,
                "description": "printable characters, kept on the job",
            },
            "on_conflict": {
                "const": "cancel_running",
                "description": "needs concurrency_key: the wallet's queued and running jobs with that "
                "key are cancelled (reason superseded) in the transaction that creates this one",
            },
        },
    },
    "CancelReply": {
        "type": "object",
        "properties": {
            "ok": {"const": True},
            "job_id": _ID,
            "previous_status": {"type": "string"},
            "new_status": {"const": "cancelled"},
            "context_cancelled": {"type": "boolean"},
            "executions_cancelled": {"type": "integer"},
            "cancelled_at": _TIME,
            "stopped": {"type": "boolean", "description": "with ?wait=true"},
        },
    },
    "Event": {
        "type": "object",
        "properties": {
            "at": _TIME,
            "kind": {"type": "string"},
            "actor": {"type": "string"},
            "detail": {"type": "object"},
        },
    },
}


_JOB_ID = "6f1c2a4e-8d1b-4c3a-9e2f-1a2b3c4d5e6f"
_EXAMPLE_JOB = {
    "id": _JOB_ID,
    "owner": "0x8ba1f109551bD432803012645Ac136ddd64DBA72",
    "status": "running",
    "created_at": "2026-11-30T12:00:00.000Z",
    "started_at": "2026-11-30T12:00:00.020Z",
    "finished_at": None,
    "cancelled_at": None,
    "cancelled_by": None,
    "cancel_reason": None,
    "timeout_s": 900,
    "metadata": {"project": "demo"},
    "error": None,
    "gpu_seconds": None,
    "rerun_of": None,
    "webhook": "https://api.example.com/hooks/runner",
    "webhook_events": ["completed", "failed"],
    "concurrency_key": None,
    "executions": [
        {
            "id": "0b9d7c1e-2f3a-4b5c-8d6e-7f8091a2b3c4",
            "name": None,
            "backend": "demo",
            "input": {"seconds": 30},
            "status": "running",
            "remote_id": None,
            "attempts": 1,
            "started_at": "2026-11-30T12:00:00.020Z",
            "finished_at": None,
            "output": None,
            "error": None,
            "remote_cancel": None,
        }
    ],
}
# One example answer per route (the 2xx one); the error shape's example is on Error.
EXAMPLES: dict[str, Any] = {
    "/auth/nonce": {"nonce": "Xq3vT9kLm2Pz8Rw4A", "expires_at": "2026-11-30T12:10:00.000Z"},
    "/auth/login": {
        "token": "<opaque token>",
        "address": "0x8ba1f109551bD432803012645Ac136ddd64DBA72",
        "expires_at": "2026-12-01T12:00:00.000Z",
    },
    "/auth/logout": {"ok": True},
    "/auth/me": {
        "address": "0x8ba1f109551bD432803012645Ac136ddd64DBA72",
        "admin": False,
        "expires_at": "2026-12-01T12:00:00.000Z",
    },
    "/auth/ticket": {"ticket": "<single-use ticket>", "expires_at": "2026-11-30T12:01:00.000Z"},
    "/jobs": _EXAMPLE_JOB,
    "/jobs/cancel": {"ok": True, "cancelled": [_JOB_ID], "count": 1, "executions_cancelled": 1},
    "/jobs/{job_id}": _EXAMPLE_JOB,
    "/jobs/{job_id}/audit": {
        "events": [
            {
                "at": "2026-11-30T12:00:00.000Z",
                "kind": "submitted",
                "actor": "0x8ba1f109551bD432803012645Ac136ddd64DBA72",
                "detail": {"executions": 1},
            },
            {
                "at": "2026-11-30T12:00:05.000Z",
                "kind": "cancelled",
                "actor": "0x8ba1f109551bD432803012645Ac136ddd64DBA72",
                "detail": {"reason": "wrong prompt", "previous_status": "running", "executions_cancelled": 1},
            },
        ]
    },
    "/jobs/{job_id}/cancel": {
        "ok": True,
        "job_id": _JOB_ID,
        "previous_status": "running",
        "new_status": "cancelled",
        "context_cancelled": True,
        "executions_cancelled": 1,
        "cancelled_at": "2026-11-30T12:00:05.000Z",
    },
    "/jobs/{job_id}/executions/{execution_id}/cancel": {
        "ok": True,
        "job_id": _JOB_ID,
        "execution_id": "0b9d7c1e-2f3a-4b5c-8d6e-7f8091a2b3c4",
        "previous_status": "running",
        "new_status": "cancelled",
        "context_cancelled": True,
        "cancelled_at": "2026-11-30T12:00:05.000Z",
    },
    "/jobs/{job_id}/rerun": {
        **_EXAMPLE_JOB,
        "status": "queued",
        "rerun_of": "0d5e1f2a-3b4c-4d5e-8f6a-7b8c9d0e1f2a",
    },
    "/jobs/{job_id}/events": 'data: {"id": "6f1c2a4e-...", "status": "running", ...}\n\n',
    "/events": 'id: 1042\ndata: {"id": "6f1c2a4e-...", "status": "cancelled", ...}\n\n',
    "/backends": {
        "backends": [{"name": "demo", "kind": "demo", "cancels_remotely": False, "concurrency": None}]
    },
    "/usage": {
        "address": "0x8ba1f109551bD432803012645Ac136ddd64DBA72",
        "since": "2026-10-31T12:00:00.000Z",
        "until": "2026-11-30T12:00:00.000Z",
        "jobs": 12,
        "executions": 30,
        "gpu_seconds": 5400.5,
        "backends": {
            "sdxl": {
                "executions": 30,
                "cancelled": 4,
                "gpu_seconds": 5400.5,
                "gpu_seconds_after_cancel": 12.3,
            }
        },
    },
    "/webhooks/secret": {"secret": "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"},
    "/webhooks/secret/rotate": {"secret": "whsec_2ZfTcFZ8nw1CgQ3wSF/3bL1Kb3yA9ZCq"},
    "/healthz": {"ok": True},
    "/readyz": {"ok": True},
    "/metrics": "runner_jobs_running 3.0\n",
    "/openapi.json": {"openapi": "3.1.0"},
    "/": "<!doctype html>...",
    "/portal/{path}": "export function ...",
}


def _with_examples(paths: dict[str, Any]) -> dict[str, Any]:
    for path, operations in paths.items():
        for operation in operations.values():
            for code, response in operation["responses"].items():
                if not code.startswith("2"):
                    continue
                for media in response.get("content", {}).values():
                    media["example"] = EXAMPLES[path]
                if "content" not in response:
                    response["content"] = {"text/plain": {"example": EXAMPLES[path]}}
    return paths


def document(server_url: str = "/") -> dict[str, Any]:
    jobs_errors = _errors(401, 403, 404)
    paths: dict[str, Any] = {
        "/auth/nonce": {
            "get": {
                "summary": "A single-use sign-in nonce (10 minutes)",
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"nonce": {"type": "string"}, "expires_at": _TIME}}
                    ),
                    **_errors(429),
                },
            }
        },
        "/auth/login": {
            "post": {
                "summary": "Sign in with an EIP-4361 message and its personal_sign signature",
                "requestBody": {
                    "required": True,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "required": ["message", "signature"],
                                "properties": {
                                    "message": {"type": "string"},
                                    "signature": {
                                        "type": "string",
                                        "pattern": "^(0x)?([0-9a-fA-F]{2})+$",
                                        "description": "a key's 65 bytes, or a contract wallet's "
                                        "(ERC-1271, ERC-6492; checked on its chain)",
                                    },
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "token": {"type": "string"},
                                "address": {"type": "string"},
                                "expires_at": _TIME,
                            },
                        }
                    ),
                    **_errors(400, 401, 415, 503),
                },
            }
        },
        "/auth/logout": {
            "post": {
                "summary": "Revoke this session everywhere",
                "security": [{"bearer": []}],
                "responses": {"200": _json({"type": "object"}), **_errors(401)},
            }
        },
        "/auth/me": {
            "get": {
                "summary": "The caller's session",
                "security": _SESSION,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "address": {"type": "string"},
                                "admin": {"type": "boolean"},
                                "expires_at": _TIME,
                            },
                        }
                    ),
                    **_errors(401),
                },
            }
        },
        "/auth/ticket": {
            "post": {
                "summary": "A single-use, 60 s ticket for GET /jobs/{job_id}/events?ticket= and "
                "GET /events?ticket=",
                "security": [{"bearer": []}],
                "responses": {
                    "200": _json(
                        {"type": "object", "properties": {"ticket": {"type": "string"}, "expires_at": _TIME}}
                    ),
                    **_errors(401),
                },
            }
        },
        "/jobs": {
            "post": {
                "summary": "Submit a job",
                "security": [{"bearer": []}],
                "parameters": [
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                    }
                ],
                "requestBody": {
                    "required": True,
                    "content": {"application/json": {"schema": _ref("Submit")}},
                },
                "responses": {
                    "201": _json(_ref("Job"), "Created (or the original, on a repeated key)"),
                    **_errors(400, 401, 409, 413, 415, 429, 503),
                },
            },
            "get": {
                "summary": "The caller's jobs, newest first",
                "security": _SESSION,
                "parameters": [
                    *_FILTER_QUERY,
                    {
                        "name": "limit",
                        "in": "query",
                        "schema": {"type": "integer", "minimum": 1, "maximum": 200, "default": 50},
                    },
                    {"name": "cursor", "in": "query", "schema": {"type": "string"}},
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "jobs": {"type": "array", "items": _ref("Job")},
                                "next_cursor": {"type": ["string", "null"]},
                            },
                        },
                        "OK (a filter that matches nothing: no jobs)",
                    ),
                    **_errors(400, 401),
                },
            },
        },
        "/jobs/cancel": {
            "post": {
                "summary": "Cancel the caller's active jobs that match the filter (all without one)",
                "description": "An unknown field is a 400 naming it. `dry_run`: cancel nothing, "
                "answer how many would be cancelled and the first 50 ids (newest first).",
                "security": [{"bearer": []}],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    **_FILTER_BODY,
                                    "reason": {"type": "string", "maxLength": 500},
                                    "dry_run": {"type": "boolean", "default": False},
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "200": _json(
                        {
                            "oneOf": [
                                {
                                    "type": "object",
                                    "properties": {
                                        "ok": {"const": True},
                                        "cancelled": {"type": "array", "items": _ID},
                                        "count": {"type": "integer"},
                                        "executions_cancelled": {"type": "integer"},
                                    },
                                },
                                {
                                    "type": "object",
                                    "description": "with dry_run",
                                    "properties": {
                                        "ok": {"const": True},
                                        "count": {"type": "integer"},
                                        "ids": {"type": "array", "items": _ID, "maxItems": 50},
                                    },
                                },
                            ]
                        }
                    ),
                    **_errors(400, 401),
                },
            }
        },
        "/jobs/{job_id}": {
            "get": {
                "summary": "One job with its executions",
                "security": _SESSION,
                "parameters": [_JOB_PATH],
                "responses": {"200": _json(_ref("Job")), **jobs_errors},
            }
        },
        "/jobs/{job_id}/audit": {
            "get": {
                "summary": "The job's event trail",
                "security": _SESSION,
                "parameters": [_JOB_PATH],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {"events": {"type": "array", "items": _ref("Event")}},
                        }
                    ),
                    **jobs_errors,
                },
            }
        },
        "/jobs/{job_id}/cancel": {
            "post": {
                "summary": "Cancel a job: its task, HTTP calls and backend work stop",
                "security": [{"bearer": []}],
                "parameters": [
                    _JOB_PATH,
                    {
                        "name": "wait",
                        "in": "query",
                        "schema": {"type": "boolean"},
                        "description": "answer once the task has stopped (at most 10 s)",
                    },
                ],
                "requestBody": _REASON_BODY,
                "responses": {"200": _json(_ref("CancelReply")), **_errors(400, 401, 403, 404, 409, 503)},
            }
        },
        "/jobs/{job_id}/executions/{execution_id}/cancel": {
            "post": {
                "summary": "Cancel one execution; the others go on",
                "security": [{"bearer": []}],
                "parameters": [
                    _JOB_PATH,
                    {"name": "execution_id", "in": "path", "required": True, "schema": _ID},
                ],
                "requestBody": _REASON_BODY,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "ok": {"const": True},
                                "job_id": _ID,
                                "execution_id": _ID,
                                "previous_status": {"type": "string"},
                                "new_status": {"const": "cancelled"},
                                "context_cancelled": {"type": "boolean"},
                                "cancelled_at": _TIME,
                            },
                        }
                    ),
                    **_errors(400, 401, 403, 404, 409, 503),
                },
            }
        },
        "/jobs/{job_id}/rerun": {
            "post": {
                "summary": "A new job re-running a cancelled or failed one, keeping what completed",
                "security": [{"bearer": []}],
                "parameters": [
                    _JOB_PATH,
                    {
                        "name": "Idempotency-Key",
                        "in": "header",
                        "required": False,
                        "schema": {"type": "string", "maxLength": 255},
                    },
                ],
                "requestBody": {
                    "required": False,
                    "content": {
                        "application/json": {
                            "schema": {
                                "type": "object",
                                "additionalProperties": False,
                                "properties": {
                                    "executions": {
                                        "type": "array",
                                        "items": _ID,
                                        "description": "run these again "
                                        "(default: every one that did not complete)",
                                    }
                                },
                            }
                        }
                    },
                },
                "responses": {
                    "201": _json(_ref("Job"), "Created (or the original, on a repeated key)"),
                    **_errors(400, 401, 403, 404, 409, 429, 503),
                },
            }
        },
        "/jobs/{job_id}/events": {
            "get": {
                "summary": "Server-sent events: the job as JSON now and at each change; ends after a "
                "terminal status, or after an event `signed_out` when the session ends; a "
                "comment ping every 15 s",
                "security": [*_SESSION, {"ticket": []}],
                "parameters": [_JOB_PATH],
                "responses": {
                    "200": {
                        "description": "text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **jobs_errors,
                    **_errors(429),
                },
            }
        },
        "/events": {
            "get": {
                "summary": "Server-sent events of all the caller's jobs: `id:` an increasing event id, "
                "`data:` "
                "the job JSON at each creation and change; a reconnect with Last-Event-ID replays "
                "what was missed, or sends an event of type `reset`; ends after an event "
                "`signed_out` when the session ends; a comment ping every 15 s; at most "
                "RUNNER_MAX_STREAMS_PER_WALLET open per wallet and instance (429)",
                "security": [*_SESSION, {"ticket": []}],
                "parameters": [
                    {"name": "Last-Event-ID", "in": "header", "required": False, "schema": {"type": "string"}}
                ],
                "responses": {
                    "200": {
                        "description": "text/event-stream",
                        "content": {"text/event-stream": {"schema": {"type": "string"}}},
                    },
                    **_errors(400, 401, 429),
                },
            }
        },
        "/backends": {
            "get": {
                "summary": "The configured backends (no URLs, keys or headers)",
                "security": _SESSION,
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "backends": {
                                    "type": "array",
                                    "items": {
                                        "type": "object",
                                        "properties": {
                                            "name": {"type": "string"},
                                            "kind": {"type": "string"},
                                            "cancels_remotely": {"type": "boolean"},
                                            "concurrency": {"type": ["integer", "null"]},
                                        },
                                    },
                                }
                            },
                        }
                    ),
                    **_errors(401),
                },
            }
        },
        "/usage": {
            "get": {
                "summary": "The caller's spend over its jobs created in [since, until); "
                "default the last 30 days",
                "security": _SESSION,
                "parameters": [
                    {"name": name, "in": "query", "schema": {"type": "string", "format": "date-time"}}
                    for name in ("since", "until")
                ],
                "responses": {
                    "200": _json(
                        {
                            "type": "object",
                            "properties": {
                                "address": {"type": "string"},
                                "since": _TIME,
                                "until": _TIME,
                                "jobs": {"type": "integer"},
                                "executions": {"type": "integer"},
                                "gpu_seconds": {"type": "number"},
                                "backends": {
                                    "type": "object",
                                    "additionalProperties": {
                                        "type": "object",
                                        "properties": {
                                            "executions": {"type": "integer"},
                                            "cancelled": {"type": "integer"},
                                            "gpu_seconds": {"type": "number"},
                                            "gpu_seconds_after_cancel": {"type": "number"},
                                        },
                                    },
                                },
                            },
                        }
                    ),
                    **_errors(400, 401),
                },
            }
        },
        "/webhooks/secret": {
            "get": {
                "summary": "The caller's webhook signing secret, created on first use. Each delivery has "
                "headers webhook-id (the same on every retry), webhook-timestamp and "
                "webhook-signature (v1,<base64 HMAC-SHA256 of id.timestamp.body>); the body is "
                '{"type": "job.<event>", "timestamp", "data": <the job>}',
                "security": _SESSION,
                "responses": {"200": _json(_ref("WebhookSecret")), **_errors(401)},
            }
        },
        "/webhooks/secret/rotate": {
            "post": {
                "summary": "Replace the signing secret; deliveries are signed with the old one too for 24 h",
                "security": _SESSION,
                "responses": {"200": _json(_ref("WebhookSecret")), **_errors(401)},
            }
        },
        "/healthz": {"get": {"summary": "Liveness", "responses": {"200": _json({"type": "object"})}}},
        "/readyz": {
            "get": {
                "summary": "Readiness: database, listener, not draining",
                "responses": {"200": _json({"type": "object"}), **_errors(503)},
            }
        },
        "/metrics": {
            "get": {
                "summary": "Prometheus metrics (on RUNNER_METRICS_PORT when set)",
                "responses": {"200": {"description": "text/plain"}},
            }
        },
        "/openapi.json": {
            "get": {"summary": "This document", "responses": {"200": _json({"type": "object"})}}
        },
        "/": {
            "get": {
                "summary": "The portal page: sign in with a wallet, submit, watch and cancel jobs",
                "responses": {"200": {"description": "text/html"}},
            }
        },
        "/portal/{path}": {
            "get": {
                "summary": "The portal's static files (ES modules, CSS, vendored libraries)",
                "parameters": [
                    {"name": "path", "in": "path", "required": True, "schema": {"type": "string"}}
                ],
                "responses": {"200": {"description": "the file"}, **_errors(404)},
            }
        },
    }
    return {
        "openapi": "3.1.0",
        "info": {
            "title": "runner",
            "version": __version__,
            "description": "GPU jobs on serverless backends whose Cancel really stops them.",
        },
        "servers": [{"url": server_url, "description": "this service"}],
        "paths": _with_examples(paths),
        "components": {
            "schemas": SCHEMAS,
            "securitySchemes": {
                "bearer": {"type": "http", "scheme": "bearer"},
                "cookie": {
                    "type": "apiKey",
                    "in": "cookie",
                    "name": "runner_session",
                    "description": "GET routes only",
                },
                "ticket": {
                    "type": "apiKey",
                    "in": "query",
                    "name": "ticket",
                    "description": "single use, GET /jobs/{job_id}/events only",
                },
            },
        },
    }


async def openapi(request: web.Request) -> web.Response:
    return web.json_response(document(f"{request.scheme}://{request.host}"))
