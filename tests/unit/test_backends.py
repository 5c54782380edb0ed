from __future__ import annotations

import asyncio
import sys
import uuid
from collections.abc import AsyncIterator
from typing import Any

import aiohttp
import pytest
import structlog
from yarl import URL

from runner.backends import CancelOutcome, ExecutionCall, build_backend, polling
from runner.backends.config import BackendSpec
from runner.backends.fal import FalBackend
from runner.backends.polling import next_poll_in
from runner.backends.replicate import ReplicateBackend
from runner.backends.runpod import RunPodBackend
from runner.errors import PermanentBackendError, TransientBackendError
from runner.fakes import FakeProviders
from tests.mock_http import aioresponses_ as aioresponses

RP = "https://rp.test/v2/ep1"


@pytest.fixture
async def session() -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession() as s:
        yield s


def _call(log: list[Any] | None = None, remote_id: str | None = None, input: Any = None) -> ExecutionCall:
    async def on_remote_id(rid: str, attempts: int, urls: dict[str, str] | None) -> None:
        if log is not None:
            log.append(("remote_id", rid, attempts))

    return ExecutionCall(
        uuid.uuid4(), uuid.uuid4(), input or {"prompt": "x"}, remote_id=remote_id, on_remote_id=on_remote_id
    )


def _runpod(session: aiohttp.ClientSession, **kw: Any) -> RunPodBackend:
    spec = BackendSpec(
        name="rp",
        kind="runpod",
        base_url="https://rp.test/v2",
        endpoint_id="ep1",
        api_key="k",
        poll_interval_s=0.001,
        **kw,
    )
    return RunPodBackend(spec, session, backoff_base_s=0.001)


def _requests(m: aioresponses, method: str, url: str) -> list[Any]:
    return list(m.requests.get((method, URL(url)), []))


async def test_runpod_stores_remote_id_before_polling_and_maps_statuses(
    session: aiohttp.ClientSession,
) -> None:
    log: list[Any] = []
    backend = _runpod(session)
    call = _call(log)
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc", "status": "IN_QUEUE"})

        def polled(url: URL, **kwargs: Any) -> None:
            log.append(("poll", str(url)))

        m.get(f"{RP}/status/abc", payload={"status": "IN_QUEUE"}, callback=polled)
        m.get(f"{RP}/status/abc", payload={"status": "IN_PROGRESS"}, callback=polled)
        m.get(f"{RP}/status/abc", payload={"status": "COMPLETED", "output": {"img": 1}}, callback=polled)
        assert await backend.run(call) == {"img": 1}
        [submit] = _requests(m, "POST", f"{RP}/run")
    assert submit.kwargs["json"] == {"input": {"prompt": "x"}}
    assert submit.kwargs["headers"]["Authorization"] == "Bearer k"
    assert submit.kwargs["headers"]["X-Runner-Execution-Id"] == str(call.execution_id)
    assert log[0] == ("remote_id", "abc", 1)
    assert [e[0] for e in log[1:]] == ["poll"] * 3
    assert call.attempts == 1


@pytest.mark.parametrize(
    ("status", "text"),
    [("FAILED", "failed: boom"), ("TIMED_OUT", "timed out"), ("CANCELLED", "cancelled at RunPod")],
)
async def test_runpod_failures_are_failures(session: aiohttp.ClientSession, status: str, text: str) -> None:
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc"})
        m.get(f"{RP}/status/abc", payload={"status": status, "error": "boom"})
        with pytest.raises(PermanentBackendError, match=text):
            await _runpod(session).run(_call())


async def test_runpod_unknown_status_is_not_a_success(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc"})
        m.get(f"{RP}/status/abc", payload={"status": "SOMETHING_NEW", "output": "looks done"})
        m.get(f"{RP}/status/abc", payload={"status": "COMPLETED", "output": "done"})
        assert await _runpod(session).run(_call()) == "done"


async def test_runpod_resends_a_429_honouring_retry_after(session: aiohttp.ClientSession) -> None:
    call = _call()
    with aioresponses() as m:
        m.post(f"{RP}/run", status=429, body="slow down", headers={"Retry-After": "0"})
        m.post(f"{RP}/run", status=429, body="slow down")
        m.post(f"{RP}/run", payload={"id": "abc"})
        m.get(f"{RP}/status/abc", status=502, body="bad gateway")
        m.get(f"{RP}/status/abc", payload={"status": "COMPLETED", "output": 7})
        backend = _runpod(session, max_attempts=3)
        assert await backend.run(call) == 7
        assert len(_requests(m, "POST", f"{RP}/run")) == 3
    assert call.attempts == 3  # submissions, not polls


async def test_runpod_gives_up_after_max_attempts(session: aiohttp.ClientSession) -> None:
    call = _call()
    with aioresponses() as m:
        m.post(f"{RP}/run", status=429, body="", repeat=True)
        with pytest.raises(TransientBackendError, match="gave up after 2 attempts"):
            await _runpod(session, max_attempts=2).run(call)
        assert len(_requests(m, "POST", f"{RP}/run")) == 2


async def test_runpod_does_not_retry_422(session: aiohttp.ClientSession) -> None:
    call = _call()
    with aioresponses() as m:
        m.post(f"{RP}/run", status=422, body='{"error": "bad input"}', repeat=True)
        with pytest.raises(PermanentBackendError, match=r"HTTP 422.*bad input"):
            await _runpod(session, max_attempts=5).run(call)
        assert len(_requests(m, "POST", f"{RP}/run")) == 1
    assert call.attempts == 1


async def test_non_json_reply_is_a_failure(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.post(f"{RP}/run", body="<html>gateway</html>", content_type="text/html")
        with pytest.raises(PermanentBackendError, match="non-JSON body"):
            await _runpod(session).run(_call())


async def test_runpod_resumes_by_remote_id_without_submitting(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.get(f"{RP}/status/known", payload={"status": "COMPLETED", "output": "ok"})
        assert await _runpod(session).run(_call(remote_id="known")) == "ok"
        assert _requests(m, "POST", f"{RP}/run") == []


async def test_runpod_cancel_outcomes(session: aiohttp.ClientSession) -> None:
    backend = _runpod(session)
    with aioresponses() as m:
        m.post(f"{RP}/cancel/a", payload={"id": "a", "status": "CANCELLED"})
        m.post(f"{RP}/cancel/b", status=422, body="no such job")
        m.post(f"{RP}/cancel/c", status=503, body="try later")
        jid, eid = uuid.uuid4(), uuid.uuid4()
        assert (await backend.cancel_remote(jid, eid, "a")).outcome is CancelOutcome.ACKNOWLEDGED
        refused = await backend.cancel_remote(jid, eid, "b")
        assert refused.outcome is CancelOutcome.FAILED and "no such job" in refused.detail
        assert (await backend.cancel_remote(jid, eid, "c")).outcome is CancelOutcome.RETRY


@pytest.mark.parametrize(
    ("spec_kw", "url", "body"),
    [
        ({"version": "v1"}, "https://rep.test/v1/predictions", {"version": "v1", "input": {"prompt": "x"}}),
        ({"model": "acme/sd"}, "https://rep.test/v1/models/acme/sd/predictions", {"input": {"prompt": "x"}}),
    ],
)
async def test_replicate_version_and_model(
    session: aiohttp.ClientSession, spec_kw: dict[str, str], url: str, body: dict[str, Any]
) -> None:
    spec = BackendSpec(
        name="r",
        kind="replicate",
        base_url="https://rep.test/v1",
        api_key="t",
        poll_interval_s=0.001,
        **spec_kw,
    )
    log: list[Any] = []
    with aioresponses() as m:
        m.post(url, payload={"id": "p1", "status": "starting"})
        m.get("https://rep.test/v1/predictions/p1", payload={"status": "processing"})
        m.get("https://rep.test/v1/predictions/p1", payload={"status": "succeeded", "output": ["a.png"]})
        assert await ReplicateBackend(spec, session).run(_call(log)) == ["a.png"]
        [create] = _requests(m, "POST", url)
        assert create.kwargs["json"] == body
    assert log == [("remote_id", "p1", 1)]


async def test_replicate_canceled_maps_to_failure_and_cancel_url(session: aiohttp.ClientSession) -> None:
    spec = BackendSpec(
        name="r", kind="replicate", base_url="https://rep.test/v1", version="v", poll_interval_s=0.001
    )
    backend = ReplicateBackend(spec, session)
    with aioresponses() as m:
        m.post("https://rep.test/v1/predictions", payload={"id": "p2"})
        m.get("https://rep.test/v1/predictions/p2", payload={"status": "canceled"})
        with pytest.raises(PermanentBackendError, match="cancelled at Replicate"):
            await backend.run(_call())
        m.post("https://rep.test/v1/predictions/p2/cancel", payload={"status": "canceled"})
        result = await backend.cancel_remote(uuid.uuid4(), uuid.uuid4(), "p2")
        assert result.outcome is CancelOutcome.ACKNOWLEDGED


async def test_fal_queue_flow(session: aiohttp.ClientSession) -> None:
    spec = BackendSpec(
        name="f",
        kind="fal",
        base_url="https://fal.test",
        model="fal-ai/flux/dev",
        api_key="fk",
        poll_interval_s=0.001,
    )
    backend = FalBackend(spec, session)
    log: list[Any] = []
    with aioresponses() as m:
        m.post("https://fal.test/fal-ai/flux/dev", payload={"request_id": "r1", "status": "IN_QUEUE"})
        m.get("https://fal.test/fal-ai/flux/requests/r1/status", payload={"status": "IN_PROGRESS"})
        m.get("https://fal.test/fal-ai/flux/requests/r1/status", payload={"status": "COMPLETED"})
        m.get("https://fal.test/fal-ai/flux/requests/r1", payload={"images": ["x"]})
        assert await backend.run(_call(log)) == {"images": ["x"]}
        [submit] = _requests(m, "POST", "https://fal.test/fal-ai/flux/dev")
        assert submit.kwargs["headers"]["Authorization"] == "Key fk"
        assert submit.kwargs["json"] == {"prompt": "x"}
        m.put(
            "https://fal.test/fal-ai/flux/requests/r1/cancel",
            status=202,
            payload={"status": "CANCELLATION_REQUESTED"},
        )
        m.put(
            "https://fal.test/fal-ai/flux/requests/r2/cancel",
            status=400,
            payload={"status": "ALREADY_COMPLETED"},
        )
        m.put("https://fal.test/fal-ai/flux/requests/r3/cancel", status=404, payload={"status": "NOT_FOUND"})
        jid, eid = uuid.uuid4(), uuid.uuid4()
        assert (await backend.cancel_remote(jid, eid, "r1")).outcome is CancelOutcome.ACKNOWLEDGED
        assert (await backend.cancel_remote(jid, eid, "r2")).outcome is CancelOutcome.ACKNOWLEDGED
        assert (await backend.cancel_remote(jid, eid, "r3")).outcome is CancelOutcome.GONE
    assert log == [("remote_id", "r1", 1)]


# -- the http kind, against a real local server ------------------------------------------------


def _http(fake: FakeProviders, session: aiohttp.ClientSession, **kw: Any) -> Any:
    spec = BackendSpec(
        name="h",
        kind="http",
        url=f"{fake.base_url}/run",
        cancel_url=f"{fake.base_url}/cancel/{{execution_id}}",
        headers={"X-Team": "gpu"},
        api_key="secret",
        **kw,
    )
    backend = build_backend(spec, session)
    backend.backoff_base_s = 0.001
    return backend


async def test_http_posts_input_with_runner_headers(
    fake_gpu: FakeProviders, session: aiohttp.ClientSession
) -> None:
    call = _call(input={"mode": "echo", "n": 1})
    out = await _http(fake_gpu, session).run(call)
    assert out == {"echo": {"mode": "echo", "n": 1}, "job": str(call.job_id)}
    headers = fake_gpu.web.calls[-1]["headers"]
    assert headers["X-Runner-Job-Id"] == str(call.job_id)
    assert headers["X-Runner-Execution-Id"] == str(call.execution_id)
    assert headers["X-Team"] == "gpu" and headers["Authorization"] == "Bearer secret"


async def test_http_follows_303_result_redirects(
    fake_gpu: FakeProviders, session: aiohttp.ClientSession
) -> None:
    assert await _http(fake_gpu, session).run(_call(input={"mode": "redirect", "hops": 3})) == {
        "result": "done"
    }


async def test_http_refuses_off_origin_redirects(
    fake_gpu: FakeProviders, session: aiohttp.ClientSession
) -> None:
    with pytest.raises(PermanentBackendError, match="off-origin"):
        await _http(fake_gpu, session).run(_call(input={"mode": "offsite"}))


async def test_http_non_json_and_4xx_fail_without_retry(
    fake_gpu: FakeProviders, session: aiohttp.ClientSession
) -> None:
    backend = _http(fake_gpu, session, max_attempts=3)
    with pytest.raises(PermanentBackendError, match="non-JSON"):
        await backend.run(_call(input={"mode": "text"}))
    before = len(fake_gpu.web.calls)
    call = _call(input={"mode": "status", "status": 422})
    with pytest.raises(PermanentBackendError, match="HTTP 422"):
        await backend.run(call)
    assert len(fake_gpu.web.calls) == before + 1 and call.attempts == 1


async def test_http_retries_429_then_gives_up(
    fake_gpu: FakeProviders, session: aiohttp.ClientSession
) -> None:
    call = _call(input={"mode": "status", "status": 429, "retry_after": 0})
    with pytest.raises(TransientBackendError, match="gave up after 3 attempts"):
        await _http(fake_gpu, session, max_attempts=3).run(call)
    assert call.attempts == 3


async def test_http_is_not_posted_again_after_a_5xx(
    fake_gpu: FakeProviders, session: aiohttp.ClientSession
) -> None:
    """The work may have started: a second POST could pay for it twice."""
    call = _call(input={"mode": "status", "status": 503, "retry_after": 0})
    with pytest.raises(PermanentBackendError, match="not sent again"):
        await _http(fake_gpu, session, max_attempts=3).run(call)
    assert call.attempts == 1


async def test_http_cancel_url_is_posted(fake_gpu: FakeProviders, session: aiohttp.ClientSession) -> None:
    execution_id = uuid.uuid4()
    result = await _http(fake_gpu, session).cancel_remote(uuid.uuid4(), execution_id, None)
    assert result.outcome is CancelOutcome.ACKNOWLEDGED
    assert fake_gpu.web.url_cancels == [str(execution_id)]


async def test_http_call_cancelled_closes_the_connection(
    fake_gpu: FakeProviders, session: aiohttp.ClientSession
) -> None:
    call = _call(input={"mode": "hold"})
    task = asyncio.create_task(_http(fake_gpu, session).run(call))
    await asyncio.wait_for(fake_gpu.web.started[str(call.execution_id)].wait(), 5)
    task.cancel()
    await asyncio.wait_for(fake_gpu.web.closed[str(call.execution_id)].wait(), 5)
    with pytest.raises(asyncio.CancelledError):
        await task
    assert call.attempts == 1  # a cancelled call is never retried


# -- subprocess and demo ---------------------------------------------------------------------


def _subprocess(code: str, **kw: Any) -> Any:
    spec = BackendSpec(name="p", kind="subprocess", command=(sys.executable, "-c", code), **kw)
    return build_backend(spec, None)  # type: ignore[arg-type]


async def test_subprocess_json_in_json_out() -> None:
    code = "import json,sys,os; d=json.load(sys.stdin); print(json.dumps({'got': d, 'job': os.environ['RUNNER_JOB_ID']}))"
    call = _call(input={"a": 1})
    assert await _subprocess(code).run(call) == {"got": {"a": 1}, "job": str(call.job_id)}


async def test_subprocess_failure_and_bad_output() -> None:
    with pytest.raises(PermanentBackendError, match=r"exited with 3: .*disk on fire"):
        await _subprocess("import sys; sys.stderr.write('disk on fire'); sys.exit(3)").run(_call())
    with pytest.raises(PermanentBackendError, match="non-JSON output"):
        await _subprocess("print('hello')").run(_call())


@pytest.mark.parametrize(
    ("ignores_term", "event"), [(False, "subprocess_terminated"), (True, "subprocess_killed")]
)
async def test_subprocess_cancel_sigterm_then_sigkill(tmp_path: Any, ignores_term: bool, event: str) -> None:
    ready = tmp_path / "ready"
    code = (
        "import signal, time, pathlib\n"
        + ("signal.signal(signal.SIGTERM, signal.SIG_IGN)\n" if ignores_term else "")
        + f"pathlib.Path({str(ready)!r}).write_text('x')\n"
        + "time.sleep(3600)\n"
    )
    backend = _subprocess(code, grace_s=0.3)
    task = asyncio.create_task(backend.run(_call()))
    # Another process: no Event can cross, so wait on the file it writes once its handler is set.
    while not ready.exists():  # noqa: ASYNC110
        await asyncio.sleep(0.01)
    with structlog.testing.capture_logs() as logs:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, 10)
    [stop] = [e for e in logs if e["event"] in ("subprocess_terminated", "subprocess_killed")]
    assert stop["event"] == event
    if ignores_term:
        assert stop["grace_s"] == 0.3


async def test_demo_runs_fails_and_refuses_bad_input() -> None:
    demo = build_backend(BackendSpec(name="demo", kind="demo"), None)  # type: ignore[arg-type]
    assert await demo.run(_call(input={"seconds": 0})) == {"slept_s": 0}
    with pytest.raises(PermanentBackendError, match="simulated failure"):
        await demo.run(_call(input={"seconds": 0, "fail": True}))
    for bad in ({"seconds": -1}, {"seconds": "x"}, {"seconds": 1e9}, [1], {"seconds": 0, "fail": "yes"}):
        with pytest.raises(PermanentBackendError, match="demo input"):
            await demo.run(_call(input=bad))


# -- spend and deadlines ----------------------------------------------------------------------


async def test_each_provider_reports_its_own_gpu_seconds(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "j1"})
        m.get(f"{RP}/status/j1", payload={"status": "COMPLETED", "output": 1, "executionTime": 2500})
        call = _call()
        await _runpod(session).run(call)
        assert call.gpu_seconds == 2.5  # milliseconds at RunPod
    replicate = ReplicateBackend(
        BackendSpec(
            name="r", kind="replicate", base_url="https://rep.test/v1", version="v", poll_interval_s=0.001
        ),
        session,
    )
    with aioresponses() as m:
        m.post("https://rep.test/v1/predictions", payload={"id": "p1"})
        m.get(
            "https://rep.test/v1/predictions/p1",
            payload={"status": "succeeded", "output": 1, "metrics": {"predict_time": 3.25}},
        )
        call = _call()
        await replicate.run(call)
        assert call.gpu_seconds == 3.25
    fal = FalBackend(
        BackendSpec(
            name="f", kind="fal", base_url="https://fal.test", model="fal-ai/flux", poll_interval_s=0.001
        ),
        session,
    )
    with aioresponses() as m:
        m.post("https://fal.test/fal-ai/flux", payload={"request_id": "q1"})
        m.get(
            "https://fal.test/fal-ai/flux/requests/q1/status",
            payload={"status": "COMPLETED", "metrics": {"inference_time": 1.5}},
        )
        m.get("https://fal.test/fal-ai/flux/requests/q1", payload={"images": []})
        call = _call()
        await fal.run(call)
        assert call.gpu_seconds == 1.5


async def test_the_deadline_goes_to_the_provider(session: aiohttp.ClientSession) -> None:
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "j1"})
        m.get(f"{RP}/status/j1", payload={"status": "COMPLETED", "output": 1})
        call = _call()
        call.deadline_s = 2.0  # below RunPod's minimum
        await _runpod(session).run(call)
        [submit] = _requests(m, "POST", f"{RP}/run")
        assert submit.kwargs["json"]["policy"] == {"executionTimeout": 5000, "ttl": 10_000}
    replicate = ReplicateBackend(
        BackendSpec(
            name="r", kind="replicate", base_url="https://rep.test/v1", version="v", poll_interval_s=0.001
        ),
        session,
    )
    with aioresponses() as m:
        m.post("https://rep.test/v1/predictions", payload={"id": "p1"})
        m.get("https://rep.test/v1/predictions/p1", payload={"status": "succeeded", "output": 1})
        call = _call()
        call.deadline_s = 12.3
        await replicate.run(call)
        [create] = _requests(m, "POST", "https://rep.test/v1/predictions")
        assert create.kwargs["headers"]["Cancel-After"] == "13s"


async def test_status_polls_are_spread_not_in_step(
    session: aiohttp.ClientSession, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Jobs claimed together must not poll together for good: each wait is the interval
    +-20%, drawn afresh."""
    waits: list[float] = []

    def drawn(interval_s: float) -> float:
        waits.append(next_poll_in(interval_s))
        return 0.0

    monkeypatch.setattr(polling, "next_poll_in", drawn)
    backend = _runpod(session)
    interval = backend.spec.poll_interval_s
    with aioresponses() as m:
        m.post(f"{RP}/run", payload={"id": "abc"})
        for _ in range(40):
            m.get(f"{RP}/status/abc", payload={"status": "IN_PROGRESS"})
        m.get(f"{RP}/status/abc", payload={"status": "COMPLETED", "output": 1})
        assert await backend.run(_call()) == 1
    assert len(waits) == 40
    assert all(0.8 * interval <= w <= 1.2 * interval for w in waits)
    assert len(set(waits)) > 30
