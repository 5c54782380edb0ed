"""Every NOTIFY between instances: the channels, their payload formats -- encoded here (as
SQL, or in Python) and decoded here, nowhere else -- and the Notifier that sends the hints.

A few fixed channels, LISTENed once per connection; the routing is in the payload, so no
LISTEN comes and goes per job or per wallet (Postgres up to 18 scans a listener's channels
for every notification):

- `runner_cancel_<holder>` (workers): one channel per worker instance, named after it
  (cancel_channel), so a cancel wakes the one instance whose task holds the job -- the job
  row's `worker_id` -- and no other: with 16 instances on 2 cores, waking all 15 others for
  each cancel cost the holder its turn on a core. The payload: `<job>` one job was
  cancelled; `<job>:<execution>` one execution was, the job goes on; a bulk cancel sends
  comma lists of `<job>`, up to BULK_IDS ids a notification (payloads are limited to 8000
  bytes) per holder, and none to the sending instance, which has signalled its own tasks
  already. Sent inside the cancel's own transaction. A queued job has no holder and no
  notification.
- `runner_submit` (workers): work was queued; a comma list of what each job needs, its
  backends joined by `+` (names are `[A-Za-z0-9_.-]`); an instance lacking them does not
  run a claim for it. Empty: anything.
- `runner_change` (API instances): jobs changed; a comma list of `j<job hex>` (its
  watchers re-read it) and `w<wallet hex>` (that wallet's event streams re-read). The
  Notifier sends only the keys some instance watches (the `watched` table, runner.watch).
- `runner_auth` (API instances): `<token hash hex>`, a session was revoked.
- `runner_probe`: `<nonce hex>`, the start-up self-test (runner.db.listener).
- `runner_webhook` (workers): `""`, a webhook delivery is due (runner.webhooks); sent by
  migration 0014's triggers inside the transaction that queues it, deduplicated there by
  Postgres -- only jobs that asked for webhooks pay for it.

A job's or an execution's cancel sends its change hint in its own transaction too
(change_notify_sql): that transaction notifies anyway, and each notifying commit wakes every
listening backend -- one commit, one wake-up, where a hint after it would be a second.
Other work and change hints are sent after their commit by the instance's Notifier, coalesced:
whatever is noted while one NOTIFY transaction is on its way goes out in the next. A
transaction that changes rows sends no NOTIFY of its own, so it is not serialised behind
Postgres' notify lock, which a notifying commit holds across its WAL flush. A notifying
transaction writes a commit record even when it writes nothing else (Postgres gives it a
transaction id to order the queue: PreCommit_Notify in its async.c), so the Notifier's
transactions commit asynchronously (HINT_SQL): a hint holds the lock for microseconds, not
for a disk flush that every cancel's commit would wait behind. NOTIFY is a wake-up hint: a
lost one (an instance dying between a commit and its hint, or Postgres crashing before a
hint's commit reached the disk) is made good by what reads the rows anyway -- the lease
renewal for cancels, the claim poll, each event stream's ping.
"""

from __future__ import annotations

import asyncio
import hashlib
import uuid
from collections.abc import Iterable

import asyncpg
import structlog

log = structlog.get_logger("runner.db.notify")

CANCEL_PREFIX = "runner_cancel_"
SUBMIT = "runner_submit"
CHANGE = "runner_change"
AUTH = "runner_auth"
PROBE = "runner_probe"
WEBHOOK = "runner_webhook"

BULK_IDS = 200
# The Notifier's one statement. Work hints ($1 channels, $2 payloads) go out as they are;
# change hints ($3 keys, $4 each key's payload number) only for the keys someone watches
# (the `watched` table, runner.watch): each notifying commit wakes every listening backend,
# and a hint no instance waits for would cost them all a wake-up (one per cancel's stop
# record, in a fleet). Nothing to send: no NOTIFY, and a read-only transaction. Otherwise its
# transaction writes nothing but the notifications, and commits without waiting for the WAL
# flush (set_config local to the transaction).
HINT_SQL = """WITH hint(c, p) AS (
        SELECT c, p FROM unnest($1::text[], $2::text[]) AS n(c, p)
        UNION ALL
        SELECT 'runner_change', string_agg(k, ',') FROM unnest($3::text[], $4::int[]) AS h(k, n)
        WHERE EXISTS (SELECT 1 FROM watched w WHERE w.key = h.k AND w.until > now())
        GROUP BY n)
    SELECT set_config('synchronous_commit', 'off', true), pg_notify(c, p) FROM hint"""
# A key watched (job_key, wallet_key) is registered until now + WATCH_TTL_S, renewed every
# WATCH_RENEW_S while watched (keys sorted: concurrent renewals lock rows in one order). A
# key nobody renews expires: an instance that died leaves a few needless hints behind.
WATCH_TTL_S = 60.0
WATCH_RENEW_S = WATCH_TTL_S / 3
WATCH_SQL = """INSERT INTO watched (key, until)
    SELECT k, now() + make_interval(secs => $2) FROM unnest($1::text[]) k
    ON CONFLICT (key) DO UPDATE SET until = greatest(watched.until, EXCLUDED.until)"""
# Rows expired a while ago, those no renewal holds a lock on (never waits, never deadlocks).
WATCH_CLEANUP_SQL = """DELETE FROM watched WHERE key IN (
    SELECT key FROM watched WHERE until < now() - interval '1 minute' FOR UPDATE SKIP LOCKED)"""
MAX_PAYLOAD = 7900  # Postgres refuses 8000 bytes or more
# Between two NOTIFY transactions of one instance, at least this long: each one wakes every
# listening backend of the database (Postgres up to 18 signals them all, whatever the
# channel), so a busy instance sends one per interval, everything since in it. An idle one
# sends at once.
MIN_INTERVAL_S = 0.01


# -- runner_cancel ---------------------------------------------------------------------------


def cancel_channel(instance_id: str) -> str:
    """The channel an instance hears its cancels on. Instance ids hold a host name (up to 64
    bytes) and channel names are at most 63: a digest of the id, the same in SQL
    (_CHANNEL_SQL)."""
    digest = hashlib.md5(instance_id.encode(), usedforsecurity=False).hexdigest()[:16]
    return CANCEL_PREFIX + digest


def cancel_entry_sql(job: str, execution: str | None = None) -> str:
    """SQL text naming a cancelled job, or one execution of it (SQL uuid expressions)."""
    if execution is None:
        return f"{job}::text"
    return f"{job}::text || ':' || {execution}::text"


def cancel_notify_sql(rows: str, origin: str | None = None) -> str:
    """SQL sending the cancel notifications for `rows`, an SQL query of (holder, entry) rows
    (holder: the job's worker_id; entry: cancel_entry_sql): one NOTIFY per holder and per
    BULK_IDS entries, none for a NULL holder (a queued job) nor for `origin` (an SQL text
    expression: the sending instance, which signals its own tasks itself)."""
    skip = "" if origin is None else f" AND holder <> {origin}"
    return f"""SELECT pg_notify('{CANCEL_PREFIX}' || left(md5(holder), 16), string_agg(entry, ','))
        FROM (SELECT holder, entry, (row_number() OVER (PARTITION BY holder)) / {BULK_IDS} AS chunk
              FROM ({rows}) r WHERE holder IS NOT NULL{skip}) c
        GROUP BY holder, chunk"""


def decode_cancel(payload: str) -> list[tuple[uuid.UUID, uuid.UUID | None]]:
    """The (job, execution or None) pairs a notification names. Malformed entries are
    logged and skipped."""
    found = []
    for entry in payload.split(","):
        job, _, execution = entry.partition(":")
        try:
            found.append((uuid.UUID(job), uuid.UUID(execution) if execution else None))
        except ValueError:
            log.warning("bad_cancel_notification", payload=entry[:100])
    return found


# -- runner_submit ---------------------------------------------------------------------------


def work_entry(backends: Iterable[str]) -> str:
    return "+".join(sorted(set(backends)))


def wanted(payload: str, have: frozenset[str]) -> bool:
    """Whether some job a work hint names could be claimed with backends `have`."""
    if not payload:
        return True
    return any(not entry or set(entry.split("+")) <= have for entry in payload.split(","))


# -- runner_change ---------------------------------------------------------------------------


def job_key(job_id: uuid.UUID) -> str:
    return "j" + job_id.hex


def wallet_key(address: str) -> str:
    return "w" + address[2:].lower()


def change_notify_sql(job: str, owner: str) -> str:
    """SQL sending the change hint for one job of wallet `owner` (SQL expressions), as
    job_key and wallet_key write it: for a statement that notifies already (a cancel)."""
    return f"pg_notify('{CHANGE}', 'j' || replace({job}::text, '-', '') || ',w' || lower(substr({owner}, 3)))"


def decode_change(payload: str) -> list[str]:
    """The job and wallet keys (job_key, wallet_key) a change notification names."""
    return [entry for entry in payload.split(",") if entry]


def _chunks(entries: Iterable[str]) -> list[list[str]]:
    """The entries in groups whose comma list is at most MAX_PAYLOAD bytes (they are ASCII)."""
    out: list[list[str]] = []
    current: list[str] = []
    size = 0
    for entry in entries:
        if current and size + len(entry) + 1 > MAX_PAYLOAD:
            out.append(current)
            current, size = [], 0
        current.append(entry)
        size += len(entry) + 1
    if current:
        out.append(current)
    return out


def hint_arguments(
    work: Iterable[str], changes: Iterable[str]
) -> tuple[list[str], list[str], list[str], list[int]]:
    """HINT_SQL's arguments for work entries (work_entry) and change keys (job_key,
    wallet_key): whole payloads for the first, each key with its payload's number for the
    second (a payload of the watched keys among a group is no longer than the group's)."""
    payloads = [",".join(group) for group in _chunks(work)]
    keys: list[str] = []
    numbers: list[int] = []
    for n, group in enumerate(_chunks(changes)):
        keys.extend(group)
        numbers.extend([n] * len(group))
    return [SUBMIT] * len(payloads), payloads, keys, numbers


class Notifier:
    """One instance's work and change hints, sent after their commit, coalesced: at most one
    NOTIFY transaction in flight, carrying everything noted since the last (natural
    batching: an idle instance sends at once, a busy one sends one per round trip).

    `enabled=False` drops every hint it would send (the benchmarks' floor; a job's or an
    execution's cancel sends its own, in its statement)."""

    def __init__(self, pool: asyncpg.Pool, *, enabled: bool = True) -> None:
        self.pool = pool
        self.enabled = enabled
        self._changes: dict[str, None] = {}  # ordered, without repeats
        self._work: dict[str, None] = {}
        self._sending: asyncio.Task[None] | None = None
        self._last_sent = float("-inf")
        self.sent = 0  # hint statements run (some may have had nothing watched to send)

    def changed(self, job_id: uuid.UUID, owner: str | None) -> None:
        """A job (of wallet `owner`) changed: wake whoever watches it or its wallet."""
        self._changes[job_key(job_id)] = None
        if owner:
            self._changes[wallet_key(owner)] = None
        self._kick()

    def work(self, backends: Iterable[str]) -> None:
        """A job needing `backends` was queued: wake the workers that have them."""
        self._work[work_entry(backends)] = None
        self._kick()

    def _kick(self) -> None:
        if not self.enabled:
            self._changes.clear()
            self._work.clear()
            return
        if self._sending is None or self._sending.done():
            self._sending = asyncio.get_running_loop().create_task(self._send(), name="notifier")

    async def _send(self) -> None:
        loop = asyncio.get_running_loop()
        while self._changes or self._work:
            wait = self._last_sent + MIN_INTERVAL_S - loop.time()
            if wait > 0:
                await asyncio.sleep(wait)  # pacing, not synchronisation: more hints join this one
            arguments = hint_arguments(self._work, self._changes)
            self._work.clear()
            self._changes.clear()
            try:
                await self.pool.execute(HINT_SQL, *arguments)
                self.sent += 1
                self._last_sent = loop.time()
            except Exception as exc:  # any failure: dropped, never retried in a loop
                # A hint, not the truth: what it would have woken re-reads on its own.
                log.warning(
                    "notify_failed", error=repr(exc), work=len(arguments[1]), changes=len(arguments[2])
                )

    async def close(self) -> None:
        """Send what is noted (bounded in time): before the pool closes."""
        sending = self._sending
        if sending is not None and not sending.done():
            try:
                async with asyncio.timeout(2.0):
                    await asyncio.shield(sending)
            except (TimeoutError, asyncio.CancelledError):
                sending.cancel()
