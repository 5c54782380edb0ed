"""The backends file: TOML, `${VAR}` expanded from the environment, validated once."""

from __future__ import annotations

import re
import tomllib
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from runner.errors import ConfigError

KINDS = ("demo", "http", "runpod", "replicate", "fal", "subprocess")
DEFAULT_BASE_URLS = {
    "runpod": "https://api.runpod.ai/v2",
    "replicate": "https://api.replicate.com/v1",
    "fal": "https://queue.fal.run",
}
_COMMON = {
    "kind",
    "url",
    "base_url",
    "api_key",
    "headers",
    "timeout_s",
    "poll_interval_s",
    "max_attempts",
    "concurrency",
    "confirm_within_s",
    "cancel_rate_per_s",
    "deadline_s",
    "max_output_bytes",
}
_KIND_KEYS = {
    "demo": set(),
    "http": {"cancel_url"},
    "runpod": {"endpoint_id"},
    "replicate": {"version", "model"},
    "fal": {"model"},
    "subprocess": {"command", "grace_s", "stderr_tail_bytes"},
}
_VAR = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)\}")


@dataclass(frozen=True, slots=True)
class BackendSpec:
    name: str
    kind: str
    url: str | None = None
    base_url: str | None = None
    api_key: str | None = None
    headers: Mapping[str, str] = field(default_factory=dict)
    timeout_s: float | None = None  # per HTTP request; None: the kind's default
    poll_interval_s: float = 1.0
    max_attempts: int = 3
    cancel_url: str | None = None
    endpoint_id: str | None = None
    version: str | None = None
    model: str | None = None
    command: tuple[str, ...] = ()
    grace_s: float = 10.0
    # A reply (http kinds, counted once decompressed) or a process's stdout longer than this
    # fails the execution: the work is done, its answer unusable, and a retry would pay again.
    max_output_bytes: int = 16 * 1024 * 1024
    stderr_tail_bytes: int = 64 * 1024  # subprocess stderr: only its last bytes are kept
    concurrency: int | None = None  # at most this many executions at once (None: no limit)
    confirm_within_s: float = 60.0  # after an acknowledged cancel, re-send it if the work runs on
    cancel_rate_per_s: float | None = None  # remote cancels per second from one instance
    deadline_s: float | None = None  # the provider stops the work after this, whatever we do

    @property
    def confirms_stop(self) -> bool:
        """Queue APIs report the work's state: a cancel is confirmed by seeing it over."""
        return self.kind in ("runpod", "replicate", "fal")

    @property
    def cancel_rate(self) -> float | None:
        """RunPod allows 100 cancels per 10 s per endpoint: paced at 10 per second unless set."""
        return (
            self.cancel_rate_per_s
            if self.cancel_rate_per_s is not None
            else (10.0 if self.kind == "runpod" else None)
        )

    @property
    def cancels_remotely(self) -> bool:
        """True when a cancel must reach the backend through its API (and so can be owed)."""
        return self.kind in ("runpod", "replicate", "fal") or bool(self.cancel_url)

    @property
    def cancels_without_remote_id(self) -> bool:
        """An http backend's cancel_url needs only our ids, not one from the backend -- unless
        it names `{remote_id}` (Modal's call id, known from its first redirect on)."""
        return bool(self.cancel_url) and "{remote_id}" not in (self.cancel_url or "")

    def can_cancel(self, remote_id: str | None) -> bool:
        """Whether a cancel can reach work of this backend that has `remote_id` (or none yet):
        the rule for owing one. (The cancel statements apply the same rule in SQL, with the
        names of the backends that cancel without a remote id.)"""
        return self.cancels_remotely and (remote_id is not None or self.cancels_without_remote_id)


def default_backends() -> dict[str, BackendSpec]:
    return {"demo": BackendSpec(name="demo", kind="demo")}


def _expand(value: Any, env: Mapping[str, str], where: str) -> Any:
    if isinstance(value, str):

        def sub(match: re.Match[str]) -> str:
            var = match.group(1)
            if var not in env:
                raise ConfigError(f"{where}: environment variable ${{{var}}} is not set")
            return env[var]

        return _VAR.sub(sub, value)
    if isinstance(value, list):
        return [_expand(v, env, where) for v in value]
    if isinstance(value, dict):
        return {k: _expand(v, env, f"{where}.{k}") for k, v in value.items()}
    return value


def _number(where: str, value: Any, *, integer: bool = False) -> float:
    ok = isinstance(value, int) if integer else isinstance(value, int | float)
    if not ok or isinstance(value, bool) or value <= 0:
        kind = "a whole number" if integer else "a number"
        raise ConfigError(f"{where}: expected {kind} greater than 0")
    return float(value)


def _string(where: str, value: Any) -> str:
    if not isinstance(value, str) or not value:
        raise ConfigError(f"{where}: expected a non-empty string")
    return value


def _url(where: str, value: Any) -> str:
    url = _string(where, value)
    if not url.startswith(("http://", "https://")):
        raise ConfigError(f"{where}: expected an http:// or https:// URL")
    return url.rstrip("/")


_NUMBERS = ("timeout_s", "poll_interval_s", "grace_s", "confirm_within_s", "cancel_rate_per_s", "deadline_s")
_WHOLE_NUMBERS = ("max_attempts", "concurrency", "max_output_bytes", "stderr_tail_bytes")
Options = dict[str, Any]


def _spec(name: str, raw: Any, env: Mapping[str, str]) -> BackendSpec:
    where = f"backends.{name}"
    kind, table = _table(where, raw, env)
    opts: Options = {"name": name, "kind": kind}
    opts |= _common_options(where, table)
    opts |= _address_options(kind, where, table)
    if kind in _KIND_OPTIONS:
        opts |= _KIND_OPTIONS[kind](where, table)
    return BackendSpec(**opts)


def _table(where: str, raw: Any, env: Mapping[str, str]) -> tuple[str, dict[str, Any]]:
    """The backend's kind, and its table with `${VAR}`s expanded once its keys are known."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ConfigError(f"{where}.kind: {kind!r} is not one of {', '.join(KINDS)}")
    unknown = set(raw) - _COMMON - _KIND_KEYS[kind]
    if unknown:
        raise ConfigError(f"{where}: unknown key(s) {', '.join(sorted(unknown))} for kind {kind}")
    return kind, {k: _expand(v, env, f"{where}.{k}") for k, v in raw.items()}


def _common_options(where: str, raw: dict[str, Any]) -> Options:
    """The keys every kind may have: the API key, headers, and the numbers."""
    opts: Options = {}
    if "api_key" in raw:
        opts["api_key"] = _string(f"{where}.api_key", raw["api_key"])
    if "headers" in raw:
        headers = raw["headers"]
        if not isinstance(headers, dict) or not all(isinstance(v, str) for v in headers.values()):
            raise ConfigError(f"{where}.headers: expected a table of strings")
        opts["headers"] = dict(headers)
    for key in _NUMBERS:
        if key in raw:
            opts[key] = _number(f"{where}.{key}", raw[key])
    for key in _WHOLE_NUMBERS:
        if key in raw:
            opts[key] = int(_number(f"{where}.{key}", raw[key], integer=True))
    return opts


def _address_options(kind: str, where: str, raw: dict[str, Any]) -> Options:
    """Where the work is sent: http's url (and cancel_url), a queue API's base_url."""
    if kind == "http":
        if "url" not in raw:
            raise ConfigError(f"{where}.url: required for kind http")
        opts = {"url": _url(f"{where}.url", raw["url"])}
        if "cancel_url" in raw:
            opts["cancel_url"] = _url(f"{where}.cancel_url", raw["cancel_url"])
        return opts
    if kind in DEFAULT_BASE_URLS:
        base_url = raw.get("base_url", raw.get("url", DEFAULT_BASE_URLS[kind]))
        return {"base_url": _url(f"{where}.base_url", base_url)}
    return {}


def _runpod_options(where: str, raw: dict[str, Any]) -> Options:
    return {"endpoint_id": _string(f"{where}.endpoint_id", raw.get("endpoint_id"))}


def _replicate_options(where: str, raw: dict[str, Any]) -> Options:
    if ("version" in raw) == ("model" in raw):
        raise ConfigError(f"{where}: exactly one of version or model is required")
    key = "version" if "version" in raw else "model"
    value = _string(f"{where}.{key}", raw[key])
    if key == "model" and value.count("/") != 1:
        raise ConfigError(f"{where}.model: expected owner/name")
    return {key: value}


def _fal_options(where: str, raw: dict[str, Any]) -> Options:
    return {"model": _string(f"{where}.model", raw.get("model")).strip("/")}


def _subprocess_options(where: str, raw: dict[str, Any]) -> Options:
    command = raw.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) and c for c in command):
        raise ConfigError(f"{where}.command: expected a non-empty list of strings")
    return {"command": tuple(command)}


# The options only one kind has, checked by that kind's function.
_KIND_OPTIONS: dict[str, Callable[[str, dict[str, Any]], Options]] = {
    "runpod": _runpod_options,
    "replicate": _replicate_options,
    "fal": _fal_options,
    "subprocess": _subprocess_options,
}


def load_backends(text: str, env: Mapping[str, str], *, source: str) -> dict[str, BackendSpec]:
    """Parse and validate a backends file; every error names the backend and key."""
    try:
        doc = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"{source}: not valid TOML: {exc}") from None
    extra = set(doc) - {"backends"}
    if extra:
        raise ConfigError(f"{source}: unknown top-level key(s) {', '.join(sorted(extra))}")
    tables = doc.get("backends")
    if not isinstance(tables, dict) or not tables:
        raise ConfigError(f"{source}: no [backends.NAME] tables")
    out = {}
    for name, raw in tables.items():
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", name):
            raise ConfigError(f"{source}: backend name {name!r} must be 1-64 of A-Za-z0-9_.-")
        out[name] = _spec(name, raw, env)
    return out
