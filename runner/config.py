"""Settings: every environment variable, parsed once into a frozen object."""

from __future__ import annotations

import dataclasses
import os
import sys
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

from runner.backends.config import BackendSpec, default_backends, load_backends
from runner.errors import ConfigError

T = TypeVar("T")


def _split(value: str) -> tuple[str, ...]:
    return tuple(part.strip() for part in value.split(",") if part.strip())


def _int(name: str, raw: str, minimum: int, maximum: int | None = None) -> int:
    try:
        value = int(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a whole number") from None
    if value < minimum or (maximum is not None and value > maximum):
        bound = f"between {minimum} and {maximum}" if maximum is not None else f">= {minimum}"
        raise ConfigError(f"{name}={raw!r}: must be {bound}")
    return value


def _seconds(name: str, raw: str, *, allow_zero: bool = False) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number of seconds") from None
    if value != value or value in (float("inf"), float("-inf")) or value < 0:
        raise ConfigError(f"{name}={raw!r}: expected a finite, non-negative number of seconds")
    if value == 0 and not allow_zero:
        raise ConfigError(f"{name}={raw!r}: must be greater than 0")
    return value


def _addresses(name: str, raw: str) -> frozenset[str]:
    from eth_utils.address import is_address, to_checksum_address

    out = set()
    for part in _split(raw):
        if not is_address(part):
            raise ConfigError(f"{name}: {part!r} is not an Ethereum address")
        checksummed = to_checksum_address(part)
        digits = part[2:] if part[:2].lower() == "0x" else part
        # Mixed case is an EIP-55 checksum; a wrong one is a typo, perhaps of another address.
        if digits not in (digits.lower(), digits.upper()) and digits != checksummed[2:]:
            raise ConfigError(
                f"{name}: {part!r} has a wrong EIP-55 checksum (a typo?); "
                "write it checksummed, or all in lower case"
            )
        out.add(checksummed)
    return frozenset(out)


def _origins(name: str, raw: str) -> tuple[str, ...]:
    """Origins as browsers send them in Origin: scheme://host[:port], lower case, nothing after.
    Anything else never matches one (a trailing slash, a path, '*'), or matches too much:
    'null' is the Origin of every sandboxed iframe and file:// page."""
    from urllib.parse import urlsplit

    out = []
    for part in _split(raw):
        if "://" not in part and part != "null" and "*" not in part:
            raise ConfigError(
                f"{name}: {part!r} has no scheme: an origin is scheme://host[:port], "
                f"such as http://{part} or https://{part}"
            )
        try:
            url = urlsplit(part)
            url.port  # noqa: B018 - raises ValueError for a port that is not a number
        except ValueError:
            url = None
        if (
            url is None
            or not url.scheme
            or not url.hostname
            or "*" in part
            or "@" in url.netloc
            or url.path
            or part.endswith(("?", "#"))
            or url.query
            or url.fragment
        ):
            raise ConfigError(
                f"{name}: {part!r} is not an origin: write scheme://host[:port], "
                "such as https://portal.example, with no path or trailing slash "
                "('*' and 'null' are refused)"
            )
        out.append(part.lower())
    return tuple(out)


@dataclass(frozen=True, slots=True)
class Settings:
    database_url: str | None = None
    data_dir: Path = Path(".runner")
    host: str = "127.0.0.1"
    port: int = 8080
    siwe_domains: tuple[str, ...] | None = None
    siwe_chain_ids: frozenset[int] | None = None
    session_ttl_s: float = 86400.0
    backends: Mapping[str, BackendSpec] = field(default_factory=default_backends)
    admin_wallets: frozenset[str] = frozenset()
    cors_origins: tuple[str, ...] = ()
    concurrency: int = 1000
    lease_s: float = 15.0
    shutdown_grace_s: float = 20.0
    max_active_jobs_per_wallet: int = 100
    max_job_attempts: int = 3
    db_pool_size: int = 20
    metrics_port: int | None = None
    log_format: str = "json"
    # A client has this long to send a request's headers, and again its body; an idle
    # keep-alive connection is closed after it too.
    read_timeout_s: float = 15.0
    retention_days: float | None = None  # finished jobs older than this are deleted
    # Caps, each with a clear failure (benchmarks/README.md has what they guard against).
    max_page_bytes: int = 4 << 20  # a listing page stops adding jobs past this much JSON
    max_streams_per_wallet: int = 16  # open event streams of one wallet on one instance (429 past it)
    max_streams: int = 2000  # open event streams on one instance, all wallets (429 past it)
    max_submits_per_minute: int = 120  # jobs one wallet may submit (or re-run) a minute
    # Chain id -> JSON-RPC URL that checks contract wallets' sign-ins (ERC-1271, ERC-6492).
    chain_rpc_urls: Mapping[int, str] = field(default_factory=dict)
    chain_rpc_timeout_s: float = 5.0  # one validation call, queueing for it included
    public_url: str | None = None  # where browsers reach the service (behind any proxy)
    webhook_allow_http: bool = False  # webhooks to http:// URLs too (tests, private networks)
    webhook_allow_private: bool = False  # webhooks to loopback/private addresses (tests, private deployments)
    # Not settable from the environment (the service promises these to receivers); tests shorten them.
    webhook_timeout_s: float = 10.0  # an attempt with no answer by then failed
    webhook_retry_base_s: float = 5.0  # the first retry's wait; doubled each time, jittered
    webhook_retry_for_s: float = 86400.0  # an event is retried this long, then given up
    # 'fly' and/or proxy addresses whose forwarding headers name the client (rate limits).
    trusted_proxies: tuple[str, ...] = ()

    @property
    def allowed_siwe_domains(self) -> frozenset[str]:
        """Domains (host[:port], lower case) a sign-in message may name."""
        domains = self.siwe_domains or (f"localhost:{self.port}", f"127.0.0.1:{self.port}")
        return frozenset(d.lower() for d in domains)

    @property
    def public_https(self) -> bool:
        """Browsers reach the service over https (the session cookie is then Secure)."""
        return self.public_url is not None and self.public_url.lower().startswith("https://")

    @property
    def lease_renew_s(self) -> float:
        return self.lease_s / 3

    def replace(self, **changes: object) -> Settings:
        return dataclasses.replace(self, **changes)  # type: ignore[arg-type]


def _days(name: str, raw: str) -> float:
    try:
        value = float(raw)
    except ValueError:
        raise ConfigError(f"{name}={raw!r}: expected a number of days") from None
    if not 0 < value < float("inf"):
        raise ConfigError(f"{name}={raw!r}: must be a positive number of days")
    return value


def _text(_name: str, raw: str) -> str:
    return raw


def _port(name: str, raw: str) -> int:
    return _int(name, raw, 1, 65535)


def _positive(name: str, raw: str) -> int:
    return _int(name, raw, 1)


def _chain_ids(name: str, raw: str) -> frozenset[int]:
    return frozenset(_int(name, part, 1) for part in _split(raw))


def _chain_rpc_urls(name: str, raw: str) -> dict[int, str]:
    """`CHAIN_ID=URL,...`. Errors never print a URL: it often carries the provider's key."""
    from urllib.parse import urlsplit

    urls: dict[int, str] = {}
    for n, entry in enumerate(_split(raw), 1):
        chain, sep, url = (part.strip() for part in entry.partition("="))
        if not sep or not chain.isdigit() or int(chain) < 1:
            raise ConfigError(f"{name}: entry {n} is not CHAIN_ID=URL (a chain id of 1 or more)")
        chain_id = int(chain)
        if chain_id in urls:
            raise ConfigError(f"{name}: chain id {chain_id} is given twice")
        try:
            parts = urlsplit(url)
            parts.port  # noqa: B018 - raises ValueError for a port that is not a number
            ok = parts.scheme.lower() in ("http", "https") and bool(parts.hostname)
        except ValueError:
            ok = False
        if not ok:
            raise ConfigError(f"{name}: chain id {chain_id}'s URL must be http:// or https:// with a host")
        urls[chain_id] = url
    return urls


def _public_url(name: str, raw: str) -> str:
    from urllib.parse import urlsplit

    try:
        url = urlsplit(raw)
        url.port  # noqa: B018 - raises ValueError for a port that is not a number
    except ValueError:
        url = None
    if (
        url is None
        or url.scheme.lower() not in ("http", "https")
        or not url.hostname
        or "@" in url.netloc
        or url.query
        or url.fragment
    ):
        raise ConfigError(
            f"{name}={raw!r}: expected the URL browsers use, such as https://runner.example.com"
        )
    return raw


def _flag(name: str, raw: str) -> bool:
    if raw.lower() in ("1", "true", "yes", "on"):
        return True
    if raw.lower() in ("0", "false", "no", "off"):
        return False
    raise ConfigError(f"{name}={raw!r}: expected 1 or 0")


def _trusted_proxies(name: str, raw: str) -> tuple[str, ...]:
    import ipaddress

    out = []
    for part in _split(raw):
        if part.lower() == "fly":
            out.append("fly")
            continue
        try:
            out.append(str(ipaddress.ip_address(part)))
        except ValueError:
            raise ConfigError(f"{name}: {part!r} is neither 'fly' nor a proxy's IP address") from None
    return tuple(out)


def _log_format(name: str, raw: str) -> str:
    if raw not in ("json", "console"):
        raise ConfigError(f"{name}={raw!r}: expected 'json' or 'console'")
    return raw


# Each variable, the setting it fills and how it is parsed. A variable that is unset (or
# blank) leaves the setting at its default, written once, on the Settings class above.
_VARIABLES: dict[str, tuple[str, Callable[[str, str], object]]] = {
    "DATABASE_URL": ("database_url", _text),
    "RUNNER_DATA_DIR": ("data_dir", lambda _n, raw: Path(raw)),
    "RUNNER_HOST": ("host", _text),
    "RUNNER_PORT": ("port", _port),
    "RUNNER_SIWE_DOMAIN": ("siwe_domains", lambda _n, raw: _split(raw)),
    "RUNNER_SIWE_CHAIN_IDS": ("siwe_chain_ids", _chain_ids),
    "RUNNER_SESSION_TTL_S": ("session_ttl_s", _seconds),
    "RUNNER_ADMIN_WALLETS": ("admin_wallets", _addresses),
    "RUNNER_CORS_ORIGINS": ("cors_origins", _origins),
    "RUNNER_CONCURRENCY": ("concurrency", _positive),
    "RUNNER_LEASE_S": ("lease_s", _seconds),
    "RUNNER_SHUTDOWN_GRACE_S": ("shutdown_grace_s", lambda n, raw: _seconds(n, raw, allow_zero=True)),
    "RUNNER_MAX_ACTIVE_JOBS_PER_WALLET": ("max_active_jobs_per_wallet", _positive),
    "RUNNER_MAX_JOB_ATTEMPTS": ("max_job_attempts", _positive),
    "RUNNER_DB_POOL_SIZE": ("db_pool_size", _positive),
    "RUNNER_METRICS_PORT": ("metrics_port", _port),
    "RUNNER_LOG_FORMAT": ("log_format", _log_format),
    "RUNNER_READ_TIMEOUT_S": ("read_timeout_s", _seconds),
    "RUNNER_RETENTION_DAYS": ("retention_days", _days),
    "RUNNER_MAX_PAGE_BYTES": ("max_page_bytes", lambda n, raw: _int(n, raw, 1024)),
    "RUNNER_MAX_STREAMS_PER_WALLET": ("max_streams_per_wallet", _positive),
    "RUNNER_MAX_STREAMS": ("max_streams", _positive),
    "RUNNER_MAX_SUBMITS_PER_MINUTE": ("max_submits_per_minute", _positive),
    "RUNNER_CHAIN_RPC_URLS": ("chain_rpc_urls", _chain_rpc_urls),
    "RUNNER_CHAIN_RPC_TIMEOUT_S": ("chain_rpc_timeout_s", _seconds),
    "RUNNER_PUBLIC_URL": ("public_url", _public_url),
    "RUNNER_WEBHOOK_ALLOW_HTTP": ("webhook_allow_http", _flag),
    "RUNNER_WEBHOOK_ALLOW_PRIVATE": ("webhook_allow_private", _flag),
    "RUNNER_TRUSTED_PROXY": ("trusted_proxies", _trusted_proxies),
}

# RUNNER_* names read elsewhere: the backends, the CLI client, the test suite, and those
# another part of the service reads on its own.
_OTHER_NAMES = frozenset(
    {
        "RUNNER_BACKENDS_TOML",
        "RUNNER_BACKENDS_FILE",
        "RUNNER_CHAIN_RPC_URLS",
        "RUNNER_API_URL",
        "RUNNER_WALLET_KEY",
        "RUNNER_CONFIG_DIR",
        "RUNNER_REQUIRE_BROWSER",
        "RUNNER_TEST_CHROMIUM",
        "RUNNER_UPDATE_SCREENSHOT",
    }
)
KNOWN_NAMES = frozenset(_VARIABLES) | _OTHER_NAMES


def settings_warnings(env: Mapping[str, str], settings: Settings) -> list[str]:
    """What start-up warns about, one line each: settings that parse but are likely mistakes
    (a misspelt name is otherwise silently ignored)."""
    import difflib

    warnings = []
    for name in sorted(env):
        if name.startswith("RUNNER_") and name not in KNOWN_NAMES:
            close = difflib.get_close_matches(name, sorted(KNOWN_NAMES), n=1)
            hint = f"; did you mean {close[0]}?" if close else ""
            warnings.append(f"{name} is not a setting of runner and is ignored{hint}")
    for domain in settings.siwe_domains or ():
        if "://" in domain:
            bare = domain.split("://", 1)[1].rstrip("/")
            warnings.append(
                f"RUNNER_SIWE_DOMAIN: {domain!r} has a scheme; a sign-in domain is "
                f"host[:port], such as {bare!r}: sign-ins naming it will be refused"
            )
    return warnings


def load_settings(env: Mapping[str, str] | None = None) -> Settings:
    """Read the environment; a bad value raises ConfigError naming the variable."""
    env = os.environ if env is None else env
    values: dict[str, object] = {}
    for name, (setting, parse) in _VARIABLES.items():
        raw = (env.get(name) or "").strip()
        if raw:
            values[setting] = parse(name, raw)
    values.setdefault("log_format", "console" if sys.stderr.isatty() else "json")
    values["backends"] = _backends(env)
    return Settings(**values)  # type: ignore[arg-type]


def _backends(env: Mapping[str, str]) -> Mapping[str, BackendSpec]:
    backends_toml = env.get("RUNNER_BACKENDS_TOML")
    backends_file = env.get("RUNNER_BACKENDS_FILE")
    if backends_toml:
        return load_backends(backends_toml, env, source="RUNNER_BACKENDS_TOML")
    if backends_file:
        try:
            text = Path(backends_file).read_text()
        except OSError as exc:
            raise ConfigError(f"RUNNER_BACKENDS_FILE={backends_file!r}: {exc.strerror}") from None
        return load_backends(text, env, source=backends_file)
    return default_backends()
