"""The dispatcher: publishes due notifications fairly and recovers what workers lost.

The database decides what is due; the broker only carries batches of ids. Each tick:
1. counts rows in flight per tenant (dispatched but unclaimed, or being sent);
2. reads a page of due rows in `fair_rank` order and takes, per tenant, only up to
   `tenant_window` in flight, so one tenant's backlog never fills the workers; with
   `tenant_affinity` (default) a tenant gets its next rows only once its previous ones are
   done, so each tenant's rows are in one batch, on one process, at a time; a tenant whose
   mailbox answered 429 gets nothing until the Retry-After recorded on that row has passed
   (the Redis block says the same, but Redis can lose it: the database cannot);
3. stamps them with a dispatch lease and publishes them in batches of `batch_size`.
A row whose dispatch lease runs out unclaimed (the broker lost it: Redis flushed or restarted)
becomes due again by itself. Every second it also sweeps `sending` rows whose lease expired
(their worker died): never-started sends go back to the queue, sends Graph accepted (the send
mark says "sent") are recorded as sent, possibly-sent ones follow the ambiguous policy and are flagged.

One dispatcher is active at a time across the fleet (a Redis leader lease); every worker runs
one on standby, so losing the leader only pauses dispatch for the lease's length.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Engine, and_, func, insert, or_, select, update

from shared.metrics import metrics
from shared.models import ACTIVE_STATES, DeliveryAttempt, Notification, State
from shared.settings import Settings
from worker.batch import EPOCH_KEY
from worker.liveness import Heartbeat
from worker.supervision import report_failure
from worker.throttle import SENT_MARK, sendmark_key

log = structlog.get_logger(__name__)
_N = Notification.__table__  # type: ignore[attr-defined]
_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]
LEADER_KEY = "tm:dispatcher:leader"
_MAX_EXCLUDED = 2_000  # tenants left out of a page query by id; beyond that they are skipped in Python
_RENEW = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('PEXPIRE', KEYS[1], ARGV[2]) end
return redis.call('SET', KEYS[1], ARGV[1], 'NX', 'PX', ARGV[2]) and 1 or 0
"""

Publish = Callable[[list[str]], None]


class Dispatcher:
    """Publishes due rows and sweeps expired leases; `run()` loops until stopped."""

    def __init__(self, engine: Engine, redis: Any, publish: Publish, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis
        self._publish = publish
        self._s = settings
        self._id = uuid.uuid4().hex
        self._renew = redis.register_script(_RENEW)
        self._last_sweep = 0.0
        self.stop_event = threading.Event()

    def run(self) -> None:
        """Loop until `stop_event` is set; only the leader dispatches. A failing tick is logged, reported in
        the heartbeat and retried; anything else that escapes is its supervisor's (worker.supervision)."""
        lease_ms = max(3_000, self._s.dispatch_interval_ms * 20)
        heartbeat = Heartbeat(self._s.state_dir, "dispatcher")
        failures = 0
        while not self.stop_event.is_set():
            busy = False
            try:
                if self._renew(keys=[LEADER_KEY], args=[self._id, lease_ms]):
                    busy = self.tick() >= self._s.batch_size
            except Exception as exc:  # the loop must survive a database or Redis outage
                failures += 1
                report_failure(heartbeat, "dispatcher", exc, failures)
                self.stop_event.wait(1.0)
                continue
            failures = 0
            # Going round is this loop's progress; a tick that hangs or fails stops it.
            heartbeat.beat()
            if not busy:
                self.stop_event.wait(self._s.dispatch_interval_ms / 1000)
        heartbeat.remove()

    def tick(self) -> int:
        """One dispatch round (plus a sweep once a second); returns how many rows were published."""
        now_ms = int(time.time() * 1000)
        if time.monotonic() - self._last_sweep >= 1.0:
            self.sweep(now_ms)
            self._measure_queue(now_ms)
            self._last_sweep = time.monotonic()
        chosen = self._choose(now_ms)
        if not chosen:
            return 0
        with self._engine.begin() as conn:
            conn.execute(
                update(_N).where(_N.c.id.in_([nid for nid, _ in chosen]), _N.c.state.in_(ACTIVE_STATES))
                .values(lease_until_ms=now_ms + self._s.dispatch_lease_ms)
            )
        published = 0
        for batch in self._batches(chosen):
            try:
                self._publish(batch)
                published += len(batch)
            except Exception:
                log.warning("dispatcher.publish_failed", rows=len(chosen) - published, exc_info=True)
                self._unlease([nid for nid, _ in chosen][published:])
                break
        return published

    def _batches(self, chosen: list[tuple[str, str]]) -> list[list[str]]:
        """Pack rows into batches of at most batch_size, keeping each tenant's rows together so
        that one process sends them: its in-process gate then queues them for the mailbox slots
        instead of several processes polling Redis for the same slots."""
        groups: dict[str, list[str]] = {}
        for nid, tenant_id in chosen:
            groups.setdefault(tenant_id, []).append(nid)
        batches: list[list[str]] = [[]]
        size = self._s.batch_size
        for ids in groups.values():
            if len(batches[-1]) + len(ids) > size and batches[-1]:
                batches.append([])
            for i in range(0, len(ids), size):
                if i:
                    batches.append([])
                batches[-1].extend(ids[i:i + size])
        return [b for b in batches if b]

    def _measure_queue(self, now_ms: int) -> None:
        with self._engine.connect() as conn:
            depth, oldest = conn.execute(
                select(func.count(), func.min(_N.c.created_at)).where(_N.c.state.in_(ACTIVE_STATES))).one()
        metrics.queue_depth.set(depth or 0)
        metrics.oldest_queued_age.set(max(0.0, now_ms / 1000 - oldest.timestamp()) if oldest else 0.0)

    def _choose(self, now_ms: int) -> list[tuple[str, str]]:
        with self._engine.connect() as conn:
            inflight: Counter[str] = Counter(dict(conn.execute(
                select(_N.c.tenant_id, func.count())
                .where(_N.c.state.in_((*ACTIVE_STATES, State.SENDING.value)), _N.c.lease_until_ms > now_ms)
                .group_by(_N.c.tenant_id)
            ).all()))
            throttled = set(conn.scalars(
                select(_N.c.tenant_id).distinct()
                .where(_N.c.state == State.RETRY_WAIT.value, _N.c.last_status == 429, _N.c.next_attempt_ms > now_ms)
            ))
            busy = {t for t, n in inflight.items() if n > 0} if self._s.tenant_affinity else set()
            busy |= throttled
            full = busy | {t for t, n in inflight.items() if n >= self._s.tenant_window}
            due = [_N.c.state.in_(ACTIVE_STATES), _N.c.next_attempt_ms <= now_ms,
                   or_(_N.c.lease_until_ms.is_(None), _N.c.lease_until_ms <= now_ms)]
            if full and len(full) <= _MAX_EXCLUDED:
                # Leave rows of tenants that cannot take more in the database: most of a page
                # would otherwise be theirs, fetched only to be skipped.
                due.append(_N.c.tenant_id.notin_(sorted(full)))
            page = conn.execute(
                select(_N.c.id, _N.c.tenant_id).where(*due).order_by(_N.c.fair_rank).limit(self._s.dispatch_page)
            ).all()
        chosen: list[tuple[str, str]] = []
        for nid, tenant_id in page:
            if tenant_id not in busy and inflight[tenant_id] < self._s.tenant_window:
                inflight[tenant_id] += 1
                chosen.append((nid, tenant_id))
        return chosen

    def _unlease(self, ids: Sequence[str]) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(_N).where(_N.c.id.in_(list(ids)), _N.c.state.in_(ACTIVE_STATES))
                         .values(lease_until_ms=None))

    def sweep(self, now_ms: int) -> int:
        """Recover `sending` rows whose worker lease expired; returns how many."""
        with self._engine.connect() as conn:
            lost = conn.execute(
                select(_N.c.id, _N.c.tenant_id, _N.c.claimed_by, _N.c.ambiguous_count, _N.c.attempts)
                .where(_N.c.state == State.SENDING.value, _N.c.lease_until_ms <= now_ms).limit(1000)
            ).all()
        if not lost:
            return 0
        never, maybe, sent = self._classify(lost)
        with self._engine.begin() as conn:
            guard = and_(_N.c.state == State.SENDING.value, _N.c.lease_until_ms <= now_ms)
            if never:
                conn.execute(update(_N).where(_N.c.id.in_([r.id for r in never]), guard).values(
                    state=State.QUEUED.value, lease_until_ms=None, claimed_by=None, next_attempt_ms=now_ms))
            for r in maybe:
                self._record_maybe_sent(conn, r, guard, now_ms)
            for r in sent:
                self._record_sent(conn, r, guard)
        log.warning("dispatcher.recovered", requeued=len(never), ambiguous=len(maybe), sent=len(sent))
        return len(lost)

    def _record_maybe_sent(self, conn: Any, r: Any, guard: Any, now_ms: int) -> None:
        retry = self._s.ambiguous_policy == "retry_once" and r.ambiguous_count == 0
        conn.execute(update(_N).where(_N.c.id == r.id, guard).values(
            state=State.RETRY_WAIT.value if retry else State.AMBIGUOUS.value, lease_until_ms=None,
            claimed_by=None, next_attempt_ms=now_ms, possible_duplicate=True,
            ambiguous_count=r.ambiguous_count + 1, attempts=r.attempts + 1,
            last_error_code="WorkerLost",
            last_error_message="the worker sending this died; the message may have been sent"))
        conn.execute(insert(_A).values(
            notification_id=r.id, tenant_id=r.tenant_id, attempt_no=r.attempts + 1,
            started_at=datetime.now(UTC), outcome="ambiguous", error_code="WorkerLost",
            error_message="worker lease expired after the send started", worker=r.claimed_by))

    @staticmethod
    def _record_sent(conn: Any, r: Any, guard: Any) -> None:
        now = datetime.now(UTC)
        conn.execute(update(_N).where(_N.c.id == r.id, guard).values(
            state=State.SENT.value, lease_until_ms=None, claimed_by=None, attempts=r.attempts + 1,
            last_status=202, last_error_code=None, last_error_message=None, sent_at=now, updated_at=now))
        conn.execute(insert(_A).values(
            notification_id=r.id, tenant_id=r.tenant_id, attempt_no=r.attempts + 1, started_at=now,
            outcome="sent", http_status=202, worker=r.claimed_by,
            error_message="recorded by the sweeper: Graph accepted it, then its worker died"))

    def _classify(self, rows: Sequence[Any]) -> tuple[list[Any], list[Any], list[Any]]:
        """Split lost rows into never sent, maybe sent and sent, by their send marks."""
        epoch = self._redis.get(EPOCH_KEY)
        epoch = epoch.decode() if isinstance(epoch, bytes) else epoch
        marks = self._redis.mget([sendmark_key(r.id) for r in rows])
        never, maybe, sent = [], [], []
        for r, mark in zip(rows, marks, strict=True):
            claimed_epoch = (r.claimed_by or "").rpartition("/")[2]
            if mark == SENT_MARK.encode():
                sent.append(r)  # Graph answered 202 before the worker died
            elif mark is not None or claimed_epoch != epoch:
                maybe.append(r)  # the send started, or Redis lost its data since the claim: cannot know
            else:
                never.append(r)
        return never, maybe, sent
