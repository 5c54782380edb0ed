"""The `runner` command: the service verbs (serve, migrate)."""

from __future__ import annotations

import argparse
import asyncio
import signal
import sys
from collections.abc import Sequence

import structlog

from runner.config import load_settings
from runner.db import migrate as migrate_db
from runner.db import resolve_dsn
from runner.errors import ConfigError, RunnerError
from runner.logs import configure_logging

log = structlog.get_logger("runner.cli")

EXIT_OK, EXIT_ERROR, EXIT_USAGE = 0, 1, 2


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:  # type: ignore[override]
        self.print_usage(sys.stderr)
        print(f"runner: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", description="GPU job runner whose Cancel really stops it.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    serve = verbs.add_parser("serve", help="apply migrations, then serve the API and/or worker")
    serve.add_argument("--role", choices=("all", "api", "worker"), default="all")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    verbs.add_parser("migrate", help="apply pending migrations and exit")
    return parser


async def _serve(args: argparse.Namespace) -> int:
    from runner.service import serve

    settings = load_settings()
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        settings = settings.replace(port=args.port)
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)  # handlers only set the Event
    await serve(settings, args.role, stop)
    return EXIT_OK


async def _migrate(args: argparse.Namespace) -> int:
    settings = load_settings()
    dsn, embedded = await resolve_dsn(settings.database_url, settings.data_dir)
    try:
        applied = await migrate_db(dsn)
    finally:
        if embedded is not None:
            embedded.stop()
    log.info("migrations_done", applied=applied)
    return EXIT_OK


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        settings = load_settings()
    except ConfigError as exc:
        print(f"runner: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    configure_logging(settings.log_format)
    handlers = {"serve": _serve, "migrate": _migrate}
    try:
        return asyncio.run(handlers[args.verb](args))
    except ConfigError as exc:
        print(f"runner: configuration error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except RunnerError as exc:
        print(f"runner: {exc}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    raise SystemExit(main())
