"""Holding a subprocess's whole tree, so that a stop reaches every process it started.

The child's process group is not enough: a launcher that daemonizes calls setsid() and its work
leaves the group, and a process whose parent exits leaves the child's descendants. Two ways,
the first this machine allows:

- **cgroup v2**, where the runner's own cgroup is writable and the kernel has `cgroup.kill`
  (5.14+): each execution gets a child cgroup, and the child enters it before exec (a fixed sh
  line), so everything it ever starts is born inside. A stop signals the members, then writes
  `cgroup.kill`, which the kernel applies to the whole cgroup at once, forks included.
- **subreaper**: the runner marks itself PR_SET_CHILD_SUBREAPER, so a process orphaned inside
  the tree is re-parented to the runner rather than to init. A stop walks the child's
  descendants with psutil, plus the runner's own children that belong to the execution (its
  RUNNER_EXECUTION_ID in their environment, or the child's session), before signalling any.

Reaping: asyncio's child watcher waits only for the pids it started, so an orphan re-parented
to the runner (or to any PID 1, as in a container) would stay a zombie. `reap_orphans` waits
(WNOHANG) for every zombie child of the runner that is not a live backend child; it runs at the
end of every execution. (Other code of the runner that started a child and has not yet waited
for it could lose its exit status to this, in the instant between the child's exit and that
wait; nothing in the runner spawns processes besides this backend and the embedded Postgres's
tools, which wait at once.)
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import errno
import functools
import itertools
import os
import shutil
import signal
import sys
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from pathlib import Path
from uuid import UUID

import psutil
import structlog

log = structlog.get_logger("runner.backends.proctree")

PR_SET_CHILD_SUBREAPER = 36
POLL_S = 0.05  # how often a stop looks whether the tree is gone
KILL_WAIT_S = 10.0  # after SIGKILL: a process in uninterruptible sleep (a driver call) lingers
FREEZE_ROUNDS = 100  # walks while freezing; each round stops the processes the last one found
# $0 is the new cgroup's cgroup.procs: the shell moves itself in, then becomes the command.
ENTER_CGROUP = 'echo $$ > "$0" && exec "$@"'

_subreaper = False  # this process has made itself a child subreaper (it stays one)
_live: set[int] = set()  # children the backend started: asyncio's watcher reaps those
_spawning = 0  # spawns under way, whose pid is not in _live yet: no reaping meanwhile
_names = itertools.count()
_cgroup_warned = False


@functools.cache
def _own_cgroup() -> Path | None:
    """The runner's own cgroup v2 directory, when it may create child cgroups and move
    processes into them; None otherwise (not Linux, cgroup v1 only, not writable)."""
    if not sys.platform.startswith("linux") or not os.path.exists("/bin/sh"):
        return None
    try:
        own = next(
            line[3:] for line in Path("/proc/self/cgroup").read_text().splitlines() if line.startswith("0::")
        )
        mounts = Path("/proc/self/mountinfo").read_text().splitlines()
    except (OSError, StopIteration):
        return None
    for line in mounts:
        fields = line.split()
        if "-" not in fields or fields[fields.index("-") + 1] != "cgroup2":
            continue
        inside = os.path.relpath(own, fields[3])  # fields[3]: the mount's root in the hierarchy
        path = Path(fields[4], inside)
        if not inside.startswith("..") and all(os.access(p, os.W_OK) for p in (path, path / "cgroup.procs")):
            return path
    return None


def cgroup_base() -> Path | None:
    """Where execution cgroups are created, or None: use the subreaper."""
    return _own_cgroup()


@contextlib.contextmanager
def spawning() -> Iterator[None]:
    """Around a spawn: until its pid is known and registered, nothing is reaped."""
    global _spawning
    _spawning += 1
    try:
        yield
    finally:
        _spawning -= 1


def reap_orphans() -> int:
    """Reap the runner's zombie children that no one else waits for: the orphans re-parented
    to it. Only when it can have any (a subreaper, or PID 1)."""
    if not (_subreaper or os.getpid() == 1) or _spawning:
        return 0
    reaped = 0
    for child in psutil.Process().children():
        try:
            if child.pid in _live or child.status() != psutil.STATUS_ZOMBIE:
                continue
        except psutil.Error:
            continue
        with contextlib.suppress(ChildProcessError):
            reaped += os.waitpid(child.pid, os.WNOHANG)[0] != 0
    return reaped


def open_tree(execution_id: UUID) -> CgroupTree | ReaperTree:
    """A holder for one execution's processes: a fresh cgroup when possible."""
    global _cgroup_warned
    base = cgroup_base()
    if base is not None:
        path = base / f"runner-{execution_id}-{os.getpid()}-{next(_names)}"
        try:
            path.mkdir()
            if (path / "cgroup.kill").exists():
                return CgroupTree(path)
            path.rmdir()
            reason = "no cgroup.kill (Linux before 5.14)"
        except OSError as exc:
            reason = str(exc)
        if not _cgroup_warned:  # it would say the same for every execution
            _cgroup_warned = True
            log.warning("subprocess_cgroup_unusable", path=str(path), reason=reason)
    _become_subreaper()
    return ReaperTree(str(execution_id))


def _become_subreaper() -> None:
    global _subreaper
    if _subreaper or not sys.platform.startswith("linux"):
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0) != 0:
        log.warning("subprocess_subreaper_refused", error=os.strerror(ctypes.get_errno()))
        return
    _subreaper = True


async def until(done: Callable[[], bool], timeout_s: float) -> bool:
    """Whether `done()` came true within timeout_s (looked at every POLL_S)."""
    deadline = time.monotonic() + timeout_s
    while not done():
        if time.monotonic() >= deadline:
            return False
        await asyncio.sleep(POLL_S)
    return True


class CgroupTree:
    kind = "cgroup"

    def __init__(self, path: Path) -> None:
        self.path = path

    def argv(self, command: Sequence[str], search_path: str | None) -> list[str]:
        # Checked here, so that a program that cannot run fails to start as without the shim.
        program = command[0] if "/" in command[0] else shutil.which(command[0], path=search_path)
        if program is None or not os.path.exists(program):
            raise FileNotFoundError(errno.ENOENT, os.strerror(errno.ENOENT), command[0])
        if os.path.isdir(program) or not os.access(program, os.X_OK):
            raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), command[0])
        return ["/bin/sh", "-c", ENTER_CGROUP, str(self.path / "cgroup.procs"), program, *command[1:]]

    def started(self, pid: int) -> None:
        pass  # the shim has put it in the cgroup before exec

    def _members(self) -> list[int]:
        with contextlib.suppress(FileNotFoundError):
            return [int(pid) for pid in (self.path / "cgroup.procs").read_text().split()]
        return []

    def _empty(self) -> bool:
        try:
            return "populated 0" in (self.path / "cgroup.events").read_text()
        except FileNotFoundError:
            return True

    async def stop(self, grace_s: float) -> str | None:
        """SIGTERM every member, then, after grace_s, cgroup.kill. None: nothing was left."""
        members = self._members()
        if not members:
            return None
        _signal_pids(members, signal.SIGTERM)
        # Members forked since the list was read missed the SIGTERM: they get the kill.
        if await until(self._empty, grace_s):
            return "terminated"
        (self.path / "cgroup.kill").write_text("1")
        if not await until(self._empty, KILL_WAIT_S):
            log.warning("subprocess_cgroup_not_empty", path=str(self.path))
        return "killed"

    def close(self) -> None:
        try:
            self.path.rmdir()
        except OSError as exc:  # still populated: left for an operator, and said so
            log.warning("subprocess_cgroup_not_removed", path=str(self.path), error=str(exc))
        reap_orphans()  # an earlier fallback may have made the runner a subreaper


class ReaperTree:
    kind = "subreaper"

    def __init__(self, marker: str) -> None:
        self.marker = marker  # the execution id, in RUNNER_EXECUTION_ID of its processes
        self.leader: psutil.Process | None = None
        self.pid: int | None = None

    def argv(self, command: Sequence[str], search_path: str | None) -> list[str]:
        return list(command)

    def started(self, pid: int) -> None:
        _live.add(pid)
        self.pid = pid
        # Taken now: psutil keeps its start time, so a reused pid is never taken for it.
        with contextlib.suppress(psutil.Error):
            self.leader = psutil.Process(pid)

    def _belongs(self, proc: psutil.Process) -> bool:
        """Whether a process re-parented to the runner was started by this execution."""
        with contextlib.suppress(OSError):
            if os.getsid(proc.pid) == self.pid:  # never left the child's session
                return True
        with contextlib.suppress(psutil.Error):
            return bool(proc.environ().get("RUNNER_EXECUTION_ID") == self.marker)
        return False

    def _walk(self) -> dict[int, psutil.Process]:
        """Every process of the execution still alive. Taken before any is signalled: a killed
        parent's children move to the runner, out of the descendants of the child."""
        roots = [self.leader] if self.leader is not None else []
        for child in psutil.Process().children():
            if child.pid not in _live and self._belongs(child):
                roots.append(child)
        found: dict[int, psutil.Process] = {}
        for root in roots:
            with contextlib.suppress(psutil.Error):
                for proc in [root, *root.children(recursive=True)]:
                    if _alive(proc):
                        found[proc.pid] = proc
        return found

    def _freeze(self) -> list[psutil.Process]:
        """SIGSTOP what a walk finds until one finds nothing new: a stopped process cannot
        fork, so the SIGKILL that follows reaches all of them."""
        frozen: dict[int, psutil.Process] = {}
        for _ in range(FREEZE_ROUNDS):
            new = [p for pid, p in self._walk().items() if pid not in frozen]
            if not new:
                break
            _signal(new, signal.SIGSTOP)
            frozen.update((p.pid, p) for p in new)
        return list(frozen.values())

    async def stop(self, grace_s: float) -> str | None:
        """SIGTERM the tree, then, after grace_s, freeze and SIGKILL what is left."""
        procs = list(self._walk().values())
        if not procs:
            return None
        _signal(procs, signal.SIGTERM)
        # Done when those are gone and a new walk (orphans, forks since) finds none.
        if await until(lambda: not any(map(_alive, procs)), grace_s) and not self._walk():
            return "terminated"
        frozen = self._freeze()
        _signal(frozen, signal.SIGKILL)
        await until(lambda: not any(map(_alive, frozen)), KILL_WAIT_S)
        return "killed"

    def close(self) -> None:
        """Once asyncio has reaped the child: reap the orphans the stop left as zombies."""
        if self.pid is not None:
            _live.discard(self.pid)
        reap_orphans()


def _alive(proc: psutil.Process) -> bool:
    try:
        return bool(proc.is_running() and proc.status() != psutil.STATUS_ZOMBIE)
    except psutil.Error:
        return False


def _signal(procs: Iterable[psutil.Process], sig: signal.Signals) -> None:
    for proc in procs:
        with contextlib.suppress(psutil.Error):
            proc.send_signal(sig)  # psutil checks the start time: never a reused pid


def _signal_pids(pids: Iterable[int], sig: signal.Signals) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, sig)
