"""Real `runner serve` processes for tests that need a process boundary: crashes, kills,
signals. Each instance's JSON log lines are read as they come, so a test waits on the event
it needs (the API listening, a job claimed) rather than on time."""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import sys
from dataclasses import dataclass, field
from typing import Any

from tests.client import free_port


@dataclass
class ServeProcess:
    dsn: str | None
    backends_toml: str = ""
    role: str = "all"
    env_extra: dict[str, str] = field(default_factory=dict)
    port: int = field(default_factory=free_port)
    proc: asyncio.subprocess.Process | None = None
    logs: list[dict[str, Any]] = field(default_factory=list)
    _seen: asyncio.Condition = field(default_factory=asyncio.Condition)
    _reader: asyncio.Task[None] | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def domain(self) -> str:
        return f"127.0.0.1:{self.port}"

    def env(self) -> dict[str, str]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")}
        env.pop("DATABASE_URL", None)
        env.update(
            {
                "RUNNER_HOST": "127.0.0.1",
                "RUNNER_PORT": str(self.port),
                "RUNNER_LOG_FORMAT": "json",
                "RUNNER_SIWE_DOMAIN": f"runner.test,{self.domain}",
                "RUNNER_SHUTDOWN_GRACE_S": "5",
                "RUNNER_MAX_SUBMITS_PER_MINUTE": "100000",
            }
        )
        if self.dsn is not None:
            env["DATABASE_URL"] = self.dsn
        if self.backends_toml:
            env["RUNNER_BACKENDS_TOML"] = self.backends_toml
        env.update(self.env_extra)
        return env

    async def start(self, *, ready_event: str | None = "api_listening", timeout: float = 60) -> ServeProcess:
        self.proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runner",
            "serve",
            "--role",
            self.role,
            env=self.env(),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.DEVNULL,
            stderr=asyncio.subprocess.PIPE,
        )
        self._reader = asyncio.create_task(self._read(), name=f"serve-log-{self.port}")
        if ready_event is not None:
            await self.wait_log(ready_event, timeout=timeout)
        return self

    async def _read(self) -> None:
        assert self.proc is not None and self.proc.stderr is not None
        async for raw in self.proc.stderr:
            try:
                line = json.loads(raw)
            except ValueError:
                line = {"event": "raw", "text": raw.decode(errors="replace").rstrip()}
            async with self._seen:
                self.logs.append(line if isinstance(line, dict) else {"event": "raw", "text": str(line)})
                self._seen.notify_all()
        async with self._seen:
            self.logs.append({"event": "<exited>"})
            self._seen.notify_all()

    def events(self, name: str) -> list[dict[str, Any]]:
        return [line for line in self.logs if line.get("event") == name]

    async def wait_log(
        self, event: str, *, count: int = 1, timeout: float = 30, **match: Any
    ) -> dict[str, Any]:
        """The `count`-th log line named `event` (with `match`ing fields); fails if the process
        exits or `timeout` passes first."""

        def found() -> list[dict[str, Any]]:
            return [
                line
                for line in self.logs
                if line.get("event") == event and all(line.get(k) == v for k, v in match.items())
            ]

        async with asyncio.timeout(timeout), self._seen:
            while len(found()) < count:
                if self.logs and self.logs[-1].get("event") == "<exited>":
                    tail = "\n".join(json.dumps(line) for line in self.logs[-15:])
                    raise AssertionError(f"runner serve exited before {event!r}:\n{tail}")
                await self._seen.wait()
            return found()[count - 1]

    @property
    def alive(self) -> bool:
        return self.proc is not None and self.proc.returncode is None

    def signal(self, sig: int) -> None:
        assert self.proc is not None
        self.proc.send_signal(sig)

    async def wait(self, timeout: float = 60) -> int:
        assert self.proc is not None
        code = await asyncio.wait_for(self.proc.wait(), timeout)
        if self._reader is not None:
            await self._reader
        return code

    async def stop(self) -> None:
        """SIGTERM, then SIGKILL if it has not ended within a while."""
        if self.proc is None or self.proc.returncode is not None:
            if self._reader is not None:
                await self._reader
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            await self.wait(30)
        except TimeoutError:
            with contextlib.suppress(ProcessLookupError):
                self.proc.kill()
            await self.wait(10)

    def kill(self) -> None:
        assert self.proc is not None
        with contextlib.suppress(ProcessLookupError):
            self.proc.kill()
