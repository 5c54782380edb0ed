"""The one owner of an instance's background tasks (pgqueuer's TaskManager idea): long-lived
named tasks (the listener, the claim loop, periodic work) and short ones (a timeout's cancel,
a stop record). Every task is named; stop() cancels and awaits them all.

A long-lived task that dies of an error is started again after a backoff, and until it runs
again `dead` names it (/readyz answers 503): never a live-looking instance whose worker is gone."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Awaitable, Callable, Coroutine
from typing import Any

import structlog

from runner.db import backoff_s, is_transient

log = structlog.get_logger("runner.supervisor")


class Supervisor:
    def __init__(self) -> None:
        self.tasks: dict[str, asyncio.Task[Any]] = {}
        self._short: set[asyncio.Task[Any]] = set()
        self.dead: dict[str, str] = {}  # long-lived tasks that died, until they run again: why
        self.deaths = 0
        self._stopping = False

    def spawn(self, name: str, start: Callable[[], Coroutine[Any, Any, Any]]) -> asyncio.Task[Any]:
        """Start a long-lived named task from `start`; if it dies of an error it is started
        again (after a backoff); stop() cancels and awaits it."""
        if name in self.tasks:
            raise RuntimeError(f"a background task named {name} is already running")
        return self._start(name, start, failures=0)

    def _start(
        self, name: str, start: Callable[[], Coroutine[Any, Any, Any]], failures: int
    ) -> asyncio.Task[Any]:
        task = asyncio.create_task(self._guarded(name, start, failures), name=name)
        self.tasks[name] = task
        return task

    async def _guarded(self, name: str, start: Callable[[], Coroutine[Any, Any, Any]], failures: int) -> Any:
        if failures:
            # Backs off so that a task that dies at once does not spin the loop.
            await asyncio.sleep(backoff_s(failures, cap_s=30.0))
        self.dead.pop(name, None)
        try:
            return await start()
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            self.deaths += 1
            self.dead[name] = repr(exc)
            log.exception("background_task_died", task=name)
            if not self._stopping:
                self._start(name, start, failures + 1)
            return None  # logged above; the task's replacement is in self.tasks

    def every(self, name: str, interval_s: float, fn: Callable[[], Awaitable[Any]]) -> None:
        """Run `fn` periodically in a named task; an error is logged and the loop goes on
        (a database that is away is only a warning: the next round tries again)."""

        async def loop() -> None:
            while True:
                await asyncio.sleep(interval_s)
                await _round(name, fn)

        self.spawn(name, loop)

    def paced(
        self, name: str, longest_s: float, fn: Callable[[], Awaitable[float | None]], wake: asyncio.Event
    ) -> None:
        """Run `fn` in a named task at once, then whenever `wake` is set or the time it
        returned (seconds until it has work due; None: nothing known) has passed, waiting
        at most `longest_s` (and, unless woken, at least PACED_FLOOR_S): a poll that sleeps
        while nothing is due. Errors as in every()."""

        async def loop() -> None:
            while True:
                wake.clear()
                due_in_s = await _round(name, fn)
                wait_s = longest_s if due_in_s is None else min(longest_s, max(PACED_FLOOR_S, due_in_s))
                with contextlib.suppress(TimeoutError):
                    async with asyncio.timeout(wait_s):
                        await wake.wait()

        self.spawn(name, loop)

    def track(self, coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
        """A short task beside the jobs (a timeout's cancel, a stop record, a re-check):
        awaited by wait_short() when the worker drains, cancelled by stop()."""
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self._short.add(task)
        task.add_done_callback(self._short.discard)
        return task

    def once(self, name: str, fn: Callable[[], Awaitable[Any]]) -> asyncio.Task[Any]:
        """One round of periodic work now, as a short task (an error logged as every()'s are)."""
        return self.track(_round(name, fn), name)

    async def wait_short(self) -> None:
        while self._short:
            await asyncio.gather(*list(self._short), return_exceptions=True)

    def halt(self) -> None:
        """Cancel every long-lived task at once without waiting: the instance stops acting
        (no renewals, claims, notifications or sweeps), as if its process had died."""
        for task in self.tasks.values():
            task.cancel()

    async def stop(self) -> None:
        self._stopping = True
        tasks = [*self.tasks.values(), *self._short]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self.tasks.clear()


# Unless woken, a paced round comes at most this often, whatever is due: work due but not
# to be had (taken by another instance a moment ago) would otherwise bring round after round.
PACED_FLOOR_S = 0.5


async def _round(name: str, fn: Callable[[], Awaitable[Any]]) -> Any:
    """One round of periodic work; an error is logged (a transient one as a warning) and
    gives None."""
    try:
        return await fn()
    except asyncio.CancelledError:
        raise
    except Exception as exc:
        if is_transient(exc):
            log.warning("periodic_task_failed", task=name, error=repr(exc))
        else:
            log.exception("periodic_task_failed", task=name)
        return None
