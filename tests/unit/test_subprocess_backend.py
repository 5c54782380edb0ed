"""The subprocess backend against hostile children (real processes): a grandchild that leaves
the process group with setsid(), one orphaned on purpose, output far past what memory should
hold. The plain cases (JSON in and out, SIGTERM then SIGKILL) are in test_backends.py."""

from __future__ import annotations

import asyncio
import ctypes
import sys
import time
import tracemalloc
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import psutil
import pytest
import structlog

from runner.backends import ExecutionCall, build_backend, proctree
from runner.backends.config import BackendSpec
from runner.errors import PermanentBackendError

DEADLINE_S = 30.0  # generous: the machine is shared and loaded

# Forks a grandchild that starts its own session (as a daemonizing launcher does), leaves the
# pipes, publishes its pid and sleeps. `ORPHAN`: an intermediate process forks it and exits, so
# the grandchild is no longer a descendant of the child. `EXIT`: the child then ends normally.
TREE = """
import json, os, pathlib, signal, sys, time
out = pathlib.Path(sys.argv[1])

def publish(name):
    tmp = out / (name + ".tmp")
    tmp.write_text(str(os.getpid()))
    tmp.rename(out / name)

def grandchild():
    os.setsid()
    if IGNORE_TERM:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
    null = os.open(os.devnull, os.O_RDWR)
    for fd in (0, 1, 2):
        os.dup2(null, fd)
    publish("grandchild")
    time.sleep(3600)
    os._exit(0)

if os.fork() == 0:
    if ORPHAN:
        publish("middle")
        if os.fork() == 0:
            grandchild()
        os._exit(0)
    grandchild()
while not (out / "grandchild").exists():
    time.sleep(0.01)
if EXIT:
    print(json.dumps({"ok": True}))
    sys.exit(0)
time.sleep(3600)
"""


def _call() -> ExecutionCall:
    return ExecutionCall(uuid.uuid4(), uuid.uuid4(), {"prompt": "x"})


def _backend(code: str, *args: str, **kw: Any) -> Any:
    spec = BackendSpec(name="p", kind="subprocess", command=(sys.executable, "-c", code, *args), **kw)
    return build_backend(spec, None)  # type: ignore[arg-type]


def _tree(*, orphan: bool = False, exit: bool = False, ignore_term: bool = False) -> str:
    flags = f"ORPHAN = {orphan}\nEXIT = {exit}\nIGNORE_TERM = {ignore_term}\n"
    return flags + TREE


@pytest.fixture(params=["cgroup", "subreaper"])
def containment(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Each test runs under both ways of holding a tree: a cgroup where this machine lets the
    runner create one, and the subreaper walk (forced by hiding the cgroup)."""
    if request.param == "cgroup":
        if proctree.cgroup_base() is None:
            pytest.skip("no writable cgroup v2 here")
    else:
        monkeypatch.setattr(proctree, "cgroup_base", lambda: None)
    was_subreaper = proctree._subreaper
    monkeypatch.setattr(proctree, "_subreaper", False)
    yield request.param
    # Leave the test process as it was: not a subreaper for the tests that follow.
    if sys.platform.startswith("linux") and not was_subreaper:
        ctypes.CDLL(None, use_errno=True).prctl(proctree.PR_SET_CHILD_SUBREAPER, 0, 0, 0, 0)


def _pid_in(path: Path) -> int | None:
    return int(path.read_text()) if path.exists() else None  # written whole (renamed into place)


async def _published(path: Path) -> psutil.Process:
    """The process whose pid the child wrote to `path`, once it has: another process, so no
    Event can cross; looked for until a deadline."""
    deadline = time.monotonic() + DEADLINE_S
    while (pid := _pid_in(path)) is None:
        assert time.monotonic() < deadline, f"{path.name} never appeared"
        await asyncio.sleep(0.01)
    return psutil.Process(pid)


def _stopped(proc: psutil.Process, containment: str) -> bool:
    """Dead; under the subreaper also reaped: the runner is its parent and must not keep a zombie.
    (Under a cgroup an orphan's reaper is init, not us.)"""
    try:
        return not proc.is_running() or (containment == "cgroup" and proc.status() == psutil.STATUS_ZOMBIE)
    except psutil.NoSuchProcess:
        return True


@pytest.mark.parametrize(
    ("ignore_term", "event"), [(False, "subprocess_terminated"), (True, "subprocess_killed")]
)
async def test_cancel_stops_a_grandchild_in_its_own_session(
    tmp_path: Path, containment: str, ignore_term: bool, event: str
) -> None:
    backend = _backend(_tree(ignore_term=ignore_term), str(tmp_path), grace_s=0.5)
    task = asyncio.create_task(backend.run(_call()))
    grandchild = await _published(tmp_path / "grandchild")
    with structlog.testing.capture_logs() as logs:
        task.cancel()
        with pytest.raises(asyncio.CancelledError):
            await asyncio.wait_for(task, DEADLINE_S)
    assert _stopped(grandchild, containment)
    assert [e["event"] for e in logs if e["event"].startswith("subprocess_")] == [event]


async def test_cancel_stops_an_orphaned_grandchild_and_reaps_what_it_left(
    tmp_path: Path, containment: str
) -> None:
    """The grandchild's parent is gone before the cancel: it is not under the child any more."""
    backend = _backend(_tree(orphan=True), str(tmp_path), grace_s=0.5)
    task = asyncio.create_task(backend.run(_call()))
    grandchild = await _published(tmp_path / "grandchild")
    middle_pid = int((tmp_path / "middle").read_text())
    task.cancel()
    with pytest.raises(asyncio.CancelledError):
        await asyncio.wait_for(task, DEADLINE_S)
    assert _stopped(grandchild, containment)
    if containment == "subreaper":  # the exited middle process was re-parented to us: reaped
        assert middle_pid not in {c.pid for c in psutil.Process().children()}


async def test_a_process_left_behind_by_a_finished_child_is_stopped(tmp_path: Path, containment: str) -> None:
    backend = _backend(_tree(exit=True), str(tmp_path), grace_s=0.5)
    task = asyncio.create_task(backend.run(_call()))
    grandchild = await _published(tmp_path / "grandchild")
    assert await asyncio.wait_for(task, DEADLINE_S) == {"ok": True}
    assert _stopped(grandchild, containment)


async def test_a_missing_program_still_fails_to_start(containment: str) -> None:
    """The cgroup's shim resolves the program first: the error is the one without it."""
    spec = BackendSpec(name="p", kind="subprocess", command=("no-such-program-here", "x"))
    with pytest.raises(PermanentBackendError, match="could not start 'no-such-program-here'"):
        await build_backend(spec, None).run(_call())  # type: ignore[arg-type]


async def test_timeout_stops_the_whole_tree(tmp_path: Path) -> None:
    # The timeout only has to outlast the grandchild's start on a loaded machine.
    backend = _backend(_tree(), str(tmp_path), grace_s=0.5, timeout_s=5)
    task = asyncio.create_task(backend.run(_call()))
    grandchild = await _published(tmp_path / "grandchild")
    with pytest.raises(PermanentBackendError, match="ran longer than 5"):
        await asyncio.wait_for(task, DEADLINE_S)
    assert _stopped(grandchild, "cgroup")


# -- output limits ----------------------------------------------------------------------------

MiB = 1024 * 1024
# Writes 200 MiB to a stream, a MiB at a time, then a last line; `done` is written only if
# every byte went out.
FLOOD = """
import os, pathlib, sys
pathlib.Path(sys.argv[1], "pid").write_text(str(os.getpid()))
stream = getattr(sys, sys.argv[2]).buffer
block = b"x" * 1048576
for _ in range(200):
    stream.write(block)
stream.write(b"\\nTHE END")
stream.flush()
pathlib.Path(sys.argv[1], "done").write_text("")
sys.exit(int(sys.argv[3]))
"""


async def _peak_bytes_while(coro: Any) -> tuple[Any, int]:
    """The coroutine's outcome (result or exception) and the peak of Python allocations."""
    tracemalloc.start()
    try:
        try:
            outcome = await coro
        except PermanentBackendError as exc:
            outcome = exc
        return outcome, tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


async def test_stdout_past_max_output_bytes_fails_and_stops_the_process(tmp_path: Path) -> None:
    backend = _backend(FLOOD, str(tmp_path), "stdout", "0", max_output_bytes=MiB)
    error, peak = await _peak_bytes_while(asyncio.wait_for(backend.run(_call()), DEADLINE_S))
    assert isinstance(error, PermanentBackendError)
    assert f"the output exceeded {MiB} bytes (max_output_bytes)" in str(error)
    assert peak < 16 * MiB  # the 200 MiB were never held
    assert not (tmp_path / "done").exists()  # stopped mid-write, not read to the end
    assert not psutil.pid_exists(int((tmp_path / "pid").read_text()))


async def test_stderr_keeps_only_its_tail(tmp_path: Path) -> None:
    backend = _backend(FLOOD, str(tmp_path), "stderr", "3", stderr_tail_bytes=64 * 1024)
    error, peak = await _peak_bytes_while(asyncio.wait_for(backend.run(_call()), DEADLINE_S))
    assert isinstance(error, PermanentBackendError)
    assert str(error).startswith("the process exited with 3: ")
    assert str(error).endswith("xxx\nTHE END")  # the tail, read to the end
    assert peak < 16 * MiB
    assert (tmp_path / "done").exists()


async def test_large_input_and_output_flow_at_once() -> None:
    """stdin is written while stdout and stderr are read: a child that writes much to stderr
    before it reads its input does not deadlock with us on full pipes."""
    code = (
        "import json, sys\n"
        "sys.stderr.write('e' * 2_000_000); sys.stderr.flush()\n"
        "n = len(json.load(sys.stdin)['prompt'])\n"
        "print(json.dumps({'n': n, 'pad': 'o' * 2_000_000}))\n"
    )
    call = ExecutionCall(uuid.uuid4(), uuid.uuid4(), {"prompt": "p" * 3_000_000})
    reply = await asyncio.wait_for(_backend(code).run(call), DEADLINE_S)
    assert reply["n"] == 3_000_000 and len(reply["pad"]) == 2_000_000
