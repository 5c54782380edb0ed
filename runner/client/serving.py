"""The verbs that start the service itself: `serve`, `migrate`, `demo`. They import the
server lazily, so the client verbs never load it."""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import signal
import sys
from collections.abc import Coroutine
from typing import Any

import structlog

from runner.config import load_settings, settings_warnings
from runner.errors import ConfigError

log = structlog.get_logger("runner.client.cli")


def _raise_open_files_limit() -> None:
    """Each running job holds sockets: lift the soft limit on open files to the hard one
    (container defaults are often 1024, far below RUNNER_CONCURRENCY's needs)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    log.info("open_files_limit", soft=hard, was=soft)


def _require_shared_database(database_url: str | None, role: str) -> None:
    """Refuse the embedded database where it cannot be shared: a fleet's api or worker role,
    or any machine on Fly (which sets FLY_APP_NAME), the release machine's migrate included.
    There each machine would get a throw-away database, and jobs would reach no worker."""
    if database_url:
        return
    if role != "all":
        raise ConfigError(
            f"--role {role} needs DATABASE_URL: an embedded database cannot be "
            "shared between instances, so its jobs would reach no other machine"
        )
    if os.environ.get("FLY_APP_NAME"):
        raise ConfigError(
            "on Fly (FLY_APP_NAME is set) DATABASE_URL is needed: an embedded database "
            "cannot be shared between machines; set it as a secret (docs/deploy-fly.md)"
        )


async def serve_verb(args: argparse.Namespace) -> int:
    from runner.service import serve

    settings = load_settings()  # first: a bad setting is the one line start-up prints
    _require_shared_database(settings.database_url, args.role)
    for warning in settings_warnings(os.environ, settings):
        log.warning(warning)
    _raise_open_files_limit()
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        settings = settings.replace(port=args.port)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:  # handlers only set an Event: the first stops, a second hurries
        (hurry if stop.is_set() else stop).set()

    def on_ignored(sig: signal.Signals) -> None:
        # Their default action kills the process with no drain; tools send them to probe.
        log.info("signal_ignored", signal=sig.name)

    loop = asyncio.get_running_loop()
    # SIGHUP too: a closed terminal or a supervisor's stop must drain, not kill mid-job.
    for sig in (signal.SIGTERM, signal.SIGINT, signal.SIGHUP):
        loop.add_signal_handler(sig, on_signal)
    for sig in (signal.SIGUSR1, signal.SIGUSR2):
        loop.add_signal_handler(sig, on_ignored, sig)
    await serve(settings, args.role, stop, hurry)
    return 0


async def migrate_verb(args: argparse.Namespace) -> int:
    from runner.db import resolve_dsn
    from runner.service import migrate_database

    settings = load_settings()
    _require_shared_database(settings.database_url, "all")
    dsn, embedded = await resolve_dsn(settings.database_url, settings.data_dir)
    try:
        applied = await migrate_database(dsn)
    finally:
        if embedded is not None:
            embedded.stop()
    log.info("migrations_done", applied=applied)
    if args.json:  # stdout holds exactly one JSON document with --json
        print(json.dumps({"ok": True, "applied": applied}))
    return 0


async def demo_verb(args: argparse.Namespace) -> int:
    from runner.client.demo import run_demo

    return await run_demo(load_settings(), sys.stdout, as_json=args.json, verbose=args.verbose)


SERVICE_VERBS = {"serve": serve_verb, "migrate": migrate_verb, "demo": demo_verb}


def run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """The service's loop: uvloop (fewer microseconds per socket event on the cancel path)."""
    import uvloop

    return uvloop.run(coro)
