"""Contract tests: the providers' documented answers (tests/data/providers, see SOURCES.md
there), replayed byte for byte to every adapter; and the fakes held to the same shapes."""

from __future__ import annotations

import json
import uuid
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import aiohttp
import pytest

from runner.backends import CancelOutcome, ExecutionCall, build_backend
from runner.backends.config import BackendSpec
from runner.backends.fal import FalBackend
from runner.backends.polling import State
from runner.backends.replicate import ReplicateBackend
from runner.backends.runpod import RunPodBackend
from runner.errors import PermanentBackendError
from runner.fakes import FakeProviders
from tests.mock_http import aioresponses_ as aioresponses

DATA = Path(__file__).resolve().parent.parent / "data" / "providers"
RP = "https://api.runpod.ai/v2/ep1"
REP = "https://api.replicate.com/v1"
FAL = "https://queue.fal.run"
SDXL_ID = "80e732af-660e-45cd-bd63-580e4f2a94cc"


def raw(name: str) -> bytes:
    return (DATA / name).read_bytes()


def doc(name: str) -> Any:
    return json.loads(raw(name))


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _call(remote_id: str | None = None, deadline_s: float | None = None) -> ExecutionCall:
    return ExecutionCall(
        uuid.uuid4(), uuid.uuid4(), {"prompt": "a corgi"}, remote_id=remote_id, deadline_s=deadline_s
    )


def _fast(backend: Any) -> Any:
    backend.backoff_base_s = backend.backoff_cap_s = 0.001
    return backend


def _runpod(session: aiohttp.ClientSession) -> RunPodBackend:
    return _fast(
        RunPodBackend(
            BackendSpec(
                name="rp",
                kind="runpod",
                base_url="https://api.runpod.ai/v2",
                endpoint_id="ep1",
                poll_interval_s=0.001,
            ),
            session,
        )
    )


def _replicate(session: aiohttp.ClientSession) -> ReplicateBackend:
    return _fast(
        ReplicateBackend(
            BackendSpec(name="r", kind="replicate", base_url=REP, version="v", poll_interval_s=0.001), session
        )
    )


def _fal(session: aiohttp.ClientSession, model: str = "fal-ai/fast-sdxl") -> FalBackend:
    return _fast(
        FalBackend(
            BackendSpec(name="f", kind="fal", base_url=FAL, model=model, poll_interval_s=0.001), session
        )
    )


def _json(m: aioresponses, method: str, url: str, name: str, status: int = 200, **kw: Any) -> None:
    getattr(m, method)(url, status=status, body=raw(name), content_type="application/json", **kw)


# -- RunPod -----------------------------------------------------------------------------------------


async def test_runpod_documented_answers(session: aiohttp.ClientSession) -> None:
    run_id = doc("runpod-run.json")["id"]
    call = _call()
    with aioresponses() as m:
        _json(m, "post", f"{RP}/run", "runpod-run.json")
        _json(m, "get", f"{RP}/status/{run_id}", "runpod-retry.json")  # IN_QUEUE
        _json(m, "get", f"{RP}/status/{run_id}", "runpod-status-in-progress.json")
        _json(m, "get", f"{RP}/status/{run_id}", "runpod-status-completed.json")
        output = await _runpod(session).run(call)
    assert call.remote_id == "eaebd6e7-6a92-4bb8-a911-f996ac5ea99d"
    assert output == doc("runpod-status-completed.json")["output"]
    assert call.gpu_seconds == pytest.approx(1.437)  # executionTime, in ms


async def test_runpod_runsync_body_reads_as_a_completed_status(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        _json(m, "get", f"{RP}/status/x", "runpod-runsync-completed.json")
        poll = await _runpod(session).poll("x")
    assert poll.state is State.COMPLETED and poll.output == [{"image": "https://image.url", "seed": 46578}]
    assert poll.gpu_seconds == pytest.approx(3.391)


async def test_runpod_documented_failure(session: aiohttp.ClientSession) -> None:
    call = _call(remote_id="job-abc-123")
    with aioresponses() as m:
        _json(m, "get", f"{RP}/status/job-abc-123", "runpod-status-failed.json")
        with pytest.raises(PermanentBackendError, match="Error message from your function") as caught:
            await _runpod(session).run(call)
    assert caught.value.work_over


async def test_runpod_documented_cancel_is_acknowledged_but_proves_no_stop(
    session: aiohttp.ClientSession,
) -> None:
    remote_id = doc("runpod-cancel.json")["id"]
    with aioresponses() as m:
        _json(m, "post", f"{RP}/cancel/{remote_id}", "runpod-cancel.json")
        # The documented /cancel answer, read as a status: what /status says from then on.
        _json(m, "get", f"{RP}/status/{remote_id}", "runpod-cancel.json")
        backend = _runpod(session)
        result = await backend.cancel_remote(uuid.uuid4(), uuid.uuid4(), remote_id)
        over = await backend.remote_over(remote_id)
    assert result.outcome is CancelOutcome.ACKNOWLEDGED
    assert over is not None and not over.proves_stop


# -- Replicate ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "path"),
    [
        ("replicate-create-201-version.json", "/predictions"),
        ("replicate-create-201-model.json", "/models/meta/llama-2-70b-chat/predictions"),
    ],
)
async def test_replicate_recorded_create_and_run(
    session: aiohttp.ClientSession, name: str, path: str
) -> None:
    created = doc(name)
    spec_kw = {"version": "v"} if path == "/predictions" else {"model": "meta/llama-2-70b-chat"}
    backend = _fast(
        ReplicateBackend(
            BackendSpec(name="r", kind="replicate", base_url=REP, poll_interval_s=0.001, **spec_kw), session
        )
    )
    call = _call()
    with aioresponses() as m:
        _json(m, "post", f"{REP}{path}", name, status=201)
        # the recorded starting/processing bodies (with their duplicated "model" key)
        _json(m, "get", f"{REP}/predictions/{created['id']}", "replicate-get-starting.json")
        _json(m, "get", f"{REP}/predictions/{created['id']}", "replicate-get-processing.json")
        _json(m, "get", f"{REP}/predictions/{created['id']}", "replicate-get-succeeded.json")
        output = await backend.run(call)
    assert call.remote_id == created["id"]
    assert output == doc("replicate-get-succeeded.json")["output"]
    assert call.gpu_seconds == pytest.approx(3.804328)


async def test_replicate_recorded_success_b(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        _json(m, "get", f"{REP}/predictions/azaq55dbukgxg6kubr4k6g3pby", "replicate-get-succeeded-b.json")
        poll = await _replicate(session).poll("azaq55dbukgxg6kubr4k6g3pby")
    assert poll.state is State.COMPLETED and poll.gpu_seconds == pytest.approx(5.524512)
    assert poll.stopped_at is not None and poll.stopped_at.isoformat() == "2023-11-16T11:46:22.064427+00:00"


async def test_replicate_recorded_cancel_confirms_at_completed_at(session: aiohttp.ClientSession) -> None:
    pid = "hdwst0bb05rgp0cf0p29mzk2am"
    with aioresponses() as m:
        _json(m, "post", f"{REP}/predictions/{pid}/cancel", "replicate-cancel-200.json")
        _json(m, "get", f"{REP}/predictions/{pid}", "replicate-cancel-200.json")
        backend = _replicate(session)
        result = await backend.cancel_remote(uuid.uuid4(), uuid.uuid4(), pid)
        over = await backend.remote_over(pid)
    assert result.outcome is CancelOutcome.ACKNOWLEDGED
    assert over is not None and over.proves_stop and over.gpu_seconds == pytest.approx(0.128148)
    assert over.stopped_at is not None and over.stopped_at.isoformat() == "2024-04-22T11:15:15.504128+00:00"


@pytest.mark.parametrize("name", ["replicate-429.json", "replicate-429-older-doc.json"])
async def test_replicate_documented_429_on_a_poll_is_waited_out(
    session: aiohttp.ClientSession, name: str
) -> None:
    call = _call(remote_id="vgcm4plb7tgzlyznry5d5jkgvu")
    with aioresponses() as m:
        for _ in range(4):
            _json(m, "get", f"{REP}/predictions/vgcm4plb7tgzlyznry5d5jkgvu", name, status=429)
        _json(m, "get", f"{REP}/predictions/vgcm4plb7tgzlyznry5d5jkgvu", "replicate-get-succeeded.json")
        assert await _replicate(session).run(call) == doc("replicate-get-succeeded.json")["output"]


async def test_replicate_documented_429_on_a_create_is_sent_again(session: aiohttp.ClientSession) -> None:
    call = _call()
    pid = doc("replicate-create-201-version.json")["id"]
    with aioresponses() as m:
        _json(m, "post", f"{REP}/predictions", "replicate-429.json", status=429)
        _json(m, "post", f"{REP}/predictions", "replicate-create-201-version.json", status=201)
        _json(m, "get", f"{REP}/predictions/{pid}", "replicate-get-succeeded.json")
        await _replicate(session).run(call)
    assert call.attempts == 2 and call.remote_id == pid


# -- fal ------------------------------------------------------------------------------------------------


async def test_fal_documented_queue_flow(session: aiohttp.ClientSession) -> None:
    submitted = doc("fal-submit-fast-sdxl.json")
    base = f"{FAL}/fal-ai/fast-sdxl/requests/{SDXL_ID}"
    call = _call()
    with aioresponses() as m:
        _json(m, "post", f"{FAL}/fal-ai/fast-sdxl", "fal-submit-fast-sdxl.json")
        _json(m, "get", f"{base}/status", "fal-status-in-queue-doc.json", status=202)
        _json(m, "get", f"{base}/status", "fal-status-in-queue.json", status=202)
        _json(m, "get", f"{base}/status", "fal-status-in-progress.json", status=202)
        _json(m, "get", f"{base}/status", "fal-status-completed-no-metrics.json")
        m.get(base, payload={"images": [{"url": "https://fal.media/x.png"}]})
        output = await _fal(session).run(call)
    assert output == {"images": [{"url": "https://fal.media/x.png"}]}
    assert call.remote_id == submitted["request_id"]
    assert call.remote_urls == {
        "status": submitted["status_url"],
        "response": submitted["response_url"],
        "cancel": submitted["cancel_url"],
    }
    assert call.gpu_seconds is None  # "legacy apps might not return metrics"


@pytest.mark.parametrize(
    ("name", "text"),
    [
        ("fal-status-completed-error-runner-disconnected.json", "runner_disconnected"),
        ("fal-status-completed-error-request-timeout.json", "X-Fal-Request-Timeout"),
    ],
)
async def test_fal_fixture_completed_with_an_error_fails(
    session: aiohttp.ClientSession, name: str, text: str
) -> None:
    call = _call(remote_id=SDXL_ID, deadline_s=60)
    with aioresponses() as m:
        _json(m, "get", f"{FAL}/fal-ai/fast-sdxl/requests/{SDXL_ID}/status", name)
        with pytest.raises(PermanentBackendError, match=text):
            await _fal(session).run(call)


@pytest.mark.parametrize(
    ("name", "status", "text"),
    [
        ("fal-result-499-cancelled.json", 499, "cancelled"),
        ("fal-request-error-504.json", 504, "did not start before its deadline"),
    ],
)
async def test_fal_result_errors_are_final(
    session: aiohttp.ClientSession, name: str, status: int, text: str
) -> None:
    call = _call(remote_id=SDXL_ID)
    base = f"{FAL}/fal-ai/fast-sdxl/requests/{SDXL_ID}"
    with aioresponses() as m:
        m.get(f"{base}/status", payload={"status": "COMPLETED", "logs": []})
        _json(m, "get", base, name, status=status, headers={"X-Fal-Request-Timeout-Type": "user"})
        with pytest.raises(PermanentBackendError, match=text):
            await _fal(session).run(call)


# -- Modal ----------------------------------------------------------------------------------------------


async def test_modal_redirect_shape_gives_the_call_id(session: aiohttp.ClientSession) -> None:
    url = "https://acme--app-infer.modal.run/"
    backend = build_backend(BackendSpec(name="m", kind="http", url=url), session)
    call = _call()
    with aioresponses() as m:
        m.post(url, status=303, headers={"Location": f"{url}?__modal_function_call_id=fc-123abc"})
        m.get(f"{url}?__modal_function_call_id=fc-123abc", payload={"ok": True})
        assert await backend.run(call) == {"ok": True}
    assert call.remote_id == "fc-123abc"


# -- the fakes answer in the documented shapes ------------------------------------------------------


async def test_the_fakes_answer_in_the_documented_shapes(session: aiohttp.ClientSession) -> None:
    fakes = FakeProviders()
    await fakes.start()
    try:
        async with session.post(f"{fakes.runpod_url}/ep1/run", json={"input": {"polls": 3}}) as resp:
            run = await resp.json()
        assert set(run) == set(doc("runpod-run.json")) and run["status"] == "IN_QUEUE"
        async with session.post(f"{fakes.runpod_url}/ep1/cancel/{run['id']}") as resp:
            assert set(await resp.json()) == set(doc("runpod-cancel.json"))
        async with session.post(
            f"{fakes.replicate_url}/predictions", json={"version": "v", "input": {"hold": True}}
        ) as resp:
            assert resp.status == 201
            created = await resp.json()
        assert set(created) == set(doc("replicate-create-201-version.json"))
        for _ in range(2):  # booted: processing, as the recorded prediction was when cancelled
            async with session.get(created["urls"]["get"]) as resp:
                assert set(await resp.json()) >= set(doc("replicate-get-starting.json"))
        async with session.post(f"{fakes.replicate_url}/predictions/{created['id']}/cancel") as resp:
            cancelled = await resp.json()
        recorded = doc("replicate-cancel-200.json")
        assert set(cancelled) >= set(recorded) - {"webhook_completed"}
        assert set(cancelled["metrics"]) == set(recorded["metrics"]) and cancelled["status"] == "canceled"
        async with session.post(f"{fakes.fal_url}/fal-ai/fast-sdxl", json={"prompt": "x"}) as resp:
            submitted = await resp.json()
        assert set(submitted) >= set(doc("fal-submit-fast-sdxl.json"))
        assert (
            submitted["status_url"]
            == f"{fakes.fal_url}/fal-ai/fast-sdxl/requests/{submitted['request_id']}/status"
        )
        async with session.get(submitted["status_url"]) as resp:
            assert resp.status == 202 and set(await resp.json()) == set(doc("fal-status-in-queue-doc.json"))
    finally:
        await fakes.stop()
