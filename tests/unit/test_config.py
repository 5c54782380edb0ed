from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from runner.config import load_settings
from runner.errors import ConfigError


def test_defaults() -> None:
    s = load_settings({})
    assert (s.host, s.port, s.concurrency, s.lease_s) == ("127.0.0.1", 8080, 1000, 15.0)
    assert s.database_url is None
    assert s.data_dir == Path(".runner")
    assert s.allowed_siwe_domains == {"localhost:8080", "127.0.0.1:8080"}
    assert list(s.backends) == ["demo"]
    assert s.siwe_chain_ids is None


def test_values_are_parsed() -> None:
    s = load_settings(
        {
            "RUNNER_PORT": "9000",
            "RUNNER_LEASE_S": "1.5",
            "RUNNER_SIWE_DOMAIN": "App.Example.com, x:1",
            "RUNNER_SIWE_CHAIN_IDS": "1,10",
            "RUNNER_CORS_ORIGINS": "https://a.example",
            "RUNNER_ADMIN_WALLETS": "0x5aaeb6053f3e94c9b9a09f33669435e7ef1beaed",
            "RUNNER_METRICS_PORT": "9100",
        }
    )
    assert s.port == 9000 and s.lease_s == 1.5 and s.metrics_port == 9100
    assert s.allowed_siwe_domains == {"app.example.com", "x:1"}
    assert s.siwe_chain_ids == {1, 10}
    assert s.cors_origins == ("https://a.example",)
    assert s.admin_wallets == {"0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"}  # EIP-55 vector


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUNNER_PORT", "abc"),
        ("RUNNER_PORT", "70000"),
        ("RUNNER_CONCURRENCY", "0"),
        ("RUNNER_LEASE_S", "-1"),
        ("RUNNER_LEASE_S", "nan"),
        ("RUNNER_SESSION_TTL_S", "0"),
        ("RUNNER_LOG_FORMAT", "xml"),
        ("RUNNER_ADMIN_WALLETS", "0x123"),
        ("RUNNER_SIWE_CHAIN_IDS", "1,x"),
        ("RUNNER_BACKENDS_FILE", "/nonexistent.toml"),
    ],
)
def test_bad_value_names_the_variable(name: str, value: str) -> None:
    with pytest.raises(ConfigError, match=name):
        load_settings({name: value})


def test_bad_value_stops_startup_with_exit_2() -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "migrate"],
        env={"RUNNER_PORT": "abc", "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "RUNNER_PORT" in lines[0], proc.stderr


def test_backends_file_expands_variables(tmp_path: Path) -> None:
    f = tmp_path / "backends.toml"
    f.write_text(
        '[backends.gpu]\nkind = "runpod"\nendpoint_id = "ep1"\napi_key = "${RP_KEY}"\n'
        '[backends.hook]\nkind = "http"\nurl = "http://127.0.0.1:9/run"\n'
        'headers = { Authorization = "Bearer ${TOKEN}" }\n'
    )
    s = load_settings({"RUNNER_BACKENDS_FILE": str(f), "RP_KEY": "k1", "TOKEN": "t2"})
    assert s.backends["gpu"].api_key == "k1"
    assert s.backends["gpu"].base_url == "https://api.runpod.ai/v2"
    assert s.backends["hook"].headers == {"Authorization": "Bearer t2"}
    assert s.backends["hook"].cancels_remotely is False
    assert s.backends["gpu"].cancels_remotely is True


def test_subprocess_output_limits_have_defaults_and_can_be_set() -> None:
    toml = (
        '[backends.a]\nkind = "subprocess"\ncommand = ["a"]\n'
        '[backends.b]\nkind = "subprocess"\ncommand = ["b"]\n'
        "max_output_bytes = 1048576\nstderr_tail_bytes = 4096\n"
    )
    a, b = load_settings({"RUNNER_BACKENDS_TOML": toml}).backends.values()
    assert (a.max_output_bytes, a.stderr_tail_bytes) == (16 * 1024 * 1024, 64 * 1024)
    assert (b.max_output_bytes, b.stderr_tail_bytes) == (1048576, 4096)


def test_backends_toml_overrides_file() -> None:
    s = load_settings(
        {
            "RUNNER_BACKENDS_FILE": "/nonexistent.toml",
            "RUNNER_BACKENDS_TOML": '[backends.sim]\nkind = "demo"\n',
        }
    )
    assert list(s.backends) == ["sim"]


@pytest.mark.parametrize(
    ("toml", "message"),
    [
        ('[backends.x]\nkind = "gpu"\n', r"backends\.x\.kind"),
        ('[backends.x]\nkind = "http"\n', r"backends\.x\.url: required"),
        (
            '[backends.x]\nkind = "runpod"\nendpoint_id = "e"\napi_key = "${NOPE}"\n',
            r"backends\.x\.api_key: environment variable \$\{NOPE\} is not set",
        ),
        ('[backends.x]\nkind = "runpod"\n', r"backends\.x\.endpoint_id"),
        ('[backends.x]\nkind = "replicate"\n', r"backends\.x: exactly one of version or model"),
        ('[backends.x]\nkind = "subprocess"\ncommand = "echo hi"\n', r"backends\.x\.command"),
        ('[backends.x]\nkind = "demo"\ncancle_url = "http://a"\n', r"unknown key\(s\) cancle_url"),
        ('[backends.x]\nkind = "http"\nurl = "ftp://a"\n', r"backends\.x\.url"),
        ('[backends.x]\nkind = "demo"\nmax_attempts = 0\n', r"backends\.x\.max_attempts"),
        (
            '[backends.x]\nkind = "subprocess"\ncommand = ["a"]\nmax_output_bytes = 0\n',
            r"backends\.x\.max_output_bytes: expected a whole number",
        ),
        (
            '[backends.x]\nkind = "subprocess"\ncommand = ["a"]\nstderr_tail_bytes = 1.5\n',
            r"backends\.x\.stderr_tail_bytes: expected a whole number",
        ),
        (
            '[backends.x]\nkind = "http"\nurl = "http://a"\nstderr_tail_bytes = 1\n',
            r"unknown key\(s\) stderr_tail_bytes for kind http",
        ),
        ("not toml [", "not valid TOML"),
    ],
)
def test_bad_backends_are_refused_naming_backend_and_key(toml: str, message: str) -> None:
    with pytest.raises(ConfigError, match=message):
        load_settings({"RUNNER_BACKENDS_TOML": toml})


def test_chain_rpc_urls_are_parsed() -> None:
    assert load_settings({}).chain_rpc_urls == {}
    s = load_settings(
        {"RUNNER_CHAIN_RPC_URLS": " 1=https://eth.example/v2/key?x=a=b , 8453=http://127.0.0.1:8545/ "}
    )
    assert s.chain_rpc_urls == {1: "https://eth.example/v2/key?x=a=b", 8453: "http://127.0.0.1:8545/"}
    assert load_settings({"RUNNER_CHAIN_RPC_TIMEOUT_S": "2.5"}).chain_rpc_timeout_s == 2.5


@pytest.mark.parametrize(
    "value",
    [
        "https://eth.example",
        "1=",
        "=https://eth.example",
        "x=https://eth.example",
        "0=https://eth.example",
        "1=ftp://eth.example",
        "1=https://",
        "1=eth.example",
        "1=https://a.example,1=https://b.example",
    ],
)
def test_a_bad_chain_rpc_url_names_the_variable_and_never_echoes_the_url(value: str) -> None:
    with pytest.raises(ConfigError, match="RUNNER_CHAIN_RPC_URLS") as info:
        load_settings({"RUNNER_CHAIN_RPC_URLS": value})
    # An RPC URL often carries its API key: a start-up error line must not print it.
    assert "eth.example" not in str(info.value)


def test_public_url_is_parsed_and_checked() -> None:
    assert load_settings({}).public_url is None
    s = load_settings({"RUNNER_PUBLIC_URL": "https://runner.example.com"})
    assert s.public_url == "https://runner.example.com" and s.public_https
    s = load_settings({"RUNNER_PUBLIC_URL": "http://127.0.0.1:8080/"})
    assert not s.public_https
    for bad in (
        "runner.example.com",
        "ftp://runner.example.com",
        "https://",
        "https://a.example/?x=1",
        "https://user@a.example",
    ):
        with pytest.raises(ConfigError, match="RUNNER_PUBLIC_URL"):
            load_settings({"RUNNER_PUBLIC_URL": bad})


@pytest.mark.parametrize(
    "origin",
    [
        "null",  # what a sandboxed iframe or a file:// page sends: listing it lets every one in
        "*",
        "https://*.example.com",  # never matched: an Origin header names one origin
        "https://portal.example/",  # a browser's Origin has no trailing slash: never matched
        "https://portal.example/app",
        "https://portal.example?x=1",
        "https://portal.example#top",
        "https://user@portal.example",
        "portal.example",
        "https://",
        "https://portal.example:x",
    ],
)
def test_a_cors_origin_that_is_not_an_origin_is_refused(origin: str) -> None:
    with pytest.raises(ConfigError, match="RUNNER_CORS_ORIGINS") as info:
        load_settings({"RUNNER_CORS_ORIGINS": f"https://ok.example,{origin}"})
    assert repr(origin) in str(info.value)


def test_cors_origins_are_kept_as_browsers_send_them() -> None:
    s = load_settings(
        {"RUNNER_CORS_ORIGINS": "https://Portal.Example:8443, http://127.0.0.1:3000,http://[::1]:5173"}
    )
    assert s.cors_origins == ("https://portal.example:8443", "http://127.0.0.1:3000", "http://[::1]:5173")


CHECKSUMMED = "0x5aAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # an EIP-55 vector


def test_an_admin_address_with_a_wrong_checksum_is_refused() -> None:
    """Mixed case is a checksum: one that is wrong is a typo, maybe of another address."""
    wrong = "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"  # one letter's case flipped
    assert wrong.lower() == CHECKSUMMED.lower() and wrong != CHECKSUMMED
    with pytest.raises(ConfigError, match="RUNNER_ADMIN_WALLETS") as info:
        load_settings({"RUNNER_ADMIN_WALLETS": f"{CHECKSUMMED},{wrong}"})
    assert wrong in str(info.value) and "checksum" in str(info.value)
    for fine in (CHECKSUMMED, CHECKSUMMED.lower(), "0x" + CHECKSUMMED[2:].upper()):
        assert load_settings({"RUNNER_ADMIN_WALLETS": fine}).admin_wallets == {CHECKSUMMED}


@pytest.mark.parametrize(
    ("name", "value"),
    [
        ("RUNNER_CORS_ORIGINS", "*"),
        ("RUNNER_CORS_ORIGINS", "null"),
        ("RUNNER_CORS_ORIGINS", "https://portal.example/"),
        ("RUNNER_ADMIN_WALLETS", "0x5AAeb6053F3E94C9b9A09f33669435E7Ef1BeAed"),
    ],
)
def test_refused_cors_and_admin_values_stop_startup_with_exit_2(
    name: str, value: str, tmp_path: Path
) -> None:
    # Were the value accepted, start-up would go on: to a database nobody listens on (a quick
    # exit 1), never to an embedded Postgres in the working directory.
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "serve"],
        cwd=tmp_path,
        env={name: value, "PATH": "/usr/bin:/bin", "DATABASE_URL": "postgresql://127.0.0.1:1/none"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and name in lines[0], proc.stderr


@pytest.mark.parametrize("role", ["api", "worker"])
def test_a_shared_role_without_database_url_refuses_to_start(role: str, tmp_path: Path) -> None:
    # An embedded database per machine would split the fleet: jobs the API takes would
    # never reach a worker. Refused before any database is started in tmp_path.
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "serve", "--role", role],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0] and "embedded" in lines[0], proc.stderr
    assert not (tmp_path / ".runner").exists()


def test_an_unknown_runner_variable_is_warned_about_naming_the_closest() -> None:
    from runner.config import settings_warnings

    env = {
        "RUNNER_CONCURENCY": "5",
        "RUNNER_PORT": "9000",
        "RUNNER_API_URL": "http://x:1",
        "RUNNER_BACKENDS_TOML": "",
        "RUNNER_TRUSTED_PROXY": "fly",
        "HOME": "/root",
    }
    warnings = settings_warnings(env, load_settings(env))
    assert len(warnings) == 1 and "RUNNER_CONCURENCY" in warnings[0]
    assert "RUNNER_CONCURRENCY" in warnings[0]


def test_a_siwe_domain_with_a_scheme_is_warned_about() -> None:
    from runner.config import settings_warnings

    env = {"RUNNER_SIWE_DOMAIN": "https://app.fly.dev,ok.example"}
    [warning] = settings_warnings(env, load_settings(env))
    assert "RUNNER_SIWE_DOMAIN" in warning and "'https://app.fly.dev'" in warning
    assert "app.fly.dev" in warning
    assert settings_warnings({}, load_settings({})) == []


@pytest.mark.parametrize("origin", ["portal.example", "localhost:3000", "127.0.0.1:5173"])
def test_a_cors_origin_without_a_scheme_is_refused_saying_so(origin: str) -> None:
    with pytest.raises(ConfigError, match="RUNNER_CORS_ORIGINS") as info:
        load_settings({"RUNNER_CORS_ORIGINS": origin})
    assert "no scheme" in str(info.value) and f"http://{origin}" in str(info.value)


def test_warnings_are_one_line_each_at_start_up(tmp_path: Path) -> None:
    proc = subprocess.run(
        [sys.executable, "-m", "runner", "serve"],
        cwd=tmp_path,
        env={
            "PATH": "/usr/bin:/bin",
            "DATABASE_URL": "postgresql://127.0.0.1:1/none",
            "RUNNER_CONCURENCY": "5",
            "RUNNER_LOG_FORMAT": "console",
        },
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 1
    [line] = [ln for ln in proc.stderr.splitlines() if "RUNNER_CONCURENCY" in ln]
    assert "RUNNER_CONCURRENCY" in line


def test_trusted_proxy_is_parsed() -> None:
    assert load_settings({}).trusted_proxies == ()
    assert load_settings({"RUNNER_TRUSTED_PROXY": "fly"}).trusted_proxies == ("fly",)
    assert load_settings({"RUNNER_TRUSTED_PROXY": "10.0.0.1, fdaa::3"}).trusted_proxies == (
        "10.0.0.1",
        "fdaa::3",
    )
    with pytest.raises(ConfigError, match="RUNNER_TRUSTED_PROXY"):
        load_settings({"RUNNER_TRUSTED_PROXY": "my-proxy"})


@pytest.mark.parametrize("verb", [["migrate"], ["serve"]])
def test_on_fly_no_verb_falls_back_to_an_embedded_database(verb: list[str], tmp_path: Path) -> None:
    # Fly sets FLY_APP_NAME on every machine, the release machine's `runner migrate` included:
    # there a throw-away embedded database would be migrated, or served, unseen.
    proc = subprocess.run(
        [sys.executable, "-m", "runner", *verb],
        cwd=tmp_path,
        env={"PATH": "/usr/bin:/bin", "FLY_APP_NAME": "runner-demo"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode != 0, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and "DATABASE_URL" in lines[0] and "Fly" in lines[0], proc.stderr
    assert not (tmp_path / ".runner").exists()
