"""The CLI against a running server: every exit code, --json, -q, -v, and `runner demo`."""

from __future__ import annotations

import asyncio
import json
import os
import signal
import stat
import sys
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from eth_account import Account

from runner.runtime import Runtime
from tests.client import free_port
from tests.conftest import Cluster


@dataclass
class Cli:
    api_url: str
    config_dir: Path
    env_extra: dict[str, str]

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "RUNNER_API_URL": self.api_url,
            "RUNNER_CONFIG_DIR": str(self.config_dir),
            **self.env_extra,
            **extra,
        }

    async def start(self, *args: str, **env: str) -> asyncio.subprocess.Process:
        return await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runner",
            *args,
            env=self.env(**env),
            stdin=asyncio.subprocess.DEVNULL,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )

    async def run(self, *args: str, **env: str) -> tuple[int, str, str]:
        proc = await self.start(*args, **env)
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode is not None
        return proc.returncode, out.decode(), err.decode()

    async def json(self, *args: str) -> tuple[int, Any]:
        code, out, _err = await self.run(*args, "--json")
        return code, json.loads(out)  # exactly one document, errors included


@pytest.fixture
async def cli_server(cluster: Cluster) -> Runtime:
    port = free_port()  # the CLI signs in for the API URL's host:port
    return await cluster.start(port=port, siwe_domains=(f"127.0.0.1:{port}",))


@pytest.fixture
def cli(cli_server: Runtime, tmp_path: Path) -> Cli:
    return Cli(f"http://127.0.0.1:{cli_server.port}", tmp_path / "config", {})


async def _signed_in(cli: Cli) -> Cli:
    code, _, err = await cli.run("login")
    assert code == 0, err
    return cli


async def test_not_signed_in_is_exit_4(cli: Cli) -> None:
    code, out, err = await cli.run("jobs")
    assert code == 4 and out == "" and "runner login" in err
    code, doc = await cli.json("jobs")
    assert code == 4 and doc["ok"] is False and doc["error"] == "unauthenticated"


async def test_login_with_a_development_key(cli: Cli) -> None:
    code, out, _ = await cli.run("login")
    assert code == 0 and "development key" in out
    key_file, sessions = cli.config_dir / "dev-wallet.key", cli.config_dir / "sessions.json"
    for path in (key_file, sessions):
        assert stat.S_IMODE(path.stat().st_mode) == 0o600
    address = Account.from_key(key_file.read_text().strip()).address
    assert address in out
    stored = json.loads(sessions.read_text())
    assert list(stored) == [cli.api_url] and stored[cli.api_url]["address"] == address
    # The same key next time: the same wallet.
    _, again = await cli.json("login")
    assert again["address"] == address and again["development_key"] is True


async def test_login_with_runner_wallet_key(cli: Cli) -> None:
    account = Account.create()
    code, out, _ = await cli.run("login", "--json", RUNNER_WALLET_KEY="0x" + bytes(account.key).hex())
    doc = json.loads(out)
    assert code == 0 and doc["address"] == account.address and doc["development_key"] is False
    assert not (cli.config_dir / "dev-wallet.key").exists()
    code, out, err = await cli.run("login", RUNNER_WALLET_KEY="not-a-key")
    assert code == 1 and "RUNNER_WALLET_KEY" in err


async def test_submit_wait_json_and_exit_codes(cli: Cli) -> None:
    await _signed_in(cli)
    code, job = await cli.json(
        "submit",
        "--backend",
        "demo",
        "--input",
        '{"seconds": 0}',
        "--backend",
        "demo",
        "--input",
        '{"seconds": 0.1}',
        "--wait",
    )
    assert code == 0 and job["status"] == "completed" and len(job["executions"]) == 2
    code, job = await cli.json(
        "submit", "--backend", "demo", "--input", '{"seconds": 0, "fail": true}', "--wait"
    )
    assert code == 1 and job["status"] == "failed"
    code, out, _ = await cli.run("submit", "--backend", "demo", "--input", '{"seconds": 0}', "--wait")
    assert code == 0 and "completed" in out and "[1] demo" in out  # plain lines when not a TTY
    code, _, err = await cli.run("submit", "--backend", "demo", "--input", "{}", "--backend", "demo")
    assert code == 2 and "pairs" in err
    code, _, err = await cli.run("submit", "--backend", "demo", "--input", "{nope")
    assert code == 2 and "not JSON" in err
    code, doc = await cli.json("submit", "--backend", "nope", "--input", "{}")
    assert code == 1 and doc["error"] == "unknown_backend"


async def test_jobs_status_and_quiet(cli: Cli) -> None:
    await _signed_in(cli)
    code, out, _ = await cli.run("-q", "submit", "--backend", "demo", "--input", '{"seconds": 60}')
    assert code == 0 and uuid.UUID(out.strip())  # -q: the id alone, for scripts
    code, job = await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 60}')
    code, listing = await cli.json("jobs")
    assert code == 0 and job["id"] in [j["id"] for j in listing["jobs"]] and len(listing["jobs"]) == 2
    code, out, _ = await cli.run("status", job["id"])
    assert code == 0 and job["id"] in out and "[1] demo" in out
    code, doc = await cli.json("status", job["id"])
    assert doc["id"] == job["id"]
    code, doc = await cli.json("status", str(uuid.uuid4()))
    assert code == 5 and doc["error"] == "not_found"
    # Global flags stand before or after the verb.
    code_before, out_before, _ = await cli.run("--json", "status", job["id"])
    assert code_before == 0 and json.loads(out_before)["id"] == job["id"]


async def test_cancel_verbs_and_exit_codes(cli: Cli, tmp_path: Path) -> None:
    await _signed_in(cli)
    _, job = await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 60}')
    code, out, _ = await cli.run("cancel", job["id"], "--reason", "changed my mind", "--wait")
    assert code == 0 and "cancelled job" in out and "stopped" in out
    code, out, _ = await cli.run("cancel", job["id"])
    assert code == 0 and "already cancelled" in out
    _, done = await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 0}', "--wait")
    code, doc = await cli.json("cancel", done["id"])
    assert code == 3 and doc["error"] == "not_cancellable" and doc["status"] == "completed"
    code, doc = await cli.json("cancel", str(uuid.uuid4()))
    assert code == 5
    # Another wallet's job: forbidden, exit 4.
    other = Cli(cli.api_url, tmp_path / "other", {})
    await _signed_in(other)
    _, theirs = await other.json("submit", "--backend", "demo", "--input", '{"seconds": 60}')
    code, doc = await cli.json("cancel", theirs["id"])
    assert code == 4 and doc["error"] == "forbidden"
    for _ in range(2):
        await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 60}')
    _, before = await cli.json("jobs")
    running = {j["id"] for j in before["jobs"] if j["status"] == "running"}
    code, _, err = await cli.run("-v", "--json", "cancel", "--all", "--queued-only")
    # No filter given: one request, no dry run first, and no confirmation to ask for.
    assert code == 0 and err.count("> POST") == 1, err
    code, doc = await cli.json("cancel", "--all", "--queued-only")
    assert code == 0 and not running & set(doc["cancelled"])  # running jobs were left alone
    code, doc = await cli.json("cancel", "--all")
    assert code == 0 and running <= set(doc["cancelled"])
    _, listing = await cli.json("jobs")
    assert {j["status"] for j in listing["jobs"]} <= {"cancelled", "completed"}
    code, _, _ = await cli.run("cancel")
    assert code == 2
    code, _, _ = await cli.run("cancel", job["id"], "--all")
    assert code == 2


async def test_cancel_all_count_is_exact(cli: Cli) -> None:
    await _signed_in(cli)
    for _ in range(3):
        await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 60}')
    code, out, _ = await cli.run("cancel", "--all")
    assert code == 0 and out.startswith("cancelled 3 job(s)")


async def test_verbose_shows_exchanges_never_the_token(cli: Cli) -> None:
    await _signed_in(cli)
    token = json.loads((cli.config_dir / "sessions.json").read_text())[cli.api_url]["token"]
    code, _, err = await cli.run("-v", "jobs")
    assert code == 0 and "> GET " in err and "< 200" in err
    assert token not in err
    code, _, err = await cli.run("login", "-v")
    assert code == 0 and "> POST" in err


async def test_expired_token_says_run_runner_login(cli: Cli) -> None:
    await _signed_in(cli)
    path = cli.config_dir / "sessions.json"
    data = json.loads(path.read_text())
    data[cli.api_url]["expires_at"] = "2020-01-01T00:00:00.000Z"
    path.write_text(json.dumps(data))
    code, out, err = await cli.run("jobs")
    assert code == 4 and "runner login" in err
    # A token the server no longer knows (signed out elsewhere) is exit 4 too.
    data[cli.api_url]["expires_at"] = "2999-01-01T00:00:00.000Z"
    data[cli.api_url]["token"] = "revoked"
    path.write_text(json.dumps(data))
    code, out, err = await cli.run("jobs")
    assert code == 4 and out == "" and "runner login" in err


async def test_unknown_verb_and_flag_are_usage_errors(cli: Cli) -> None:
    assert (await cli.run("explode"))[0] == 2
    assert (await cli.run("jobs", "--frobnicate"))[0] == 2
    code, out, _ = await cli.run("--json", "explode")
    assert code == 2 and json.loads(out)["error"] == "usage"


async def test_status_watch_follows_to_the_end(cli: Cli) -> None:
    await _signed_in(cli)
    _, job = await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 0.3}')
    code, out, _ = await cli.run("status", job["id"], "--watch")
    assert code == 0
    lines = out.strip().splitlines()
    assert any("completed" in line for line in lines)
    assert lines[-1].startswith("[1] demo") or "completed" in lines[-1]


async def test_interrupting_submit_wait_leaves_the_job_running(cli: Cli, cli_server: Runtime) -> None:
    await _signed_in(cli)
    proc = await cli.start("submit", "--backend", "demo", "--input", '{"seconds": 60}', "--wait")
    assert proc.stderr is not None
    first = await asyncio.wait_for(proc.stderr.readline(), 30)  # "submitted job <id>", on stderr
    job_id = first.decode().split()[-1]
    while not cli_server.manager.is_running(uuid.UUID(job_id)):  # noqa: ASYNC110 - another process
        await asyncio.sleep(0.02)
    proc.send_signal(signal.SIGINT)
    _, err = await asyncio.wait_for(proc.communicate(), 30)
    # stdin is not a terminal: nothing to ask, so the job is left running.
    assert proc.returncode == 130 and "job goes on" in err.decode()
    assert f"runner status {job_id} --watch" in err.decode()  # the command to run, not a template
    assert cli_server.manager.is_running(uuid.UUID(job_id))


async def test_demo_runs_in_a_clean_environment(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DATABASE_URL"))}
    proc = await asyncio.create_subprocess_exec(
        sys.executable,
        "-m",
        "runner",
        "demo",
        cwd=tmp_path,
        env=env,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    out, err = await asyncio.wait_for(proc.communicate(), 60)
    text = out.decode()
    assert proc.returncode == 0, err.decode()[-3000:]
    for step in (
        "cancel requested",
        "connection closed",
        "remote cancel received",
        "API answered",
        "task stopped",
        "rows checked",
        "every GPU call stopped",
    ):
        assert step in text, text
    assert text.count("connection closed") == 3
    assert (tmp_path / ".runner" / "pg" / "PG_VERSION").exists()  # the embedded default


async def test_demo_runs_beside_a_serve_on_the_same_data_directory(tmp_path: Path) -> None:
    """Both default to ./.runner: the demo keeps to a database of its own on that server, so
    the serve instance never takes its job, and stopping the demo leaves serve's Postgres up."""
    from tests.procs import ServeProcess

    serve = await ServeProcess(None, env_extra={"RUNNER_DATA_DIR": str(tmp_path / ".runner")}).start()
    try:
        env = {k: v for k, v in os.environ.items() if not k.startswith(("RUNNER_", "DATABASE_URL"))}
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runner",
            "demo",
            cwd=tmp_path,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, err = await asyncio.wait_for(proc.communicate(), 60)
        assert proc.returncode == 0, (out.decode(), err.decode()[-3000:])
        assert "every GPU call stopped" in out.decode()
        assert not serve.events("job_started")  # serve never took the demo's job
        import aiohttp

        async with aiohttp.ClientSession() as http, http.get(serve.base_url + "/readyz") as resp:
            assert resp.status == 200
    finally:
        await serve.stop()


async def test_verbose_never_shows_a_token_or_ticket(cli: Cli) -> None:
    code, _, err = await cli.run("-v", "login")
    assert code == 0 and "/auth/login" in err and '"token": "<not shown>"' in err
    token = json.loads((cli.config_dir / "sessions.json").read_text())[cli.api_url]["token"]
    assert token not in err
    code, _, err = await cli.run("-v", "jobs")
    assert code == 0 and token not in err and "Bearer" not in err


async def test_jobs_pages_filters_and_limits(cli: Cli) -> None:
    await _signed_in(cli)
    ids = [
        (await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 60}'))[1]["id"]
        for _ in range(3)
    ]
    _, first = await cli.json("jobs", "--limit", "2")
    assert len(first["jobs"]) == 2 and first["next_cursor"]
    _, every = await cli.json("jobs", "--limit", "1", "--all")
    assert [j["id"] for j in every["jobs"]] == ids[::-1] and every["next_cursor"] is None
    await cli.run("cancel", ids[0])
    _, cancelled = await cli.json("jobs", "--status", "cancelled")
    assert [j["id"] for j in cancelled["jobs"]] == [ids[0]]
    code, out, _ = await cli.run("jobs", "--help")
    assert code == 0 and "--all" in out and "every page" in out


async def test_status_shows_outputs_and_watch_exits_like_wait(cli: Cli) -> None:
    await _signed_in(cli)
    _, job = await cli.json(
        "submit",
        "--backend",
        "demo",
        "--input",
        '{"seconds": 0}',
        "--backend",
        "demo",
        "--input",
        '{"seconds": 0, "fail": true}',
    )
    code, _, _ = await cli.run("status", job["id"], "--watch")
    assert code == 1  # it failed: as `submit --wait` would exit
    code, out, _ = await cli.run("status", job["id"])
    assert code == 0 and 'output: {"slept_s": 0}' in out and "error:" in out


async def test_logout_and_backends(cli: Cli) -> None:
    await _signed_in(cli)
    code, out, _ = await cli.run("backends")
    assert code == 0 and "demo" in out and "runpod" in out and "rp-key" not in out
    code, out, _ = await cli.run("logout")
    assert code == 0 and "signed out" in out
    code, _, err = await cli.run("jobs")
    assert code == 4 and "runner login" in err


async def test_a_refused_domain_is_explained_not_answered_with_login(
    cli_server: Runtime, tmp_path: Path
) -> None:
    """The service accepts only another domain: the message says which, not `runner login`."""
    other = Cli(f"http://localhost:{cli_server.port}", tmp_path / "other", {})
    code, _, err = await other.run("login")
    assert code == 4 and "127.0.0.1" in err and "run `runner login`" not in err


async def test_a_busy_port_and_an_unreachable_database_are_one_line(dsn: str, tmp_path: Path) -> None:
    import socket

    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        for env, expected in [
            ({"DATABASE_URL": dsn, "RUNNER_PORT": str(port)}, f"cannot listen on 127.0.0.1:{port}"),
            (
                {"DATABASE_URL": "postgresql://user:s3cret@127.0.0.1:1/db"},
                "cannot use the database at 127.0.0.1:1/db",
            ),
            ({"DATABASE_URL": "not a url"}, "cannot use the database at DATABASE_URL"),
        ]:
            proc = await asyncio.create_subprocess_exec(
                sys.executable,
                "-m",
                "runner",
                "serve",
                cwd=tmp_path,
                env={
                    **{k: v for k, v in os.environ.items() if not k.startswith("RUNNER_")},
                    "RUNNER_LOG_FORMAT": "json",
                    **env,
                },
                stdout=asyncio.subprocess.PIPE,
                stderr=asyncio.subprocess.PIPE,
            )
            _, err = await asyncio.wait_for(proc.communicate(), 60)
            text = err.decode()
            last = [line for line in text.splitlines() if line.startswith("runner: ")]
            assert proc.returncode == 1 and len(last) == 1 and expected in last[0], text
            assert "Traceback" not in text and "s3cret" not in text


async def test_an_unreachable_api_is_said_plainly(tmp_path: Path) -> None:
    closed = Cli(f"http://127.0.0.1:{free_port()}", tmp_path / "config", {})
    code, _, err = await closed.run("login")
    assert code == 1 and "cannot reach the API" in err and "ssl" not in err.lower()


async def test_usage_verb(cli: Cli) -> None:
    await _signed_in(cli)
    await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 0}', "--wait")
    code, out, _ = await cli.run("usage")
    assert code == 0 and "1 job(s)" in out and "demo" in out
    code, doc = await cli.json("usage", "--since", "2000-01-01T00:00:00Z", "--until", "2000-01-02T00:00:00Z")
    assert code == 0 and doc["jobs"] == 0


async def test_rerun_verb(cli: Cli) -> None:
    await _signed_in(cli)
    _, job = await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 60}')
    code, _, _ = await cli.run("rerun", job["id"])
    assert code == 1  # a running job is not re-runnable (409 not_rerunnable)
    await cli.run("cancel", job["id"], "--wait")
    code, out, _ = await cli.run("-q", "rerun", job["id"])
    new_id = out.strip()
    assert code == 0 and uuid.UUID(new_id)
    code, new = await cli.json("status", new_id)
    assert code == 0 and new["rerun_of"] == job["id"]
    await cli.run("cancel", new_id)


async def test_submit_with_a_webhook(cluster: Cluster, tmp_path: Path) -> None:
    port = free_port()
    rt = await cluster.start(
        port=port, siwe_domains=(f"127.0.0.1:{port}",), webhook_allow_http=True, webhook_allow_private=True
    )
    cli = await _signed_in(Cli(f"http://127.0.0.1:{rt.port}", tmp_path / "config", {}))
    code, job = await cli.json(
        "submit",
        "--backend",
        "demo",
        "--input",
        '{"seconds": 0}',
        "--webhook",
        "http://127.0.0.1:9/hook",
        "--webhook-event",
        "completed",
    )
    assert (
        code == 0 and job["webhook"] == "http://127.0.0.1:9/hook" and job["webhook_events"] == ["completed"]
    )
    code, doc = await cli.json(
        "submit", "--backend", "demo", "--input", '{"seconds": 0}', "--webhook", "ftp://127.0.0.1/hook"
    )
    assert code != 0 and doc["error"] == "invalid_request" and "webhook" in doc["message"]


async def test_login_print_token_prints_the_token_alone(cli: Cli, cli_server: Runtime) -> None:
    import aiohttp

    code, out, err = await cli.run("login", "--print-token")
    token = out.strip()
    assert code == 0 and out == token + "\n" and " " not in token, (out, err)
    async with (
        aiohttp.ClientSession() as http,
        http.get(f"{cli.api_url}/auth/me", headers={"Authorization": f"Bearer {token}"}) as resp,
    ):
        assert resp.status == 200  # what a curl script does with it
    assert "development key" in err  # the note goes to stderr, out of $(...)


async def test_an_api_url_without_a_scheme_is_a_one_line_usage_error(tmp_path: Path) -> None:
    bare = Cli("127.0.0.1:8080", tmp_path / "config", {})
    for args in (("jobs",), ("--api-url", "127.0.0.1:8080", "login")):
        code, out, err = await bare.run(*args)
        assert code == 2 and out == "", err
        [line] = err.strip().splitlines()
        assert "127.0.0.1:8080" in line and "http://127.0.0.1:8080" in line


async def test_status_takes_an_8_character_prefix(cli: Cli) -> None:
    await _signed_in(cli)
    _, job = await cli.json("submit", "--backend", "demo", "--input", '{"seconds": 0}')
    code, doc = await cli.json("status", job["id"][:8])
    assert code == 0 and doc["id"] == job["id"]


async def test_submit_wait_keeps_progress_off_stdout(cli: Cli) -> None:
    await _signed_in(cli)
    code, out, err = await cli.run(
        "-q", "submit", "--backend", "demo", "--input", '{"seconds": 0.2}', "--wait"
    )
    assert code == 0 and uuid.UUID(out.strip()), (out, err)  # ID=$(runner -q submit ... --wait)
    code, out, err = await cli.run("submit", "--backend", "demo", "--input", '{"seconds": 0.2}', "--wait")
    assert code == 0 and "completed" in out
    assert "running" not in out, out  # the transcript of its progress went to stderr


async def test_bare_runner_prints_the_help_with_every_verb(tmp_path: Path) -> None:
    bare = Cli("http://127.0.0.1:1", tmp_path / "config", {})
    code, out, err = await bare.run()
    assert code in (0, 2)
    for verb in (
        "serve",
        "migrate",
        "demo",
        "login",
        "logout",
        "submit",
        "jobs",
        "status",
        "cancel",
        "backends",
        "rerun",
        "usage",
    ):
        assert verb in out + err, verb
    assert "usage:" in out + err and "runner: error" not in out + err


async def test_json_migrate_prints_one_document(dsn: str, tmp_path: Path) -> None:
    bare = Cli("http://127.0.0.1:1", tmp_path / "config", {})
    code, out, err = await bare.run("--json", "migrate", DATABASE_URL=dsn)
    assert code == 0, err
    doc = json.loads(out)
    assert doc["ok"] is True and isinstance(doc["applied"], list)


async def _answering(cli: Cli, answer: str, *args: str) -> tuple[int, str, str]:
    """Run the CLI with a terminal for stdin, which answers `answer`."""
    master, slave = os.openpty()
    try:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "runner",
            *args,
            env=cli.env(),
            stdin=slave,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        os.write(master, answer.encode() + b"\n")
        out, err = await asyncio.wait_for(proc.communicate(), 60)
    finally:
        os.close(slave)
        os.close(master)
    assert proc.returncode is not None
    return proc.returncode, out.decode(), err.decode()


async def test_jobs_and_cancel_take_the_filter_and_a_big_cancel_is_confirmed(cli: Cli) -> None:
    import aiohttp

    code, out, _ = await cli.run("login", "--print-token")
    headers = {"Authorization": f"Bearer {out.strip()}"}
    held = {"backend": "demo", "input": {"seconds": 60}}
    async with aiohttp.ClientSession() as http:

        async def submit(metadata: dict[str, str]) -> str:
            body = {"executions": [held], "metadata": metadata}
            async with http.post(f"{cli.api_url}/jobs", json=body, headers=headers) as resp:
                assert resp.status == 201
                return str((await resp.json())["id"])

        sweep = {await submit({"sweep": "a"}) for _ in range(12)}
        [other] = [await submit({"sweep": "b"})]

    code, doc = await cli.json("jobs", "--meta", "sweep=a", "--status", "queued,running", "--backend", "demo")
    assert code == 0 and {j["id"] for j in doc["jobs"]} == sweep
    code, doc = await cli.json("jobs", "--status", "queued", "--status", "running", "--meta", "sweep=b")
    assert code == 0 and [j["id"] for j in doc["jobs"]] == [other]
    code, doc = await cli.json("jobs", "--since", "2999-01-01")
    assert code == 0 and doc["jobs"] == []
    code, doc = await cli.json("jobs", "--before", "2999-01-01T00:00:00Z", "--meta", "sweep=b")
    assert code == 0 and [j["id"] for j in doc["jobs"]] == [other]
    for bad in (("--since", "yesterday"), ("--meta", "novalue"), ("--status", "done")):
        code, doc = await cli.json("jobs", *bad)
        assert code in (1, 2) and bad[1] in doc["message"], doc

    code, out, _ = await cli.run("cancel", "--meta", "sweep=a", "--dry-run")
    assert code == 0 and out.startswith("12 job(s) would be cancelled") and all(i in out for i in sweep)
    # More than 10, no terminal, no --yes: refused, nothing cancelled.
    code, out, err = await cli.run("cancel", "--meta", "sweep=a")
    assert code == 2 and "--yes" in err and out == ""
    code, doc = await cli.json("cancel", "--meta", "sweep=a")
    assert code == 2 and doc["error"] == "usage" and "--yes" in doc["message"]
    code, out, err = await _answering(cli, "n", "cancel", "--meta", "sweep=a")
    assert code == 1 and "Cancel 12 jobs? [y/N]" in err and out == ""
    code, doc = await cli.json("jobs", "--status", "cancelled")
    assert code == 0 and doc["jobs"] == []
    code, out, err = await _answering(cli, "y", "cancel", "--meta", "sweep=a", "--reason", "bad sweep")
    assert code == 0 and out.startswith("cancelled 12 job(s)"), (out, err)
    code, doc = await cli.json("jobs", "--status", "cancelled", "--limit", "200")
    assert {j["id"] for j in doc["jobs"]} == sweep and {j["cancel_reason"] for j in doc["jobs"]} == {
        "bad sweep"
    }
    # Ten or fewer: no question.
    code, doc = await cli.json("cancel", "--meta", "sweep=b")
    assert code == 0 and doc["cancelled"] == [other]


async def test_submit_with_a_concurrency_key_supersedes(cli: Cli) -> None:
    await _signed_in(cli)
    held = ("--backend", "demo", "--input", '{"seconds": 60}')
    code, first = await cli.json("submit", *held, "--concurrency-key", "nightly")
    assert code == 0 and first["concurrency_key"] == "nightly"
    code, second = await cli.json("submit", *held, "--concurrency-key", "nightly", "--supersede")
    assert code == 0 and second["concurrency_key"] == "nightly"
    code, old = await cli.json("status", first["id"])
    assert old["status"] == "cancelled" and old["cancel_reason"] == "superseded"
    code, doc = await cli.json("submit", *held, "--supersede")
    assert code == 2 and "--concurrency-key" in doc["message"]
    code, doc = await cli.json("cancel", "--all", "--yes")
    assert code == 0 and doc["cancelled"] == [second["id"]]
