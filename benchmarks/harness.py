"""What the benchmarks share: an embedded Postgres, a fake GPU endpoint that notes when each
connection closes, service processes, sign-in, and percentiles.

Clocks: time.perf_counter() is CLOCK_MONOTONIC on Linux, one clock for every process on
the machine, so times noted in different processes compare directly.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import platform
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit, urlunsplit

import aiohttp
import asyncpg

ROOT = Path(__file__).resolve().parent.parent


def raise_fd_limit() -> int:
    _soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    return hard


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def with_database(dsn: str, name: str, user: str | None = None) -> str:
    parts = urlsplit(dsn)
    netloc = parts.netloc
    if user is not None:
        netloc = f"{user}@{netloc.split('@', 1)[-1]}"
    return urlunsplit(parts._replace(path="/" + name, netloc=netloc))


@contextlib.contextmanager
def embedded_postgres() -> Iterator[str]:
    """A throw-away embedded Postgres (pgserver); yields the admin DSN."""
    url = os.environ.get("BENCH_DATABASE_URL")
    if url:
        yield url
        return
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        import pgserver  # type: ignore[import-untyped]
    with tempfile.TemporaryDirectory(prefix="runner-bench-") as tmp:
        server = pgserver.get_server(Path(tmp) / "pg", cleanup_mode="delete")
        try:
            yield server.get_uri()
        finally:
            server.cleanup()


async def fresh_database(admin_dsn: str, name: str, *, role: str | None = None) -> str:
    """A new database (owned by `role`, a plain login role, when given); returns its DSN."""
    conn = await asyncpg.connect(admin_dsn)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        if role is not None:
            exists = await conn.fetchval("SELECT 1 FROM pg_roles WHERE rolname = $1", role)
            if not exists:
                await conn.execute(f'CREATE ROLE "{role}" LOGIN')
            await conn.execute(f'CREATE DATABASE "{name}" OWNER "{role}"')
        else:
            await conn.execute(f'CREATE DATABASE "{name}"')
    finally:
        await conn.close()
    return with_database(admin_dsn, name, role)


class _HoldProtocol(asyncio.Protocol):
    """One connection to the fake GPU: read the request head, never answer, note the close.
    A raw protocol, so what is measured is the socket closing, not a web framework's
    handling of it (aiohttp's handler cancellation costs ~100 us per connection)."""

    def __init__(self, fake: FakeGpu) -> None:
        self.fake = fake
        self.buffer = b""
        self.key: str | None = None

    def data_received(self, data: bytes) -> None:
        if self.key is not None:
            return
        self.buffer += data
        head, sep, _ = self.buffer.partition(b"\r\n\r\n")
        if not sep:
            return
        lines = head.decode("latin-1").split("\r\n")
        key = ""
        for line in lines[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "x-runner-execution-id":
                key = value.strip()
        if not key and "key=" in lines[0]:
            key = lines[0].split("key=", 1)[1].split()[0].split("&")[0]
        self.key = key
        self.buffer = b""
        self.fake.note_open(key)

    def connection_lost(self, exc: Exception | None) -> None:
        if self.key is not None:
            self.fake.note_close(self.key)


@dataclass
class FakeGpu:
    """Holds every request open (GPU work) and notes when its connection closes.

    Not a provider's fake (those are runner.fakes, shared with the tests and `runner demo`,
    and remote_stop.py uses RunPod's): an instrument for the http kind's close latency, on
    a raw protocol so that what is measured is the socket closing."""

    opened: dict[str, float] = field(default_factory=dict)
    closed: dict[str, float] = field(default_factory=dict)
    _waiters: dict[str, asyncio.Future[float]] = field(default_factory=dict)
    _open_target: int = 0
    _all_open: asyncio.Event = field(default_factory=asyncio.Event)
    _server: asyncio.base_events.Server | None = None
    url: str = ""

    async def start(self) -> str:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(lambda: _HoldProtocol(self), "127.0.0.1", 0, backlog=20000)
        port = self._server.sockets[0].getsockname()[1]
        self.url = f"http://127.0.0.1:{port}"
        return self.url

    async def stop(self) -> None:
        if self._server is not None:
            self._server.close()

    def note_open(self, key: str) -> None:
        self.opened[key] = time.perf_counter()
        if self._open_target and len(self.opened) >= self._open_target:
            self._all_open.set()

    def note_close(self, key: str) -> None:
        now = time.perf_counter()
        self.closed[key] = now
        waiter = self._waiters.pop(key, None)
        if waiter is not None and not waiter.done():
            waiter.set_result(now)

    async def wait_open(self, count: int, timeout: float = 300) -> None:
        self._open_target = count
        if len(self.opened) >= count:
            return
        self._all_open.clear()
        await asyncio.wait_for(self._all_open.wait(), timeout)

    def close_of(self, key: str) -> asyncio.Future[float]:
        """A future resolved with the time the connection for `key` closed."""
        fut: asyncio.Future[float] = asyncio.get_running_loop().create_future()
        if key in self.closed:
            fut.set_result(self.closed[key])
        else:
            self._waiters[key] = fut
        return fut


@contextlib.contextmanager
def log_directory(keep: Path | None) -> Iterator[str]:
    """Where the services write their logs: `keep` (created if need be), else a temporary one."""
    if keep is not None:
        keep.mkdir(parents=True, exist_ok=True)
        yield str(keep)
        return
    with tempfile.TemporaryDirectory() as tmp:
        yield tmp


@dataclass
class Service:
    proc: subprocess.Popen[bytes]
    port: int | None
    log: Path

    @property
    def base(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def rss_peak_mb(self) -> float:
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
        return float("nan")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()


async def start_service(dsn: str, role: str, env: dict[str, str], logdir: Path) -> Service:
    port = free_port()  # a worker-only instance serves its probes and metrics there
    log = logdir / f"runner-{role}-{port}-{time.monotonic_ns()}.log"
    full_env = {**os.environ, "DATABASE_URL": dsn, "RUNNER_LOG_FORMAT": "json", **env}
    full_env.update(RUNNER_PORT=str(port), RUNNER_SIWE_DOMAIN=f"127.0.0.1:{port}")
    proc = subprocess.Popen(
        [os.path.abspath(sys.executable), "-m", "runner", "serve", "--role", role],
        env=full_env,
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        cwd=logdir,
    )
    service = Service(proc, port, log)
    deadline = time.monotonic() + 60
    async with aiohttp.ClientSession() as http:
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"runner {role} exited: {log.read_text()[-2000:]}")
            with contextlib.suppress(aiohttp.ClientError):
                async with http.get(f"{service.base}/readyz") as resp:
                    if resp.status == 200:
                        return service
            await asyncio.sleep(0.05)
    raise RuntimeError(f"runner {role} did not become ready: {log.read_text()[-2000:]}")


async def sign_in(http: aiohttp.ClientSession, base: str) -> dict[str, str]:
    """Sign in with a fresh key through the real EIP-4361 flow; returns auth headers."""
    from eth_account import Account

    from runner.client.http import Client, WalletKey

    client = Client(base)
    try:
        await client.login(WalletKey("0x" + bytes(Account.create().key).hex(), development=True))
        return {"Authorization": f"Bearer {client.token}"}
    finally:
        await client.close()


def percentiles(samples_ms: list[float]) -> dict[str, float]:
    data = sorted(samples_ms)

    def pick(q: float) -> float:
        return data[min(len(data) - 1, round(q * (len(data) - 1)))]

    return {
        "n": len(data),
        "p50": pick(0.50),
        "p95": pick(0.95),
        "p99": pick(0.99),
        "max": data[-1],
        "mean": statistics.fmean(data),
    }


def fmt(stats: dict[str, float]) -> str:
    return (
        f"n={int(stats['n'])}  p50={stats['p50']:.3f} ms  p95={stats['p95']:.3f} ms  "
        f"p99={stats['p99']:.3f} ms  max={stats['max']:.3f} ms"
    )


def machine() -> str:
    load = os.getloadavg()
    return (
        f"{platform.node()}: {os.cpu_count()} cores, Python {platform.python_version()}, "
        f"load average {load[0]:.2f} {load[1]:.2f} {load[2]:.2f}"
    )


@contextlib.asynccontextmanager
async def http_session(limit: int = 0) -> AsyncIterator[aiohttp.ClientSession]:
    async with aiohttp.ClientSession(connector=aiohttp.TCPConnector(limit=limit)) as http:
        yield http


Request = Callable[[], Awaitable[tuple[int, bytes]]]  # sends one prepared request: (status, body)
Requests = Callable[[str, str], Request]  # (method, path) -> a prepared request


class _RawHttpProtocol(asyncio.Protocol):
    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.buffer = bytearray()
        self.waiter: asyncio.Future[tuple[int, bytes]] | None = None
        self.lost: BaseException | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport  # type: ignore[assignment]  # uvloop's is no asyncio.Transport subclass

    def data_received(self, data: bytes) -> None:
        self.buffer += data
        head_end = self.buffer.find(b"\r\n\r\n")
        if head_end < 0 or self.waiter is None:
            return
        head = bytes(self.buffer[:head_end]).decode("latin-1").split("\r\n")
        length = 0
        for line in head[1:]:
            name, _, value = line.partition(":")
            if name.strip().lower() == "content-length":
                length = int(value)
        end = head_end + 4 + length
        if len(self.buffer) < end:
            return
        body = bytes(self.buffer[head_end + 4 : end])
        del self.buffer[:end]
        waiter, self.waiter = self.waiter, None
        if not waiter.done():
            waiter.set_result((int(head[0].split()[1]), body))

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = exc or ConnectionResetError("the server closed the connection")
        if self.waiter is not None and not self.waiter.done():
            self.waiter.set_exception(self.lost)


class RawHttp:
    """The measuring client of the latency benchmarks: one keep-alive HTTP/1.1 connection,
    requests written as prepared bytes, replies read by Content-Length. It costs the shared
    2-core machine a few tens of microseconds of CPU per request where aiohttp's client costs
    a few hundred (as load generators such as wrk are kept light), so what is measured is the
    service, not the client's share of the CPU. Only for our own simple replies: no chunked
    encoding, no redirects."""

    def __init__(self, base: str, headers: dict[str, str]) -> None:
        parts = urlsplit(base)
        self.host, self.port = parts.hostname or "127.0.0.1", parts.port or 80
        self._fixed = "".join(f"{k}: {v}\r\n" for k, v in {"Host": parts.netloc, **headers}.items()).encode(
            "latin-1"
        )
        self._protocol: _RawHttpProtocol | None = None

    async def __aenter__(self) -> RawHttp:
        loop = asyncio.get_running_loop()
        _transport, self._protocol = await loop.create_connection(_RawHttpProtocol, self.host, self.port)
        return self

    async def __aexit__(self, *_exc: object) -> None:
        if self._protocol is not None and self._protocol.transport is not None:
            self._protocol.transport.close()

    def request(self, method: str, path: str) -> Request:
        """The request, its bytes built now (before the clock starts); calling it sends it."""
        data = f"{method} {path} HTTP/1.1\r\n".encode("latin-1") + self._fixed + b"Content-Length: 0\r\n\r\n"
        return lambda: self._send(data)

    async def _send(self, data: bytes) -> tuple[int, bytes]:
        protocol = self._protocol
        assert protocol is not None and protocol.transport is not None
        if protocol.lost is not None:
            raise protocol.lost
        protocol.waiter = asyncio.get_running_loop().create_future()
        protocol.transport.write(data)
        return await protocol.waiter


def aiohttp_requests(http: aiohttp.ClientSession, base: str, headers: dict[str, str]) -> Requests:
    """The same as RawHttp.request, through aiohttp's client."""

    def request(method: str, path: str) -> Request:
        async def send() -> tuple[int, bytes]:
            async with http.request(method, base + path, headers=headers) as resp:
                return resp.status, await resp.read()

        return send

    return request


def cpu_seconds(service_pid: int) -> tuple[float, float]:
    """CPU time (user + system) of the service, and of every Postgres process on the machine."""
    tick = os.sysconf("SC_CLK_TCK")

    def of(pid: str) -> float:
        try:
            fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            return 0.0  # it exited
        return (int(fields[11]) + int(fields[12])) / tick

    postgres = 0.0
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            try:
                comm = (entry / "comm").read_text().strip()
            except OSError:
                continue
            if comm == "postgres":
                postgres += of(entry.name)
    return of(str(service_pid)), postgres


def extra_spy_args() -> list[str]:
    """BENCH_PY_SPY_ARGS="--native --rate 40" adds C frames (py-spy then pauses the process
    for each sample: keep the rate low)."""
    return os.environ.get("BENCH_PY_SPY_ARGS", "--rate 500 --nonblocking").split()


def host_cpu() -> tuple[int, int]:
    """(all CPU time, time stolen by the hypervisor) since boot, in ticks (/proc/stat)."""
    try:
        fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    except (OSError, ValueError):
        return 0, 0
    return sum(fields[:8]), fields[7] if len(fields) > 7 else 0


def steal_line(before: tuple[int, int], after: tuple[int, int]) -> str:
    """The share of the machine's CPU time the host took back in between: noise we cannot see
    in our own processes' CPU time."""
    total = after[0] - before[0]
    return f"{(after[1] - before[1]) / total * 100:.1f}%" if total > 0 else "unknown"


def start_recorder(argv: list[str]) -> subprocess.Popen[bytes]:
    """A recorder (py-spy, perf) running beside the measurement; stop it with stop_recorder."""
    recorder = subprocess.Popen(argv)
    time.sleep(1.0)  # it attaches before the clock starts
    return recorder


def stop_recorder(recorder: subprocess.Popen[bytes] | None) -> None:
    """Interrupt it, so that it writes what it recorded, and wait for it."""
    if recorder is not None:
        recorder.send_signal(signal.SIGINT)
        recorder.wait(60)


def start_py_spy(pid: int, out: str) -> subprocess.Popen[bytes]:
    return start_recorder(
        ["py-spy", "record", "--pid", str(pid), "--format", "speedscope", "--output", out, *extra_spy_args()]
    )


def summary_line(name: str, value: Any) -> None:
    print(f"{name:<44} {value}", flush=True)
