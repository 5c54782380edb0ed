"""The client verbs: each calls the API through `Client` and prints through `Output`."""

from __future__ import annotations

import argparse
import asyncio
import json
import signal
import sys
import uuid
from collections.abc import Callable, Coroutine
from typing import Any, Protocol
from urllib.parse import urlencode

from runner.client.http import Client, ClientError, TokenStore, config_dir, wallet_key
from runner.client.progress import Progress, execution_line, follow, job_line
from runner.timeutil import parse_iso

EXIT_OK, EXIT_ERROR = 0, 1
CONFIRM_OVER = 10  # a filtered cancel of more jobs than this asks first (or needs --yes)


class Usage(Exception):
    """The verb's arguments do not fit together (exit 2)."""


class Interrupted(Exception):
    """Ctrl-C while following a job that goes on (exit 130)."""

    def __init__(self, job_id: str) -> None:
        super().__init__(job_id)
        self.job_id = job_id


class Printer(Protocol):
    json: bool
    quiet: bool

    def result(self, document: Any, text: str, *, always: bool = False) -> None: ...


def _exit_for(job: dict[str, Any]) -> int:
    """`submit --wait` and `status --watch`: 0 only when the job completed."""
    return EXIT_OK if job["status"] == "completed" else EXIT_ERROR


def _spend(seconds: Any) -> str:
    return f"  {seconds:.1f} GPU-s" if isinstance(seconds, int | float) else ""


def job_text(job: dict[str, Any], *, details: bool = False) -> str:
    """A job and its executions; with `details`, each execution's output or error too."""
    lines = [job_line(job) + _spend(job.get("gpu_seconds"))]
    for i, execution in enumerate(job["executions"], 1):
        lines.append(execution_line(i, execution) + _spend(execution.get("gpu_seconds")))
        if details and execution.get("output") is not None:
            lines.append(f"      output: {json.dumps(execution['output'])[:2000]}")
        if details and execution.get("error"):
            lines.append(f"      error: {execution['error']}")
    return "\n".join(lines)


async def _follow(client: Client, job_id: str, out: Printer) -> dict[str, Any]:
    """Follow a job live; Ctrl-C asks whether to cancel it (on a terminal)."""
    # Progress on stderr: stdout holds only the result, for ID=$(runner -q submit ... --wait).
    progress = None if out.json or out.quiet else Progress(sys.stderr, tty=sys.stderr.isatty())
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
                await client.call(
                    "POST", f"/jobs/{job_id}/cancel", json_body={"reason": "interrupted from the CLI"}
                )
                continue  # follow it to its end
            raise Interrupted(job_id)
    finally:
        loop.remove_signal_handler(signal.SIGINT)


def _ask(question: str) -> bool:
    try:
        return input(question).strip().lower() in ("y", "yes")
    except EOFError:
        return False


async def login(args: argparse.Namespace, client: Client, out: Printer) -> int:
    key = wallet_key()
    session = await client.login(key)
    TokenStore().put(client.api_url, session)
    note = ""
    if key.development:
        note = (
            f"\n(a development key, kept in {config_dir() / 'dev-wallet.key'}: not a real wallet; "
            "set RUNNER_WALLET_KEY to sign in with yours)"
        )
    if args.print_token:  # the token alone on stdout, for TOKEN=$(runner login --print-token)
        if note:
            print(note.strip(), file=sys.stderr)
        print(session["token"])
        return EXIT_OK
    out.result(
        {
            "ok": True,
            "address": session["address"],
            "expires_at": session["expires_at"],
            "development_key": key.development,
        },
        f"signed in to {client.api_url} as {session['address']}{note}",
    )
    return EXIT_OK


async def logout(args: argparse.Namespace, client: Client, out: Printer) -> int:
    await client.call("POST", "/auth/logout")
    TokenStore().forget(client.api_url)
    out.result({"ok": True}, f"signed out of {client.api_url}; the session is revoked")
    return EXIT_OK


MIN_PREFIX = 8  # what the portal shows


async def job_id(client: Client, given: str) -> str:
    """A job id, or a unique prefix of one (at least 8 characters) looked up among the
    wallet's jobs, newest first."""
    try:
        return str(uuid.UUID(given))
    except ValueError:
        pass
    prefix = given.lower()
    if len(prefix) < MIN_PREFIX or not all(c in "0123456789abcdef-" for c in prefix):
        raise Usage(f"{given!r} is not a job id, nor a prefix of one of at least {MIN_PREFIX} characters")
    found: list[str] = []
    query = {"limit": "200"}
    while True:
        reply = await client.call("GET", "/jobs?" + urlencode(query))
        found += [j["id"] for j in reply["jobs"] if j["id"].startswith(prefix)]
        if len(found) > 1 or not reply["next_cursor"]:
            break
        query["cursor"] = reply["next_cursor"]
    if not found:
        raise ClientError(404, "not_found", f"no job of yours starts with {given!r}")
    if len(found) > 1:
        raise Usage(f"{given!r} is the start of several jobs' ids; give more of it")
    return found[0]


async def submit(args: argparse.Namespace, client: Client, out: Printer) -> int:
    if len(args.backend) != len(args.input):
        raise Usage("give one --input per --backend, in pairs")
    executions = []
    for backend, raw in zip(args.backend, args.input, strict=True):
        try:
            executions.append({"backend": backend, "input": json.loads(raw)})
        except ValueError as exc:
            raise Usage(f"--input is not JSON: {exc}") from None
    body: dict[str, Any] = {"executions": executions}
    if args.timeout_s is not None:
        body["timeout_s"] = args.timeout_s
    if args.webhook is not None:
        body["webhook"] = args.webhook
    if args.webhook_events:
        body["webhook_events"] = args.webhook_events
    if args.supersede and args.concurrency_key is None:
        raise Usage("--supersede needs --concurrency-key")
    if args.concurrency_key is not None:
        body["concurrency_key"] = args.concurrency_key
    if args.supersede:
        body["on_conflict"] = "cancel_running"
    job = await client.call("POST", "/jobs", json_body=body)
    return await _new_job(client, out, job, args.wait, f"submitted job {job['id']}")


async def _new_job(client: Client, out: Printer, job: dict[str, Any], wait: bool, note: str) -> int:
    """A job just created: its id (for scripts), or with `wait`, followed to its end."""
    if not wait:
        out.result(job, job["id"], always=True)
        return EXIT_OK
    if not (out.json or out.quiet):
        print(note, file=sys.stderr, flush=True)
    final = await _follow(client, job["id"], out)
    out.result(final, final["id"] if out.quiet else job_text(final), always=True)
    return _exit_for(final)


async def jobs(args: argparse.Namespace, client: Client, out: Printer) -> int:
    """One page (--limit), or every page with --all, following next_cursor."""
    query: dict[str, str] = {"limit": str(args.limit)}
    job_filter = _filter(args)
    for name in ("statuses", "backends"):
        if name in job_filter:
            query[name] = ",".join(job_filter.pop(name))
    query.update({f"meta.{k}": v for k, v in job_filter.pop("metadata", {}).items()})
    query.update(job_filter)
    found: list[dict[str, Any]] = []
    while True:
        reply = await client.call("GET", "/jobs?" + urlencode(query))
        found += reply["jobs"]
        if not args.all or not reply["next_cursor"]:
            break
        query["cursor"] = reply["next_cursor"]
    lines = [
        f"{j['id']}  {j['status']:<10} {j['created_at']}  {len(j['executions'])} execution(s)" for j in found
    ]
    more = reply["next_cursor"] if not args.all else None
    if more and lines:
        lines.append("(more: --all, or --limit up to 200)")
    out.result({"jobs": found, "next_cursor": more}, "\n".join(lines) or "no jobs")
    return EXIT_OK


async def status(args: argparse.Namespace, client: Client, out: Printer) -> int:
    args.job_id = await job_id(client, args.job_id)
    if args.watch:
        final = await _follow(client, args.job_id, out)
        out.result(final, job_text(final))
        return _exit_for(final)
    job = await client.call("GET", f"/jobs/{args.job_id}")
    out.result(job, job_text(job, details=True))
    return EXIT_OK


async def cancel(args: argparse.Namespace, client: Client, out: Printer) -> int:
    body = {"reason": args.reason} if args.reason else None
    job_filter = _filter(args)
    if args.all or job_filter or args.dry_run:
        if args.job_id or args.wait:
            raise Usage("--all, a filter and --dry-run take no job id and no --wait")
        filtered = bool(job_filter)  # --queued-only alone is `--all`'s, not a filter to confirm
        if args.queued_only:
            job_filter["statuses"] = ["queued"]
        return await _cancel_many(args, client, out, {**(body or {}), **job_filter}, filtered=filtered)
    if not args.job_id or args.queued_only:
        raise Usage("give a job id, or --all [--queued-only], or a filter (--status, --backend, --meta, ...)")
    args.job_id = await job_id(client, args.job_id)
    reply = await client.call(
        "POST", f"/jobs/{args.job_id}/cancel" + ("?wait=true" if args.wait else ""), json_body=body
    )
    if reply["previous_status"] == "cancelled":
        text = f"job {args.job_id} was already cancelled"
    else:
        text = (
            f"cancelled job {args.job_id} (was {reply['previous_status']}; "
            f"{reply['executions_cancelled']} execution(s) cancelled)"
        )
    if args.wait:
        text += "; its task has stopped" if reply.get("stopped") else "; its task did not stop within 10 s"
    out.result(reply, text)
    return EXIT_OK


def _filter(args: argparse.Namespace) -> dict[str, Any]:
    """The job filter the options give (as POST /jobs/cancel's body has it): --status,
    --backend (each repeatable or a comma list), --meta KEY=VALUE, --since, --before."""
    found: dict[str, Any] = {}
    for option, name in (("status", "statuses"), ("backend", "backends")):
        values = [v.strip() for given in getattr(args, option) or [] for v in given.split(",") if v.strip()]
        if values:
            found[name] = list(dict.fromkeys(values))
    metadata: dict[str, str] = {}
    for pair in args.meta or []:
        key, sep, value = pair.partition("=")
        if not sep or not key:
            raise Usage(f"--meta {pair!r}: write KEY=VALUE")
        metadata[key] = value
    if metadata:
        found["metadata"] = metadata
    for option, name in (("since", "created_after"), ("before", "created_before")):
        given = getattr(args, option)
        if given:
            try:
                parse_iso(given)
            except (ValueError, OverflowError):
                raise Usage(
                    f"--{option} {given!r} is not an ISO 8601 time, such as 2026-11-01T00:00:00Z"
                ) from None
            found[name] = given
    return found


async def _cancel_many(
    args: argparse.Namespace, client: Client, out: Printer, body: dict[str, Any], *, filtered: bool
) -> int:
    """A bulk cancel: --dry-run says what it would cancel; a filtered one of more than
    CONFIRM_OVER jobs is confirmed on the terminal first, unless --yes."""
    if args.dry_run or (filtered and not args.yes):
        dry = await client.call("POST", "/jobs/cancel", json_body={**body, "dry_run": True})
        shown = "".join(f"\n  {i}" for i in dry["ids"])
        more = f"\n  ... and {dry['count'] - len(dry['ids'])} more" if dry["count"] > len(dry["ids"]) else ""
        if args.dry_run:
            out.result(dry, f"{dry['count']} job(s) would be cancelled{shown}{more}")
            return EXIT_OK
        if dry["count"] > CONFIRM_OVER:
            if out.json or not sys.stdin.isatty():
                raise Usage(f"{dry['count']} jobs match; pass --yes to cancel them without a question")
            print(f"{dry['count']} jobs match:{shown}{more}", file=sys.stderr)
            if not await asyncio.to_thread(_confirm, f"Cancel {dry['count']} jobs? [y/N] "):
                print("cancelled nothing", file=sys.stderr)
                return EXIT_ERROR
    reply = await client.call("POST", "/jobs/cancel", json_body=body)
    out.result(reply, f"cancelled {reply['count']} job(s), {reply['executions_cancelled']} execution(s)")
    return EXIT_OK


def _confirm(question: str) -> bool:
    """Asked on stderr: stdout holds only the result."""
    print(question, end="", file=sys.stderr, flush=True)
    return sys.stdin.readline().strip().lower() in ("y", "yes")


async def backends(args: argparse.Namespace, client: Client, out: Printer) -> int:
    reply = await client.call("GET", "/backends")
    lines = [
        f"{b['name']:<20} {b['kind']:<10} "
        f"{'cancels at the provider' if b['cancels_remotely'] else 'stops locally'}"
        + (f", at most {b['concurrency']} at once" if b.get("concurrency") else "")
        for b in reply["backends"]
    ]
    out.result(reply, "\n".join(lines) or "no backends")
    return EXIT_OK


async def rerun(args: argparse.Namespace, client: Client, out: Printer) -> int:
    body = {"executions": args.execution} if args.execution else None
    args.job_id = await job_id(client, args.job_id)
    job = await client.call("POST", f"/jobs/{args.job_id}/rerun", json_body=body)
    return await _new_job(client, out, job, args.wait, f"re-running job {args.job_id} as {job['id']}")


async def usage(args: argparse.Namespace, client: Client, out: Printer) -> int:
    query = {k: v for k, v in (("since", args.since), ("until", args.until)) if v}
    reply = await client.call("GET", "/usage" + ("?" + urlencode(query) if query else ""))
    lines = [
        f"{reply['address']}: {reply['jobs']} job(s), {reply['executions']} execution(s), "
        f"{reply['gpu_seconds']:.1f} GPU-s from {reply['since']} to {reply['until']}"
    ]
    lines += [
        f"  {name:<20} {b['executions']} execution(s), {b['cancelled']} cancelled, "
        f"{b['gpu_seconds']:.1f} GPU-s ({b['gpu_seconds_after_cancel']:.1f} after a cancel)"
        for name, b in sorted(reply["backends"].items())
    ]
    out.result(reply, "\n".join(lines))
    return EXIT_OK


Verb = Callable[[argparse.Namespace, Client, Printer], Coroutine[Any, Any, int]]
CLIENT_VERBS: dict[str, Verb] = {
    "login": login,
    "logout": logout,
    "submit": submit,
    "jobs": jobs,
    "status": status,
    "cancel": cancel,
    "backends": backends,
    "usage": usage,
    "rerun": rerun,
}
