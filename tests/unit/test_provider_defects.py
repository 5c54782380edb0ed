"""The providers as they really behave (issue 24), one test per defect, against mocked HTTP.
Each of these failed before its fix."""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator
from types import SimpleNamespace
from typing import Any

import aiohttp
import pytest
import structlog
from yarl import URL

from runner.backends import CancelOutcome, ExecutionCall, build_backend
from runner.backends.config import BackendSpec
from runner.backends.fal import FalBackend
from runner.backends.replicate import ReplicateBackend
from runner.backends.runpod import RunPodBackend
from runner.errors import BackendError, PermanentBackendError, RemoteGone
from tests.mock_http import aioresponses_ as aioresponses

RP = "https://rp.test/v2/ep1"
REP = "https://rep.test/v1"
FAL = "https://fal.test"
WEEK_MS = 7 * 24 * 3600 * 1000


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _call(
    remote_id: str | None = None, deadline_s: float | None = None, urls: dict[str, str] | None = None
) -> tuple[ExecutionCall, list[Any]]:
    seen: list[Any] = []

    async def on_remote_id(rid: str, attempts: int, urls: dict[str, str] | None) -> None:
        seen.append((rid, attempts, urls))

    call = ExecutionCall(
        uuid.uuid4(),
        uuid.uuid4(),
        {"prompt": "x"},
        remote_id=remote_id,
        remote_urls=urls,
        on_remote_id=on_remote_id,
        deadline_s=deadline_s,
    )
    call.on_unknown_status = lambda status: seen.append(("unknown", status))
    return call, seen


def _fast(backend: Any) -> Any:
    backend.backoff_base_s = 0.001
    backend.backoff_cap_s = 0.002
    backend.deadline_grace_s = 0.0
    return backend


def _runpod(session: aiohttp.ClientSession, **kw: Any) -> RunPodBackend:
    return _fast(
        RunPodBackend(
            BackendSpec(
                name="rp",
                kind="runpod",
                base_url="https://rp.test/v2",
                endpoint_id="ep1",
                api_key="k",
                poll_interval_s=0.001,
                **kw,
            ),
            session,
        )
    )


def _replicate(session: aiohttp.ClientSession, **kw: Any) -> ReplicateBackend:
    return _fast(
        ReplicateBackend(
            BackendSpec(name="r", kind="replicate", base_url=REP, version="v", poll_interval_s=0.001, **kw),
            session,
        )
    )


def _fal(session: aiohttp.ClientSession, model: str = "fal-ai/flux/dev", **kw: Any) -> FalBackend:
    return _fast(
        FalBackend(
            BackendSpec(
                name="f", kind="fal", base_url=FAL, model=model, api_key="fk", poll_interval_s=0.001, **kw
            ),
            session,
        )
    )


def _requests(m: aioresponses, method: str, url: str) -> list[Any]:
    return list(m.requests.get((method, URL(url)), []))


def _refused() -> aiohttp.ClientConnectorError:
    """A connection that never reached the provider."""
    key = SimpleNamespace(host="rp.test", port=443, ssl=True)
    return aiohttp.ClientConnectorError(key, ConnectionRefusedError(111, "Connection refused"))  # type: ignore[arg-type]


# -- unknown statuses, RunPod's RUNNING ---------------------------------------------------------


async def test_runpod_running_is_still_running(session: aiohttp.ClientSession) -> None:
    """job-states.mdx documents RUNNING: "A worker has picked up the job"."""
    call, _ = _call()
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc", "status": "IN_QUEUE"})
        for status in ("IN_QUEUE", "RUNNING", "IN_PROGRESS"):
            m.get(f"{RP}/status/abc", payload={"id": "abc", "status": status})
        m.get(f"{RP}/status/abc", payload={"id": "abc", "status": "COMPLETED", "output": 1})
        assert await _runpod(session).run(call) == 1


async def test_an_unknown_status_is_waited_out_logged_once_and_counted(
    session: aiohttp.ClientSession,
) -> None:
    call, seen = _call()
    with aioresponses() as m, structlog.testing.capture_logs() as logs:
        m.post(f"{RP}/run", payload={"id": "abc"})
        for _ in range(3):
            m.get(f"{RP}/status/abc", payload={"id": "abc", "status": "SOMETHING_NEW"})
        m.get(f"{RP}/status/abc", payload={"id": "abc", "status": "COMPLETED", "output": 2})
        assert await _runpod(session).run(call) == 2
    assert next(e for e in logs if e["event"] == "remote_status_unknown")["status"] == "SOMETHING_NEW"
    assert len([e for e in logs if e["event"] == "remote_status_unknown"]) == 1
    assert seen.count(("unknown", "SOMETHING_NEW")) == 1


# -- failed polls never fail healthy work ------------------------------------------------------


async def test_throttled_and_failed_polls_back_off_and_poll_again(session: aiohttp.ClientSession) -> None:
    """RunPod and Replicate promise no Retry-After: a burst of 429s (and 5xx, 408, 409, a
    dropped connection, a timeout) must not fail or cancel the work."""
    call, _ = _call()
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc"})
        for _ in range(6):
            m.get(f"{RP}/status/abc", status=429, body="")
        m.get(f"{RP}/status/abc", status=503, body="busy")
        m.get(f"{RP}/status/abc", status=408, body="")
        m.get(f"{RP}/status/abc", status=409, body="")
        m.get(f"{RP}/status/abc", exception=aiohttp.ServerDisconnectedError())
        m.get(f"{RP}/status/abc", exception=TimeoutError())
        m.get(f"{RP}/status/abc", payload={"id": "abc", "status": "COMPLETED", "output": 3})
        assert await _runpod(session, max_attempts=3).run(call) == 3
        assert len(_requests(m, "POST", f"{RP}/run")) == 1


async def test_replicate_throttled_polls_too(session: aiohttp.ClientSession) -> None:
    body = '{"detail":"Request was throttled. Your rate limit resets in ~30s."}'
    call, _ = _call()
    with aioresponses() as m:
        m.post(f"{REP}/predictions", status=201, payload={"id": "p1", "status": "starting"})
        for _ in range(5):
            m.get(f"{REP}/predictions/p1", status=429, body=body, content_type="application/json")
        m.get(f"{REP}/predictions/p1", payload={"id": "p1", "status": "succeeded", "output": "ok"})
        assert await _replicate(session).run(call) == "ok"


async def test_polls_that_fail_until_the_deadline_fail_the_execution(session: aiohttp.ClientSession) -> None:
    call, _ = _call(deadline_s=0.05)
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc"})
        m.get(f"{RP}/status/abc", status=503, body="down", repeat=True)
        with pytest.raises(BackendError, match="deadline"):
            await _runpod(session).run(call)


async def test_a_404_on_the_status_of_running_work_fails_it_with_no_more_polls(
    session: aiohttp.ClientSession,
) -> None:
    call, _ = _call(deadline_s=60)
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc"})
        m.get(f"{RP}/status/abc", payload={"id": "abc", "status": "IN_PROGRESS"})
        m.get(f"{RP}/status/abc", status=404, body="", repeat=True)
        with pytest.raises(RemoteGone, match="ttl") as caught:
            await _runpod(session).run(call)
        assert len(_requests(m, "GET", f"{RP}/status/abc")) == 2
    assert caught.value.work_over  # nothing is left to cancel


# -- a create is sent again only where nothing can have started ------------------------------


@pytest.mark.parametrize(
    "failure",
    [
        {"status": 500, "body": "oops"},
        {"status": 502, "body": ""},
        {"exception": TimeoutError()},
        {"exception": aiohttp.ServerDisconnectedError()},
    ],
)
async def test_a_create_is_not_sent_again_after_a_5xx_or_timeout(
    session: aiohttp.ClientSession, failure: dict[str, Any]
) -> None:
    call, _ = _call()
    with aioresponses() as m:
        m.post(f"{REP}/predictions", **failure)
        m.post(f"{REP}/predictions", status=201, payload={"id": "p2", "status": "starting"})
        with pytest.raises(PermanentBackendError, match="not sent again"):
            await _replicate(session, max_attempts=3).run(call)
        assert len(_requests(m, "POST", f"{REP}/predictions")) == 1
    assert call.attempts == 1


async def test_a_create_is_sent_again_after_a_429_or_a_refused_connection(
    session: aiohttp.ClientSession,
) -> None:
    call, _ = _call()
    with aioresponses() as m:
        m.post(f"{REP}/predictions", status=429, body='{"detail":"Request was throttled."}')
        m.post(f"{REP}/predictions", exception=_refused())
        m.post(f"{REP}/predictions", status=201, payload={"id": "p3", "status": "starting"})
        m.get(f"{REP}/predictions/p3", payload={"id": "p3", "status": "succeeded", "output": 1})
        assert await _replicate(session, max_attempts=3).run(call) == 1
        assert len(_requests(m, "POST", f"{REP}/predictions")) == 3
    assert call.attempts == 3


# -- deadlines within each provider's bounds --------------------------------------------------


async def test_replicate_cancel_after_is_never_below_5_s(session: aiohttp.ClientSession) -> None:
    call, _ = _call(deadline_s=2.0)
    with aioresponses() as m:
        m.post(f"{REP}/predictions", status=201, payload={"id": "p1", "status": "starting"})
        m.get(f"{REP}/predictions/p1", payload={"id": "p1", "status": "succeeded", "output": 1})
        await _replicate(session).run(call)
        [create] = _requests(m, "POST", f"{REP}/predictions")
    assert create.kwargs["headers"]["Cancel-After"] == "5s"


@pytest.mark.parametrize(
    ("deadline_s", "execution_ms", "ttl_ms"),
    [
        (2.0, 5000, 10_000),  # RunPod's minimums: executionTimeout 5 s, ttl 10 s
        (3600, 3_600_000, 3_600_000),  # the ttl counts queue time too: the whole deadline
        (10 * 24 * 3600, WEEK_MS, WEEK_MS),  # both at most 7 days
    ],
)
async def test_runpod_policy_within_its_bounds(
    session: aiohttp.ClientSession, deadline_s: float, execution_ms: int, ttl_ms: int
) -> None:
    call, _ = _call(deadline_s=deadline_s)
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "j"})
        m.get(f"{RP}/status/j", payload={"id": "j", "status": "COMPLETED", "output": 1})
        await _runpod(session).run(call)
        [submit] = _requests(m, "POST", f"{RP}/run")
    assert submit.kwargs["json"]["policy"] == {"executionTimeout": execution_ms, "ttl": ttl_ms}


async def test_fal_gets_its_start_deadline(session: aiohttp.ClientSession) -> None:
    call, _ = _call(deadline_s=30)
    base = f"{FAL}/fal-ai/flux/requests/r1"
    with aioresponses() as m:
        m.post(
            f"{FAL}/fal-ai/flux/dev",
            payload={
                "request_id": "r1",
                "status_url": f"{base}/status",
                "response_url": base,
                "cancel_url": f"{base}/cancel",
            },
        )
        m.get(f"{base}/status", payload={"status": "COMPLETED", "logs": None})
        m.get(base, payload={"images": []})
        await _fal(session).run(call)
        [submit] = _requests(m, "POST", f"{FAL}/fal-ai/flux/dev")
    assert submit.kwargs["headers"]["X-Fal-Request-Timeout"] == "30.0"


# -- Replicate's deadline endings -------------------------------------------------------------


async def test_replicate_aborted_fails_naming_the_deadline(session: aiohttp.ClientSession) -> None:
    call, _ = _call(deadline_s=60)
    with aioresponses() as m:
        m.post(f"{REP}/predictions", status=201, payload={"id": "p1", "status": "starting"})
        m.get(
            f"{REP}/predictions/p1",
            payload={
                "id": "p1",
                "status": "aborted",
                "error": None,
                "created_at": "2025-10-16T10:00:00.000Z",
                "completed_at": "2025-10-16T10:01:00.000Z",
            },
        )
        with pytest.raises(PermanentBackendError) as caught:
            await _replicate(session).run(call)
    assert "deadline" in str(caught.value) and "not by this runner" not in str(caught.value)
    assert caught.value.work_over


async def test_replicate_canceled_at_its_deadline_names_the_deadline(session: aiohttp.ClientSession) -> None:
    call, _ = _call(deadline_s=60)
    with aioresponses() as m:
        m.post(f"{REP}/predictions", status=201, payload={"id": "p1", "status": "starting"})
        m.get(
            f"{REP}/predictions/p1",
            payload={
                "id": "p1",
                "status": "canceled",
                "created_at": "2025-10-16T10:00:00.000Z",
                "started_at": "2025-10-16T10:00:02.000Z",
                "completed_at": "2025-10-16T10:01:00.100Z",
                "metrics": {"predict_time": 58.1},
            },
        )
        with pytest.raises(PermanentBackendError) as caught:
            await _replicate(session).run(call)
    assert "deadline" in str(caught.value) and "Cancel-After" in str(caught.value)
    assert call.gpu_seconds == 58.1


# -- fal through the URLs it returns -----------------------------------------------------------


@pytest.mark.parametrize("model", ["workflows/acme/upscale", "comfy/acme/flow/sub"])
async def test_fal_namespaced_apps_are_polled_and_cancelled_at_the_returned_urls(
    session: aiohttp.ClientSession, model: str
) -> None:
    owner_app = "/".join(model.split("/")[:3])  # the namespace keeps three segments
    base = f"{FAL}/{owner_app}/requests/r9"
    call, seen = _call()
    with aioresponses() as m:
        m.post(
            f"{FAL}/{model}",
            payload={
                "request_id": "r9",
                "status": "IN_QUEUE",
                "queue_position": 0,
                "status_url": f"{base}/status",
                "response_url": base,
                "cancel_url": f"{base}/cancel",
            },
        )
        m.get(f"{base}/status", status=202, payload={"status": "IN_QUEUE", "queue_position": 0})
        m.get(f"{base}/status", status=202, payload={"status": "IN_PROGRESS", "logs": []})
        m.get(
            f"{base}/status", payload={"status": "COMPLETED", "logs": [], "metrics": {"inference_time": 0.5}}
        )
        m.get(base, payload={"images": ["a"]})
        backend = _fal(session, model=model)
        assert await backend.run(call) == {"images": ["a"]}
        m.put(f"{base}/cancel", status=202, payload={"status": "CANCELLATION_REQUESTED"})
        result = await backend.cancel_remote(call.job_id, call.execution_id, "r9", urls=call.remote_urls)
    assert result.outcome is CancelOutcome.ACKNOWLEDGED
    assert seen[0] == ("r9", 1, {"status": f"{base}/status", "response": base, "cancel": f"{base}/cancel"})


async def test_fal_urls_off_the_configured_origin_are_refused(session: aiohttp.ClientSession) -> None:
    """The key goes nowhere but the configured base's scheme, host and port."""
    call, _ = _call()
    elsewhere = "https://evil.test/fal-ai/flux/requests/r1"
    with aioresponses() as m:
        m.post(
            f"{FAL}/fal-ai/flux/dev",
            payload={
                "request_id": "r1",
                "status_url": f"{elsewhere}/status",
                "response_url": elsewhere,
                "cancel_url": f"{elsewhere}/cancel",
            },
        )
        with pytest.raises(PermanentBackendError, match="origin"):
            await _fal(session).run(call)
        assert _requests(m, "GET", f"{elsewhere}/status") == []


async def test_fal_completed_with_an_error_is_a_failure_naming_the_start_deadline(
    session: aiohttp.ClientSession,
) -> None:
    call, _ = _call(deadline_s=30)
    base = f"{FAL}/fal-ai/flux/requests/r1"
    with aioresponses() as m:
        m.post(
            f"{FAL}/fal-ai/flux/dev",
            payload={
                "request_id": "r1",
                "status_url": f"{base}/status",
                "response_url": base,
                "cancel_url": f"{base}/cancel",
            },
        )
        m.get(
            f"{base}/status",
            payload={
                "status": "COMPLETED",
                "logs": None,
                "metrics": {"inference_time": 1.5},
                "error": "Request timed out",
                "error_type": "request_timeout",
            },
        )
        with pytest.raises(PermanentBackendError, match="X-Fal-Request-Timeout"):
            await _fal(session).run(call)


async def test_fal_499_result_is_a_cancelled_request(session: aiohttp.ClientSession) -> None:
    call, _ = _call()
    base = f"{FAL}/fal-ai/flux/requests/r1"
    with aioresponses() as m:
        m.post(
            f"{FAL}/fal-ai/flux/dev",
            payload={
                "request_id": "r1",
                "status_url": f"{base}/status",
                "response_url": base,
                "cancel_url": f"{base}/cancel",
            },
        )
        m.get(f"{base}/status", payload={"status": "COMPLETED", "logs": []})
        m.get(base, status=499, body='{"detail":"Request cancelled by the client."}')
        with pytest.raises(PermanentBackendError, match="499") as caught:
            await _fal(session).run(call)
        assert len(_requests(m, "GET", base)) == 1
    assert caught.value.work_over


# -- cancels: 401/403 are not final; 404 is gone ----------------------------------------------


@pytest.mark.parametrize("status", [401, 403])
async def test_a_cancel_refused_for_its_key_is_retried(session: aiohttp.ClientSession, status: int) -> None:
    with aioresponses() as m:
        m.post(f"{RP}/cancel/a", status=status, body='{"error": "unauthorized"}')
        result = await _runpod(session).cancel_remote(uuid.uuid4(), uuid.uuid4(), "a")
    assert result.outcome is CancelOutcome.RETRY


async def test_a_cancel_of_work_the_provider_forgot_is_gone(session: aiohttp.ClientSession) -> None:
    jid, eid = uuid.uuid4(), uuid.uuid4()
    with aioresponses() as m:
        m.post(f"{RP}/cancel/a", status=404, body="")
        m.post(f"{REP}/predictions/p/cancel", status=404, body='{"detail":"Not found."}')
        m.put(f"{FAL}/fal-ai/flux/requests/r/cancel", status=404, payload={"status": "NOT_FOUND"})
        assert (await _runpod(session).cancel_remote(jid, eid, "a")).outcome is CancelOutcome.GONE
        assert (await _replicate(session).cancel_remote(jid, eid, "p")).outcome is CancelOutcome.GONE
        assert (await _fal(session).cancel_remote(jid, eid, "r")).outcome is CancelOutcome.GONE


async def test_runpod_cancelled_is_no_proof_of_a_stop(session: aiohttp.ClientSession) -> None:
    """operation-reference.mdx: /cancel "returns immediately with the canceled status"; the
    status says CANCELLED whatever the worker goes on doing."""
    with aioresponses() as m:
        m.get(f"{RP}/status/a", payload={"id": "a", "status": "CANCELLED"})
        over = await _runpod(session).remote_over("a")
    assert over is not None and not over.proves_stop


async def test_replicate_canceled_proves_the_stop_at_its_completed_at(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.get(
            f"{REP}/predictions/p",
            payload={
                "id": "p",
                "status": "canceled",
                "completed_at": "2024-04-22T11:15:15.504128Z",
                "metrics": {"predict_time": 0.128148},
            },
        )
        over = await _replicate(session).remote_over("p")
    assert over is not None and over.proves_stop
    assert over.stopped_at is not None and over.stopped_at.isoformat() == "2024-04-22T11:15:15.504128+00:00"


async def test_a_status_404_on_a_confirmation_poll_is_gone(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.get(f"{RP}/status/a", status=404, body="")
        with pytest.raises(RemoteGone):
            await _runpod(session).remote_over("a")


# -- Modal: the call id of the 303 --------------------------------------------------------------


def _modal(session: aiohttp.ClientSession) -> Any:
    spec = BackendSpec(
        name="m",
        kind="http",
        url="https://acme--infer.modal.run/",
        cancel_url="https://acme--cancel.modal.run/?call={remote_id}",
    )
    return _fast(build_backend(spec, session))


async def test_modal_call_id_is_kept_as_the_remote_id(session: aiohttp.ClientSession) -> None:
    call, seen = _call()
    result_url = "https://acme--infer.modal.run/?__modal_function_call_id=fc-123abc"
    with aioresponses() as m:
        m.post("https://acme--infer.modal.run/", status=303, headers={"Location": result_url})
        m.get(result_url, status=303, headers={"Location": result_url})
        m.get(result_url, payload={"image": "done"})
        assert await _modal(session).run(call) == {"image": "done"}
    assert call.remote_id == "fc-123abc"
    assert seen == [("fc-123abc", 1, {"result": result_url})]


async def test_a_resumed_modal_call_gets_its_result_url_instead_of_posting_again(
    session: aiohttp.ClientSession,
) -> None:
    result_url = "https://acme--infer.modal.run/?__modal_function_call_id=fc-9"
    call, _ = _call(remote_id="fc-9", urls={"result": result_url})
    with aioresponses() as m:
        m.get(result_url, payload={"image": "late"})
        assert await _modal(session).run(call) == {"image": "late"}
        assert _requests(m, "POST", "https://acme--infer.modal.run/") == []


async def test_modal_cancel_url_gets_the_remote_id(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.post("https://acme--cancel.modal.run/?call=fc-9", payload={"cancelled": True})
        result = await _modal(session).cancel_remote(uuid.uuid4(), uuid.uuid4(), "fc-9")
    assert result.outcome is CancelOutcome.ACKNOWLEDGED
    spec = _modal(session).spec
    assert not spec.can_cancel(None) and spec.can_cancel("fc-9")  # no call id yet: nothing to name


async def test_unknown_status_hook_is_optional(session: aiohttp.ClientSession) -> None:
    call = ExecutionCall(uuid.uuid4(), uuid.uuid4(), {"a": 1}, remote_id="abc")
    with aioresponses() as m:
        m.get(f"{RP}/status/abc", payload={"id": "abc", "status": "PAUSED"})
        m.get(f"{RP}/status/abc", payload={"id": "abc", "status": "COMPLETED", "output": 5})
        assert await asyncio.wait_for(_runpod(session).run(call), 10) == 5
