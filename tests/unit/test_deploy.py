"""The deployment files cannot run here (no Docker engine, no Fly): check what they say."""

from __future__ import annotations

import tomllib
from pathlib import Path

from runner.config import load_settings

ROOT = Path(__file__).resolve().parents[2]


def _duration_s(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60}
    for unit in sorted(units, key=len, reverse=True):
        if value.endswith(unit):
            return float(value[: -len(unit)]) * units[unit]
    return float(value)


def test_fly_toml_runs_migrations_and_drains_before_kill() -> None:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    assert fly["deploy"]["release_command"] == "runner migrate"
    assert fly["kill_signal"] == "SIGTERM"
    service = fly["http_service"]
    assert service["internal_port"] == 8080
    assert service["auto_stop_machines"] == "off"
    assert [c["path"] for c in service["checks"]] == ["/readyz"]
    # Two tiers: API machines behind the public service, worker machines checked on their port.
    assert fly["processes"]["worker"].startswith("runner serve --role worker")
    assert service["processes"] == ["api"]
    [worker_check] = [c for c in fly["checks"].values() if c["processes"] == ["worker"]]
    assert worker_check["path"] == "/readyz" and worker_check["port"] == service["internal_port"]
    grace = load_settings({"RUNNER_SHUTDOWN_GRACE_S": fly["env"]["RUNNER_SHUTDOWN_GRACE_S"]})
    assert _duration_s(fly["kill_timeout"]) > grace.shutdown_grace_s
    # The metrics port fly scrapes is the one the service serves /metrics on.
    assert int(fly["env"]["RUNNER_METRICS_PORT"]) == fly["metrics"]["port"]


def test_dockerfile_installs_the_package_and_runs_as_non_root() -> None:
    lines = [ln.strip() for ln in (ROOT / "Dockerfile").read_text().splitlines()]
    assert lines[0].startswith("FROM python:3.11-slim")
    assert any(ln.startswith("RUN pip install .") for ln in lines)
    users = [ln.split()[1] for ln in lines if ln.startswith("USER ")]
    assert users and users[-1] != "root"
    assert lines[-1] == 'CMD ["runner", "serve", "--host", "0.0.0.0"]'
    copied = {ln.split()[1] for ln in lines if ln.startswith("COPY ")}
    assert {"runner", "api", "migrations", "pyproject.toml"} <= copied


def test_the_fly_page_gives_every_command_in_order_and_is_linked() -> None:
    page = (ROOT / "docs" / "deploy-fly.md").read_text()
    assert "docs/deploy-fly.md" in (ROOT / "README.md").read_text()
    steps = [
        "fly apps create",
        "fly mpg create",
        "direct.",
        "fly secrets set",
        "RUNNER_SIWE_DOMAIN=",
        ".fly.dev",
        "fly deploy",
        "/readyz",
        "runner --api-url https://",
        "login",
    ]
    at = 0
    for step in steps:  # each after the one before
        found = page.find(step, at)
        assert found != -1, f"{step!r} missing after {page[max(0, at - 60) : at]!r}"
        at = found + len(step)
    # Fly secrets are the app's, every process group's alike: nothing may promise otherwise.
    for text in (page, (ROOT / "fly.toml").read_text()):
        assert "secret per process group" not in text
    assert "app-wide" in page


def test_fly_toml_sets_the_trusted_proxy_and_no_pooled_database() -> None:
    fly = tomllib.loads((ROOT / "fly.toml").read_text())
    assert fly["env"]["RUNNER_TRUSTED_PROXY"] == "fly"
    assert "DATABASE_URL" not in fly["env"]  # a secret, the direct URL
    settings = load_settings(fly["env"])
    assert settings.trusted_proxies == ("fly",)


def test_the_metric_catalogue_lists_every_metric_and_five_alert_rules() -> None:
    import re

    from runner.metrics import Metrics

    page = (ROOT / "docs" / "metrics.md").read_text()
    assert "docs/metrics.md" in (ROOT / "README.md").read_text()
    names = {family.name for family in Metrics().registry.collect()}
    assert {
        "runner_jobs_queued",
        "runner_oldest_queued_job_age_seconds",
        "runner_http_requests",
        "runner_backend_request_errors",
        "runner_backend_request_seconds",
    } <= names
    missing = [n for n in names if f"`{n}" not in page]
    assert not missing, f"metrics missing from docs/metrics.md: {missing}"
    rules = re.findall(r"^\s*- alert: (\w+)\n\s*expr: (.+)$", page, re.MULTILINE)
    assert len(rules) >= 5, rules
    exprs = " ".join(expr for _name, expr in rules)
    for needed in (
        "runner_jobs_unclaimable",
        "runner_remote_unconfirmed",
        "runner_oldest_queued_job_age_seconds",
        "probe_success",
        "webhook",
    ):
        assert needed in exprs, needed
