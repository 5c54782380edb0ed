from __future__ import annotations

import asyncio
import threading
import uuid

from runner.cancel.registry import JobContextManager, PendingCancel, StopReason


async def _forever(started: asyncio.Event | None = None) -> None:
    if started is not None:
        started.set()
    await asyncio.sleep(3600)


async def test_register_cancel_unregister() -> None:
    manager = JobContextManager()
    job_id = uuid.uuid4()
    started = asyncio.Event()
    task = asyncio.create_task(_forever(started))
    ctx = manager.register(job_id, task)
    await started.wait()
    assert manager.is_running(job_id) and manager.count() == 1
    assert manager.cancel(job_id, StopReason.CANCELLED) is True
    assert ctx.reason is StopReason.CANCELLED and ctx.cancel_requested_at is not None
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    manager.unregister(job_id)
    assert not manager.is_running(job_id) and manager.count() == 0


async def test_a_task_is_cancelled_once_however_often_asked() -> None:
    manager = JobContextManager()
    job_id = uuid.uuid4()
    cancels = 0
    release = asyncio.Event()

    async def cleanup_takes_a_while() -> None:
        nonlocal cancels
        try:
            await asyncio.sleep(3600)
        except asyncio.CancelledError:
            cancels += 1
            await release.wait()  # a second cancel would interrupt this
            raise

    task = asyncio.create_task(cleanup_takes_a_while())
    manager.register(job_id, task)
    await asyncio.sleep(0)
    for _ in range(5):
        assert manager.cancel(job_id)
    await asyncio.sleep(0)
    release.set()
    await asyncio.gather(task, return_exceptions=True)
    assert cancels == 1 and task.cancelled()


async def test_a_real_cancel_overrides_a_shutdown_reason() -> None:
    manager = JobContextManager()
    job_id = uuid.uuid4()
    task = asyncio.create_task(_forever())
    ctx = manager.register(job_id, task)
    manager.cancel(job_id, StopReason.SHUTDOWN)
    manager.cancel(job_id, StopReason.CANCELLED)
    manager.cancel(job_id, StopReason.LEASE_LOST)
    assert ctx.reason is StopReason.CANCELLED
    await asyncio.gather(task, return_exceptions=True)


async def test_cancel_before_register_is_applied_at_register() -> None:
    manager = JobContextManager()
    job_id, execution_id = uuid.uuid4(), uuid.uuid4()
    assert manager.cancel(job_id) is False  # the NOTIFY outran the claim
    assert manager.cancel_execution(uuid.uuid4(), execution_id) is False
    task = asyncio.create_task(_forever())
    ctx = manager.register(job_id, task)
    assert ctx.reason is StopReason.CANCELLED
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
    # A shutdown is not remembered: it only concerns tasks that exist.
    other = uuid.uuid4()
    assert manager.cancel(other, StopReason.SHUTDOWN) is False
    task2 = asyncio.create_task(_forever())
    assert manager.register(other, task2).reason is None
    task2.cancel()
    await asyncio.gather(task2, return_exceptions=True)


async def test_cancel_execution_reaches_only_that_execution() -> None:
    manager = JobContextManager()
    job_id, a, b = uuid.uuid4(), uuid.uuid4(), uuid.uuid4()
    job_task = asyncio.create_task(_forever())
    ctx = manager.register(job_id, job_task)
    ctx.executions[a] = asyncio.create_task(_forever())
    ctx.executions[b] = asyncio.create_task(_forever())
    await asyncio.sleep(0)
    assert manager.cancel_execution(job_id, a)
    await asyncio.gather(ctx.executions[a], return_exceptions=True)
    assert ctx.executions[a].cancelled() and not ctx.executions[b].done() and not job_task.done()
    # Recorded before its task exists: the job task skips it.
    late = uuid.uuid4()
    assert manager.cancel_execution(job_id, late)
    assert ctx.execution_reasons[late] is StopReason.CANCELLED
    for task in (ctx.executions[b], job_task):
        task.cancel()
    await asyncio.gather(ctx.executions[b], job_task, return_exceptions=True)


async def test_cancel_from_other_threads_while_tasks_come_and_go() -> None:
    """Four threads cancel every job while the loop registers and unregisters them."""
    manager = JobContextManager()
    loop = asyncio.get_running_loop()
    ids = [uuid.uuid4() for _ in range(400)]
    tasks: dict[uuid.UUID, asyncio.Task[None]] = {}
    go = threading.Event()
    errors: list[BaseException] = []

    def canceller(chunk: list[uuid.UUID]) -> None:
        go.wait()
        try:
            for _ in range(3):
                for job_id in chunk:
                    manager.cancel(job_id)
                    manager.is_running(job_id)
                    manager.count()
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=canceller, args=(ids[i::4],)) for i in range(4)]
    for t in threads:
        t.start()
    go.set()
    for i, job_id in enumerate(ids):
        tasks[job_id] = asyncio.create_task(_forever())
        manager.register(job_id, tasks[job_id], loop)
        if i % 3 == 0:
            manager.unregister(job_id)
            tasks[job_id].cancel()
        await asyncio.sleep(0)
    await asyncio.to_thread(lambda: [t.join() for t in threads])
    # Every task was cancelled: by a thread (through call_soon_threadsafe), by the early-cancel
    # memory at register when the thread came first, or by the loop above.
    results = await asyncio.wait_for(asyncio.gather(*tasks.values(), return_exceptions=True), 5)
    assert not errors
    assert all(isinstance(r, asyncio.CancelledError) for r in results)
    for job_id in ids:
        manager.unregister(job_id)
    assert manager.count() == 0


async def test_cancel_ahead_only_for_the_owner_or_an_admin_and_only_on_the_tasks_loop() -> None:
    manager = JobContextManager()
    job_id = uuid.uuid4()
    task = asyncio.create_task(_forever())
    ctx = manager.register(job_id, task, owner="0xOwner")
    statement: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def pending(actor: str, admin: bool = False) -> PendingCancel:
        return PendingCancel(actor, admin, None, statement)

    assert manager.cancel_ahead(uuid.uuid4(), StopReason.CANCELLED, pending("0xOwner")) is False
    assert manager.cancel_ahead(job_id, StopReason.CANCELLED, pending("0xStranger")) is False
    # Another thread: its futures could not be awaited by the task, so it waits for the commit.
    assert (
        await asyncio.to_thread(manager.cancel_ahead, job_id, StopReason.CANCELLED, pending("0xOwner"))
        is False
    )
    assert ctx.reason is None and ctx.pending_cancel is None and not task.done()

    admin = pending("0xAdmin", admin=True)
    assert manager.cancel_ahead(job_id, StopReason.CANCELLED, admin) is True
    assert ctx.pending_cancel is admin and ctx.reason is StopReason.CANCELLED
    assert manager.cancel_ahead(job_id, StopReason.CANCELLED, pending("0xOwner")) is False  # once
    assert ctx.pending_cancel is admin
    await asyncio.gather(task, return_exceptions=True)
    assert task.cancelled()
