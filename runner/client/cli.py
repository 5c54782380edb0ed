"""The `runner` command: the service (serve, migrate, demo) and the API client verbs."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Callable, Coroutine, Sequence
from typing import Any, NoReturn

import structlog

from runner.client.http import Client, ClientError, NotSignedIn, TokenStore, config_dir, wallet_key
from runner.client.progress import Progress, execution_line, follow, job_line
from runner.config import load_settings
from runner.errors import ConfigError, RunnerError
from runner.logs import configure_logging

EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_NOT_CANCELLABLE, EXIT_AUTH, EXIT_NOT_FOUND = 0, 1, 2, 3, 4, 5
EXIT_INTERRUPTED = 130
DEFAULT_API_URL = "http://127.0.0.1:8080"


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> NoReturn:
        if "--json" in sys.argv[1:]:
            print(json.dumps({"ok": False, "error": "usage", "message": message}))
        else:
            self.print_usage(sys.stderr)
            print(f"runner: error: {message}", file=sys.stderr)
        raise SystemExit(EXIT_USAGE)


def _globals(in_verb: bool) -> _Parser:
    """Global flags, accepted before or after the verb: the verb's copy has no default, so
    it only overrides what was given before the verb."""
    parser = _Parser(add_help=False)

    def default(value: object) -> object:
        return argparse.SUPPRESS if in_verb else value

    parser.add_argument("--api-url", default=default(os.environ.get("RUNNER_API_URL", DEFAULT_API_URL)),
                        help="API URL (RUNNER_API_URL)")
    parser.add_argument("-q", "--quiet", action="store_true", default=default(False),
                        help="print nothing on success")
    parser.add_argument("-v", "--verbose", action="store_true", default=default(False),
                        help="show each HTTP exchange (never the token)")
    parser.add_argument("--json", action="store_true", default=default(False),
                        help="print exactly one JSON document")
    return parser


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(prog="runner", parents=[_globals(False)],
                     description="GPU jobs on serverless backends, whose Cancel really stops them.")
    verbs = parser.add_subparsers(dest="verb", required=True, parser_class=_Parser)
    common = [_globals(True)]
    serve = verbs.add_parser("serve", parents=common, help="apply migrations, then serve")
    serve.add_argument("--role", choices=("all", "api", "worker"), default="all")
    serve.add_argument("--host")
    serve.add_argument("--port", type=int)
    verbs.add_parser("migrate", parents=common, help="apply pending migrations and exit")
    verbs.add_parser("demo", parents=common, help="see a cancel stop GPU calls, on the embedded default")
    verbs.add_parser("login", parents=common, help="sign in with a wallet key (EIP-4361)")
    submit = verbs.add_parser("submit", parents=common, help="submit a job")
    submit.add_argument("--backend", action="append", required=True, help="backend name (repeatable)")
    submit.add_argument("--input", action="append", required=True, help="input JSON (repeatable)")
    submit.add_argument("--timeout-s", type=int, help="cancel the job after this many seconds")
    submit.add_argument("--wait", action="store_true", help="follow it to the end")
    verbs.add_parser("jobs", parents=common, help="list your jobs")
    status = verbs.add_parser("status", parents=common, help="show a job")
    status.add_argument("job_id")
    status.add_argument("--watch", action="store_true", help="follow it live")
    cancel = verbs.add_parser("cancel", parents=common, help="cancel a job, or all of yours")
    cancel.add_argument("job_id", nargs="?")
    cancel.add_argument("--reason")
    cancel.add_argument("--wait", action="store_true", help="return once its task has stopped")
    cancel.add_argument("--all", action="store_true", help="cancel all your active jobs")
    cancel.add_argument("--queued-only", action="store_true", help="with --all: queued jobs only")
    return parser


class Output:
    def __init__(self, args: argparse.Namespace) -> None:
        self.json, self.quiet = args.json, args.quiet

    def result(self, document: Any, text: str) -> None:
        if self.json:
            print(json.dumps(document))
        elif not self.quiet and text:
            print(text)

    def error(self, err: ClientError) -> int:
        if self.json:
            print(json.dumps(err.body))
        else:
            hint = "; run `runner login`" if err.status == 401 and "runner login" not in err.message else ""
            print(f"runner: {err.message}{hint}", file=sys.stderr)
        if err.status in (401, 403):
            return EXIT_AUTH
        if err.status == 404:
            return EXIT_NOT_FOUND
        if err.status == 409 and err.code == "not_cancellable":
            return EXIT_NOT_CANCELLABLE
        return EXIT_ERROR


def _job_text(job: dict[str, Any]) -> str:
    return "\n".join([job_line(job)] + [execution_line(i + 1, e) for i, e in enumerate(job["executions"])])


async def _follow(client: Client, job_id: str, out: Output) -> dict[str, Any]:
    """Follow a job live; Ctrl-C asks whether to cancel it (on a terminal)."""
    progress = None if out.json or out.quiet else Progress(sys.stdout, tty=sys.stdout.isatty())
    loop = asyncio.get_running_loop()
    interrupted = asyncio.Event()
    loop.add_signal_handler(signal.SIGINT, interrupted.set)
    try:
        while True:
            watching = asyncio.create_task(follow(client.events(job_id), progress), name="follow")
            stop = asyncio.create_task(interrupted.wait(), name="interrupt")
            await asyncio.wait({watching, stop}, return_when=asyncio.FIRST_COMPLETED)
            stop.cancel()
            if watching.done():
                return watching.result()
            watching.cancel()
            await asyncio.gather(watching, return_exceptions=True)
            interrupted.clear()
            if sys.stdin.isatty() and await asyncio.to_thread(_ask, f"\nCancel job {job_id}? [y/N] "):
                await client.call("POST", f"/jobs/{job_id}/cancel",
                                  json_body={"reason": "interrupted from the CLI"})
                continue  # follow it to its end
            raise KeyboardInterrupt
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _ask(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


async def _login(args: argparse.Namespace, client: Client, out: Output) -> int:
    key = wallet_key()
    session = await client.login(key)
    TokenStore().put(client.api_url, session)
    note = ""
    if key.development:
        note = (f"\n(a development key, kept in {config_dir() / 'dev-wallet.key'}: not a real wallet; "
                "set RUNNER_WALLET_KEY to sign in with yours)")
    out.result({"ok": True, "address": session["address"], "expires_at": session["expires_at"],
                "development_key": key.development},
               f"signed in to {client.api_url} as {session['address']}{note}")
    return EXIT_OK


async def _submit(args: argparse.Namespace, client: Client, out: Output) -> int:
    if len(args.backend) != len(args.input):
        raise _Usage("give one --input per --backend, in pairs")
    executions = []
    for backend, raw in zip(args.backend, args.input, strict=True):
        try:
            executions.append({"backend": backend, "input": json.loads(raw)})
        except ValueError as exc:
            raise _Usage(f"--input is not JSON: {exc}") from None
    body: dict[str, Any] = {"executions": executions}
    if args.timeout_s is not None:
        body["timeout_s"] = args.timeout_s
    job = await client.call("POST", "/jobs", json_body=body)
    if not args.wait:
        out.result(job, job["id"])
        return EXIT_OK
    if not (out.json or out.quiet):
        print(f"submitted job {job['id']}")
    final = await _follow(client, job["id"], out)
    out.result(final, "")
    return EXIT_OK if final["status"] == "completed" else EXIT_ERROR


async def _jobs(args: argparse.Namespace, client: Client, out: Output) -> int:
    reply = await client.call("GET", "/jobs?limit=50")
    lines = [f"{j['id']}  {j['status']:<10} {j['created_at']}  {len(j['executions'])} execution(s)"
             for j in reply["jobs"]]
    out.result(reply, "\n".join(lines) or "no jobs")
    return EXIT_OK


async def _status(args: argparse.Namespace, client: Client, out: Output) -> int:
    if args.watch:
        out.result(await _follow(client, args.job_id, out), "")
    else:
        job = await client.call("GET", f"/jobs/{args.job_id}")
        out.result(job, _job_text(job))
    return EXIT_OK


async def _cancel(args: argparse.Namespace, client: Client, out: Output) -> int:
    body = {"reason": args.reason} if args.reason else None
    if args.all:
        if args.job_id or args.wait:
            raise _Usage("--all takes no job id and no --wait")
        statuses = ["queued"] if args.queued_only else ["queued", "running"]
        reply = await client.call("POST", "/jobs/cancel", json_body={**(body or {}), "statuses": statuses})
        out.result(reply, f"cancelled {reply['count']} job(s), {reply['executions_cancelled']} execution(s)")
        return EXIT_OK
    if not args.job_id or args.queued_only:
        raise _Usage("give a job id, or --all [--queued-only]")
    reply = await client.call("POST", f"/jobs/{args.job_id}/cancel" + ("?wait=true" if args.wait else ""),
                              json_body=body)
    if reply["previous_status"] == "cancelled":
        text = f"job {args.job_id} was already cancelled"
    else:
        text = (f"cancelled job {args.job_id} (was {reply['previous_status']}; "
                f"{reply['executions_cancelled']} execution(s) cancelled)")
    if args.wait:
        text += "; its task has stopped" if reply.get("stopped") else "; its task did not stop within 10 s"
    out.result(reply, text)
    return EXIT_OK


class _Usage(Exception):
    pass


Verb = Callable[[argparse.Namespace, Client, Output], Coroutine[Any, Any, int]]
CLIENT_VERBS: dict[str, Verb] = {"login": _login, "submit": _submit, "jobs": _jobs,
                                 "status": _status, "cancel": _cancel}


async def _client_verb(args: argparse.Namespace, out: Output) -> int:
    verb = CLIENT_VERBS[args.verb]
    client = Client(args.api_url, verbose=args.verbose)
    try:
        if args.verb != "login":
            client.token = TokenStore().token(client.api_url)
        return await verb(args, client, out)
    finally:
        await client.close()


def _raise_open_files_limit() -> None:
    """Each running job holds sockets: lift the soft limit on open files to the hard one
    (container defaults are often 1024, far below RUNNER_CONCURRENCY's needs)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
    structlog.get_logger("runner.client.cli").info("open_files_limit", soft=hard, was=soft)


async def _serve(args: argparse.Namespace) -> int:
    from runner.service import serve

    _raise_open_files_limit()
    settings = load_settings()
    if args.host:
        settings = settings.replace(host=args.host)
    if args.port is not None:
        settings = settings.replace(port=args.port)
    stop, hurry = asyncio.Event(), asyncio.Event()

    def on_signal() -> None:  # handlers only set an Event: the first stops, a second hurries
        (hurry if stop.is_set() else stop).set()

    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, on_signal)
    await serve(settings, args.role, stop, hurry)
    return EXIT_OK


async def _migrate(args: argparse.Namespace) -> int:
    from runner.db import migrate, resolve_dsn

    settings = load_settings()
    dsn, embedded = await resolve_dsn(settings.database_url, settings.data_dir)
    try:
        applied = await migrate(dsn)
    finally:
        if embedded is not None:
            embedded.stop()
    structlog.get_logger("runner.client.cli").info("migrations_done", applied=applied)
    return EXIT_OK


async def _demo(args: argparse.Namespace) -> int:
    from runner.client.demo import run_demo

    return await run_demo(load_settings(), sys.stdout, as_json=args.json, verbose=args.verbose)


def _run_loop(coro: Coroutine[Any, Any, int]) -> int:
    """The service's loop: uvloop (fewer microseconds per socket event on the cancel path)."""
    import uvloop

    return uvloop.run(coro)


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    out = Output(args)
    service_verbs = {"serve": _serve, "migrate": _migrate, "demo": _demo}
    try:
        if args.verb in service_verbs:
            settings = load_settings()
            quiet = args.verb == "demo" and not args.verbose
            configure_logging(settings.log_format, logging.WARNING if quiet else logging.INFO)
            return _run_loop(service_verbs[args.verb](args))
        return asyncio.run(_client_verb(args, out))
    except ConfigError as exc:
        out.error(ClientError(0, "configuration", f"configuration error: {exc}"))
        return EXIT_USAGE
    except _Usage as exc:
        out.error(ClientError(0, "usage", str(exc)))
        return EXIT_USAGE
    except NotSignedIn as exc:
        return out.error(exc)
    except ClientError as exc:
        return out.error(exc)
    except RunnerError as exc:
        return out.error(ClientError(0, "error", str(exc)))
    except KeyboardInterrupt:
        print("\nrunner: interrupted; the job goes on (see `runner status ID --watch`)", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
