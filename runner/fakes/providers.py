"""Every fake provider on one real local socket: the http kind's endpoint at `/`, RunPod at
`/v2`, Replicate at `/replicate/v1`, fal at `/fal`."""

from __future__ import annotations

from dataclasses import dataclass, field

from aiohttp import web
from aiohttp.web_runner import AppRunner

from runner.fakes.fal import FakeFal
from runner.fakes.replicate import FakeReplicate
from runner.fakes.runpod import FakeRunPod
from runner.fakes.web import FakeWebEndpoint


@dataclass
class FakeProviders:
    web: FakeWebEndpoint = field(default_factory=FakeWebEndpoint)
    runpod: FakeRunPod = field(default_factory=FakeRunPod)
    replicate: FakeReplicate = field(default_factory=FakeReplicate)
    fal: FakeFal = field(default_factory=FakeFal)
    base_url: str = ""
    _runner: AppRunner | None = None

    async def start(self, host: str = "127.0.0.1", port: int = 0) -> str:
        app = web.Application(client_max_size=16 << 20)
        self.web.add_routes(app)
        self.runpod.add_routes(app, "/v2")
        self.replicate.add_routes(app, "/replicate/v1")
        self.fal.add_routes(app, "/fal")
        # handler_cancellation: a handler is cancelled when its client goes away, which is how
        # the web endpoint sees "the connection closed".
        self._runner = AppRunner(app, handler_cancellation=True, access_log=None)
        await self._runner.setup()
        site = web.TCPSite(self._runner, host, port, backlog=4096)
        await site.start()
        self.base_url = f"http://{host}:{self._runner.addresses[0][1]}"
        self.replicate.base_url = self.fal.base_url = self.base_url
        return self.base_url

    @property
    def runpod_url(self) -> str:
        """A runpod backend's base_url."""
        return f"{self.base_url}/v2"

    @property
    def replicate_url(self) -> str:
        return f"{self.base_url}/replicate/v1"

    @property
    def fal_url(self) -> str:
        return f"{self.base_url}/fal"

    async def stop(self) -> None:
        await self.web.stop_calls()
        if self._runner is not None:
            await self._runner.cleanup()
