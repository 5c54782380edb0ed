"""Prometheus metrics of one instance (a registry each, so several can share a process)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import asyncpg
import structlog
from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

log = structlog.get_logger("runner.metrics")

LOOP_LAG_INTERVAL_S = 0.1
LAG_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BACKEND_BUCKETS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60)
HTTP_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)
STOP_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10)


class Metrics:
    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.cancel_requests = Counter(
            "runner_cancel_requests_total", "Cancel requests by result.", ["result"], registry=self.registry
        )
        self.cancel_stop_seconds = Histogram(
            "runner_cancel_stop_seconds",
            "From a cancel reaching this instance to its task stopped.",
            buckets=STOP_BUCKETS,
            registry=self.registry,
        )
        self.jobs_running = Gauge(
            "runner_jobs_running", "Jobs whose task runs on this instance.", registry=self.registry
        )
        self.jobs_finished = Counter(
            "runner_jobs_finished_total",
            "Jobs finished on this instance, by status.",
            ["status"],
            registry=self.registry,
        )
        self.jobs_unclaimable = Gauge(
            "runner_jobs_unclaimable",
            "Queued jobs that need a backend no live instance has.",
            ["backend"],
            registry=self.registry,
        )
        self.gpu_seconds = Counter(
            "runner_gpu_seconds_total",
            "GPU-seconds of executions, by backend and outcome.",
            ["backend", "outcome"],
            registry=self.registry,
        )
        self.cancel_to_stop_seconds = Histogram(
            "runner_cancel_to_confirmed_stop_seconds",
            "From a cancel's commit to the provider reporting the work over.",
            buckets=(0.5, 1, 2, 5, 10, 30, 60, 120, 300, 600, 1800),
            registry=self.registry,
        )
        self.remote_unconfirmed = Gauge(
            "runner_remote_unconfirmed",
            "Executions still running at their provider after a cancel.",
            ["backend"],
            registry=self.registry,
        )
        self.remote_cancels = Counter(
            "runner_remote_cancels_total",
            "Cancels sent to backends, by outcome.",
            ["backend", "outcome"],
            registry=self.registry,
        )
        self.remote_unknown_statuses = Counter(
            "runner_remote_unknown_statuses_total",
            "Executions that saw a status their provider's adapter does not know (waited out).",
            ["backend"],
            registry=self.registry,
        )
        self.webhooks_pending = Gauge(
            "runner_webhooks_pending",
            "Webhook events not yet delivered (all instances').",
            registry=self.registry,
        )
        self.webhook_failures = Counter(
            "runner_webhook_failures_total",
            "Failed webhook attempts by this instance, by answer status (or timeout, network, refused).",
            ["status"],
            registry=self.registry,
        )
        self.jobs_queued = Gauge(
            "runner_jobs_queued",
            "Queued jobs needing each backend (from the worker's housekeeping).",
            ["backend"],
            registry=self.registry,
        )
        self.oldest_queued_age = Gauge(
            "runner_oldest_queued_job_age_seconds",
            "Age of the oldest queued job needing each backend (from the worker's housekeeping).",
            ["backend"],
            registry=self.registry,
        )
        self.backend_request_seconds = Histogram(
            "runner_backend_request_seconds",
            "One HTTP call to a backend, by operation.",
            ["backend", "operation"],
            buckets=BACKEND_BUCKETS,
            registry=self.registry,
        )
        self.backend_request_errors = Counter(
            "runner_backend_request_errors_total",
            "Failed HTTP calls to a backend: transient (retried) or permanent.",
            ["backend", "operation", "kind"],
            registry=self.registry,
        )
        self.http_requests = Counter(
            "runner_http_requests_total",
            "HTTP requests answered, by route and status.",
            ["method", "route", "status"],
            registry=self.registry,
        )
        self.http_request_seconds = Histogram(
            "runner_http_request_duration_seconds",
            "Time to answer an HTTP request (a stream: its life).",
            ["method", "route"],
            buckets=HTTP_BUCKETS,
            registry=self.registry,
        )

        self.notify_queue_usage = Gauge(
            "runner_notify_queue_usage",
            "pg_notification_queue_usage(): the fill of Postgres' NOTIFY queue (0-1; at 1 every "
            "notifying commit fails), read at each scrape.",
            registry=self.registry,
        )

        self.loop_lag_seconds = Histogram(
            "runner_event_loop_lag_seconds",
            f"How late a timer of {LOOP_LAG_INTERVAL_S} s fired on the event loop (work holding the loop).",
            buckets=LAG_BUCKETS,
            registry=self.registry,
        )
        self.loop_lag_max_seconds = Gauge(
            "runner_event_loop_lag_max_seconds",
            "The longest event-loop lag seen since start.",
            registry=self.registry,
        )

    async def watch_loop_lag(self) -> None:
        """Measure, for ever, how late the loop wakes a sleeper: the time some callback held it."""
        loop = asyncio.get_running_loop()
        worst = 0.0
        while True:
            began = loop.time()
            await asyncio.sleep(LOOP_LAG_INTERVAL_S)
            lag = max(loop.time() - began - LOOP_LAG_INTERVAL_S, 0.0)
            self.loop_lag_seconds.observe(lag)
            if lag > worst:
                worst = lag
                self.loop_lag_max_seconds.set(lag)

    def observe_backend_call(self, backend: str, operation: str, failure: str, seconds: float) -> None:
        """One HTTP call to a backend; `failure` is "", "transient" or "permanent"."""
        self.backend_request_seconds.labels(backend, operation).observe(seconds)
        if failure:
            self.backend_request_errors.labels(backend, operation, failure).inc()

    def set_queue(self, rows: dict[str, tuple[int, float]]) -> None:
        """Queued jobs and the oldest one's age per backend; a backend with none drops to 0."""
        self.set_counts(self.jobs_queued, {b: n for b, (n, _age) in rows.items()})
        for labels in list(self.oldest_queued_age._metrics):
            if labels[0] not in rows:
                self.oldest_queued_age.labels(labels[0]).set(0)
        for backend, (_n, age) in rows.items():
            self.oldest_queued_age.labels(backend).set(age)

    async def read_database(self, pool: asyncpg.Pool) -> None:
        """The gauges read from Postgres at a scrape; left as last read when it does not answer
        within a second (the scrape still answers)."""
        try:
            async with asyncio.timeout(1.0):
                usage = await pool.fetchval("SELECT pg_notification_queue_usage()")
        except Exception as exc:  # any failure: the scrape shows the last figure
            log.warning("metrics_database_read_failed", error=repr(exc))
            return
        self.notify_queue_usage.set(float(usage))

    def track_running(self, count: Callable[[], int]) -> None:
        self.jobs_running.set_function(lambda: float(count()))

    @staticmethod
    def set_counts(gauge: Gauge, counts: dict[str, int]) -> None:
        """The latest count per label; labels no longer counted drop back to 0."""
        for labels in list(gauge._metrics):
            if labels[0] not in counts:
                gauge.labels(labels[0]).set(0)
        for label, count in counts.items():
            gauge.labels(label).set(count)

    def render(self) -> bytes:
        return generate_latest(self.registry)
