"""Fakes of the GPU providers as they really behave, on a real local socket: one per
provider, shared by the tests, `runner demo` and the benchmarks. Each behaviour cites where
the provider writes it down; what no source shows is marked "composed".

Not part of the service: nothing in the daemon imports this package.
"""

from runner.fakes.fal import FakeFal
from runner.fakes.providers import FakeProviders
from runner.fakes.replicate import FakeReplicate
from runner.fakes.runpod import FakeRunPod
from runner.fakes.web import FakeWebEndpoint

__all__ = ["FakeFal", "FakeProviders", "FakeReplicate", "FakeRunPod", "FakeWebEndpoint"]
