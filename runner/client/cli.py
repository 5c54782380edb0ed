"""The `runner` command: its arguments, its output, its exit codes. The verbs themselves are
in runner.client.verbs (the API client's) and runner.client.serving (the service's)."""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from runner.client.http import Client, ClientError, NotSignedIn, TokenStore
from runner.client.serving import SERVICE_VERBS, run_loop
from runner.client.verbs import CLIENT_VERBS, CONFIRM_OVER, Interrupted, Usage
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

    parser.add_argument(
        "--api-url",
        default=default(os.environ.get("RUNNER_API_URL", DEFAULT_API_URL)),
        help=f"the service's URL (RUNNER_API_URL; default {DEFAULT_API_URL})",
    )
    parser.add_argument(
        "-q",
        "--quiet",
        action="store_true",
        default=default(False),
        help="print nothing on success (submit still prints the job id)",
    )
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        default=default(False),
        help="show each HTTP exchange on stderr (tokens and tickets are never shown)",
    )
    parser.add_argument(
        "--json",
        action="store_true",
        default=default(False),
        help="print exactly one JSON document on stdout, errors included",
    )
    return parser


def _verb(verbs: Any, name: str, summary: str, description: str) -> _Parser:
    parser: _Parser = verbs.add_parser(
        name, parents=[_globals(True)], help=summary, description=f"{summary}. {description}"
    )
    return parser


def _filter_options(parser: _Parser, statuses: str) -> None:
    """The job filter's options, shared by `jobs` and `cancel`: every one given must match."""
    parser.add_argument(
        "--status",
        action="append",
        help=f"only jobs in this status ({statuses}); repeatable, or a comma list",
    )
    parser.add_argument(
        "--backend",
        action="append",
        help="only jobs with an execution on this backend; repeatable, or a comma list",
    )
    parser.add_argument(
        "--meta",
        action="append",
        metavar="KEY=VALUE",
        help="only jobs whose metadata has KEY set to the string VALUE; repeatable (all must match)",
    )
    parser.add_argument(
        "--since", help="only jobs created at or after this time (ISO 8601, or a date: its midnight UTC)"
    )
    parser.add_argument("--before", help="only jobs created before this time (ISO 8601, or a date)")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="runner",
        parents=[_globals(False)],
        description="GPU jobs on serverless backends, whose Cancel really stops them. "
        "Exit codes: 0 ok, 1 error, 2 usage, 3 not cancellable, "
        "4 not signed in or forbidden, 5 not found.",
    )
    # Not required: bare `runner` prints this help (main), not an error.
    verbs = parser.add_subparsers(dest="verb", parser_class=_Parser, metavar="VERB")
    serve = _verb(
        verbs,
        "serve",
        "run the service",
        "Applies pending migrations, then serves the API and/or runs the worker, "
        "configured by RUNNER_* environment variables (see docs/configuration.md). SIGTERM, "
        "SIGINT or SIGHUP drains; a second one interrupts and requeues at once. "
        "SIGUSR1 and SIGUSR2 are ignored.",
    )
    serve.add_argument(
        "--role",
        choices=("all", "api", "worker"),
        default="all",
        help="all (default): API and worker; api: HTTP only; worker: jobs only "
        "(it still serves /healthz, /readyz and /metrics)",
    )
    serve.add_argument("--host", help="listen address (overrides RUNNER_HOST)")
    serve.add_argument("--port", type=int, help="listen port (overrides RUNNER_PORT)")
    _verb(
        verbs,
        "migrate",
        "apply pending migrations and exit",
        "For a release step (Fly's release_command); `serve` applies them too.",
    )
    _verb(
        verbs,
        "demo",
        "see a cancel stop GPU calls",
        "Starts the service on the embedded Postgres with a simulated GPU endpoint, submits "
        "three executions, cancels them in flight, and prints the timeline in milliseconds.",
    )
    login = _verb(
        verbs,
        "login",
        "sign in with a wallet key (EIP-4361)",
        "Signs a Sign-In with Ethereum message for the API URL's host:port with "
        "RUNNER_WALLET_KEY, or with a development key generated once in the config dir "
        "(RUNNER_CONFIG_DIR, default ~/.config/runner); the session is kept there.",
    )
    login.add_argument(
        "--print-token",
        action="store_true",
        help="print the session token alone, for scripts: TOKEN=$(runner login --print-token)",
    )
    _verb(verbs, "logout", "sign out", "Revokes the session on every instance and forgets it here.")
    submit = _verb(
        verbs,
        "submit",
        "submit a job",
        "One execution per --backend/--input pair, in order. Prints the job's id.",
    )
    submit.add_argument(
        "--backend",
        action="append",
        required=True,
        help="a configured backend's name (see `runner backends`); repeatable",
    )
    submit.add_argument(
        "--input", action="append", required=True, help="that execution's input, as JSON; repeatable"
    )
    submit.add_argument("--timeout-s", type=int, help="cancel the job if it runs longer than this")
    submit.add_argument(
        "--webhook",
        metavar="URL",
        help="POST each of the job's events to this https URL, signed (see docs/api.md, Webhooks)",
    )
    submit.add_argument(
        "--webhook-event",
        action="append",
        dest="webhook_events",
        metavar="EVENT",
        choices=("started", "completed", "failed", "cancelled", "remote_stopped"),
        help="only this event (repeat for several; default all)",
    )
    submit.add_argument(
        "--concurrency-key",
        metavar="KEY",
        help="a key kept on the job (up to 255 printable characters), for --supersede and filters",
    )
    submit.add_argument(
        "--supersede",
        action="store_true",
        help="cancel your queued and running jobs with the same --concurrency-key (reason "
        "'superseded') as this one is created",
    )
    submit.add_argument(
        "--wait", action="store_true", help="follow it live to its end; exit 0 only if it completes"
    )
    jobs = _verb(verbs, "jobs", "list your jobs", "Newest first; the filter options narrow them.")
    _filter_options(jobs, "queued, running, completed, failed, cancelled")
    jobs.add_argument("--limit", type=int, default=50, help="jobs per page, 1-200 (default 50)")
    jobs.add_argument("--all", action="store_true", help="every page, not just the first")
    status = _verb(
        verbs,
        "status",
        "show a job",
        "Its executions with their status, elapsed time, output or error, and spend.",
    )
    status.add_argument("job_id", help="the job's id, or a unique prefix of 8 or more characters")
    status.add_argument(
        "--watch", action="store_true", help="follow it live to its end; exit 0 only if it completes"
    )
    cancel = _verb(
        verbs,
        "cancel",
        "cancel a job, all of yours, or those a filter names",
        "Stops its task, its HTTP calls and its work at the backend. With filter options "
        "(no job id), cancels your queued and running jobs that match them all; more than "
        f"{CONFIRM_OVER} are confirmed on the terminal first (or pass --yes).",
    )
    cancel.add_argument("job_id", nargs="?", help="the job's id")
    cancel.add_argument("--reason", help="kept in the job's audit trail (at most 500 characters)")
    cancel.add_argument("--wait", action="store_true", help="answer once its task has stopped (10 s at most)")
    cancel.add_argument(
        "--all", action="store_true", help="cancel all your active jobs (or all a filter names)"
    )
    cancel.add_argument("--queued-only", action="store_true", help="with --all: queued jobs only")
    _filter_options(cancel, "queued, running")
    cancel.add_argument(
        "--dry-run",
        action="store_true",
        help="cancel nothing: print how many jobs would be cancelled, and the first 50 ids",
    )
    cancel.add_argument(
        "--yes",
        action="store_true",
        help=f"cancel more than {CONFIRM_OVER} filtered jobs without asking "
        "(needed with --json, or without a terminal)",
    )
    _verb(
        verbs,
        "backends",
        "list the configured backends",
        "Their names and kinds, and whether a cancel reaches the provider.",
    )
    rerun = _verb(
        verbs,
        "rerun",
        "re-run a cancelled or failed job",
        "A new job: the executions that completed are kept (never sent again), the "
        "others run again. Prints the new job's id.",
    )
    rerun.add_argument("job_id", help="the cancelled or failed job")
    rerun.add_argument(
        "--execution",
        action="append",
        help="run this execution again even if it completed; repeatable "
        "(default: every one that did not complete)",
    )
    rerun.add_argument(
        "--wait", action="store_true", help="follow the new job live to its end; exit 0 only if it completes"
    )
    usage = _verb(
        verbs,
        "usage",
        "show your spend",
        "Jobs, executions and GPU-seconds per backend, and what ran on after a cancel.",
    )
    usage.add_argument("--since", help="from this time (ISO 8601; default 30 days before --until)")
    usage.add_argument("--until", help="to this time (ISO 8601; default now)")
    return parser


class Output:
    def __init__(self, args: argparse.Namespace) -> None:
        self.json, self.quiet = args.json, args.quiet

    def result(self, document: Any, text: str, *, always: bool = False) -> None:
        """Print the result: `document` with --json, else `text` (nothing with -q, unless
        `always`: what a script needs, such as a new job's id)."""
        if self.json:
            print(json.dumps(document))
        elif (always or not self.quiet) and text:
            print(text)

    def error(self, err: ClientError) -> int:
        if self.json:
            print(json.dumps(err.body))
        else:
            signed_out = err.code == "unauthenticated" and "runner login" not in err.message
            print(f"runner: {err.message}{'; run `runner login`' if signed_out else ''}", file=sys.stderr)
        if err.status in (401, 403):
            return EXIT_AUTH
        if err.status == 404:
            return EXIT_NOT_FOUND
        if err.status == 409 and err.code == "not_cancellable":
            return EXIT_NOT_CANCELLABLE
        return EXIT_ERROR


def _check_api_url(url: str) -> None:
    from urllib.parse import urlsplit

    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        parts = None
    if parts is None or parts.scheme not in ("http", "https") or not parts.hostname:
        hint = f"http://{url}" if "://" not in url else "http://host:port"
        raise Usage(f"--api-url {url!r} is not an http(s) URL: write {hint} (or https://...)")


async def _client_verb(args: argparse.Namespace, out: Output) -> int:
    verb = CLIENT_VERBS[args.verb]
    _check_api_url(args.api_url)
    client = Client(args.api_url, verbose=args.verbose)
    try:
        if args.verb != "login":
            client.token = TokenStore().token(client.api_url)
        return await verb(args, client, out)
    finally:
        await client.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.verb is None:
        if args.json:
            parser.error("give a verb")
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    out = Output(args)
    try:
        if args.verb in SERVICE_VERBS:
            settings = load_settings()
            quiet = args.verb == "demo" and not args.verbose
            configure_logging(settings.log_format, logging.WARNING if quiet else logging.INFO)
            return run_loop(SERVICE_VERBS[args.verb](args))
        return asyncio.run(_client_verb(args, out))
    except ConfigError as exc:
        out.error(ClientError(0, "configuration", f"configuration error: {exc}"))
        return EXIT_USAGE
    except Usage as exc:
        out.error(ClientError(0, "usage", str(exc)))
        return EXIT_USAGE
    except NotSignedIn as exc:
        return out.error(exc)
    except ClientError as exc:
        return out.error(exc)
    except RunnerError as exc:  # a start-up failure among them: one line, naming what failed
        return out.error(ClientError(0, "error", str(exc)))
    except Interrupted as exc:
        print(
            f"\nrunner: interrupted; the job goes on (see `runner status {exc.job_id} --watch`)",
            file=sys.stderr,
        )
        return EXIT_INTERRUPTED
    except KeyboardInterrupt:
        print("\nrunner: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    raise SystemExit(main())
