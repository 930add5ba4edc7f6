"""The dispatcher: publishes due notifications fairly and recovers what workers lost.

The database decides what is due; the broker only carries batches of ids. Each tick:
1. counts rows in flight per tenant (dispatched but unclaimed, or being sent);
2. reads a page of due rows in `fair_rank` order and takes, per tenant, only up to
   `tenant_window` in flight, so one tenant's backlog never fills the workers; with
   `tenant_affinity` (default) a tenant gets its next rows only once its previous ones are
   done, so each tenant's rows are in one batch, on one process, at a time; a tenant whose
   mailbox answered 429 gets nothing for that mailbox (sender) until the Retry-After recorded on that
   row has passed (the Redis block says the same, but Redis can lose it: the database cannot);
   `worker.sender_waits.throttled_mailboxes`;
3. gives a hold's scope no rows: a tenant on hold, or one sender of a tenant when the hold is that
   sender's (its new rows join the hold, once a second: `shared.holds`);
   leaves in the database the rows of tenants behind an open circuit breaker (`worker.breakers`),
   but for one probe row per open scope per interval, and lets a scope that just closed take only
   as many rows as its ramp allows; once a second it marks the waiting rows `retry_wait` with the
   breaker's reason, so activity says why they wait;
4. stamps them with a dispatch lease and publishes them in batches of `batch_size`.
A row whose dispatch lease runs out unclaimed (the broker lost it: Redis flushed or restarted)
becomes due again by itself. Every second it also runs the sweeper (`worker.sweeper`) over
`sending` rows whose send lease expired (their worker died).

One dispatcher is active at a time across the fleet (a Redis leader lease); every worker runs
one on standby, so losing the leader only pauses dispatch for the lease's length.
"""

from __future__ import annotations

import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Sequence
from typing import Any

import structlog
from sqlalchemy import Engine, and_, func, or_, select, update

from shared.holds import HeldScopes, held_scopes, join_hold
from shared.metrics import metrics
from shared.models import ACTIVE_STATES, Notification, State
from shared.settings import Settings
from worker.breakers import BreakerBoard, Plan
from worker.liveness import Heartbeat
from worker.sender_waits import throttled_mailboxes
from worker.supervision import report_failure
from worker.sweeper import Sweeper

log = structlog.get_logger(__name__)
_N = Notification.__table__  # type: ignore[attr-defined]
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
        self.sweeper = Sweeper(engine, redis, settings)
        self.board = BreakerBoard(redis, settings)
        self._plan: Plan | None = None
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
                leading = bool(self._renew(keys=[LEADER_KEY], args=[self._id, lease_ms]))
                metrics.dispatcher_leader.set(int(leading))
                if leading:
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
        metrics.dispatcher_leader.set(0)
        heartbeat.remove()

    def tick(self) -> int:
        """One dispatch round (plus a sweep once a second); returns how many rows were published."""
        now_ms = int(time.time() * 1000)
        if time.monotonic() - self._last_sweep >= 1.0:
            self.sweeper.sweep(now_ms)
            self._mark_waiting(now_ms)
            self._join_holds()
            self._last_sweep = time.monotonic()
        chosen = self._choose(now_ms)
        if not chosen:
            return 0
        with self._engine.begin() as conn:
            conn.execute(
                update(_N).where(_N.c.id.in_([nid for nid, _ in chosen]), _N.c.state.in_(ACTIVE_STATES))
                .values(dispatch_lease_until_ms=now_ms + self._s.dispatch_lease_ms)
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

    def _choose(self, now_ms: int) -> list[tuple[str, str]]:
        with self._engine.connect() as conn:
            inflight: Counter[str] = Counter(dict(conn.execute(
                select(_N.c.tenant_id, func.count())
                .where(or_(and_(_N.c.state.in_(ACTIVE_STATES), _N.c.dispatch_lease_until_ms > now_ms),
                           and_(_N.c.state == State.SENDING.value, _N.c.send_lease_until_ms > now_ms)))
                .group_by(_N.c.tenant_id)
            ).all()))
            throttled = throttled_mailboxes(conn, now_ms)
            busy = {t for t, n in inflight.items() if n > 0} if self._s.tenant_affinity else set()
            held = held_scopes(conn)  # a hold's new rows join it instead (once a second)
            busy |= held.tenants
            full = busy | {t for t, n in inflight.items() if n >= self._s.tenant_window}
            self._plan = plan = self.board.plan(conn, inflight, now_ms)
            if plan is not None:
                full |= set(plan.blocked)
            is_due = [_N.c.state.in_(ACTIVE_STATES), _N.c.next_attempt_ms <= now_ms,
                      or_(_N.c.dispatch_lease_until_ms.is_(None), _N.c.dispatch_lease_until_ms <= now_ms)]
            due = list(is_due)
            if full and len(full) <= _MAX_EXCLUDED:
                # Leave rows of tenants that cannot take more in the database: most of a page
                # would otherwise be theirs, fetched only to be skipped.
                due.append(_N.c.tenant_id.notin_(sorted(full)))
            page = conn.execute(
                select(_N.c.id, _N.c.tenant_id, _N.c.sender).where(*due).order_by(_N.c.fair_rank)
                .limit(self._s.dispatch_page)
            ).all()
            chosen: list[tuple[str, str]] = []
            held_back: list[tuple[str, str]] = []
            for nid, tenant_id, sender in page:
                if throttled.holds(tenant_id, sender):
                    continue  # its sender mailbox is inside a Retry-After recorded in the database
                if held.holds(tenant_id, sender):
                    continue  # its sender is on hold (a tenant-wide hold left it out of the page already)
                if tenant_id in busy or inflight[tenant_id] >= self._s.tenant_window:
                    continue
                if plan is not None and plan.open_of(tenant_id):
                    held_back.append((nid, tenant_id))
                elif plan is None or plan.admit(tenant_id):
                    inflight[tenant_id] += 1
                    chosen.append((nid, tenant_id))
            if plan is not None:
                chosen += self._probes(conn, plan, is_due, held_back, busy, inflight, held)
        return chosen

    def _probes(self, conn: Any, plan: Plan, due: list[Any], held_back: list[tuple[str, str]], busy: set[str],
                inflight: Counter[str], held: HeldScopes) -> list[tuple[str, str]]:
        """One due row per open scope whose last probe's interval has passed, named its probe in Redis.
        Candidates: the page's rows held back, then the first due rows of the tenants left out of the page."""
        waiting = sorted({t for tenants in plan.open_scopes.values() for t in tenants})
        tried: set[str] = set()
        chosen: list[tuple[str, str]] = []
        candidates = held_back + [(nid, t) for nid, t, sender in (conn.execute(
            select(_N.c.id, _N.c.tenant_id, _N.c.sender).where(*due, _N.c.tenant_id.in_(waiting))
            .order_by(_N.c.fair_rank).limit(200)
        ).all() if waiting else []) if not held.holds(t, sender)]
        for nid, tenant_id in candidates:
            opened = plan.open_of(tenant_id)
            if tenant_id in busy or inflight[tenant_id] >= self._s.tenant_window or tried.intersection(opened):
                continue
            tried.update(opened)  # taken now, or a probe of it is in flight: either way not again this tick
            if self.board.take_probe(opened, nid):
                inflight[tenant_id] += 1
                chosen.append((nid, tenant_id))
            if tried >= set(plan.open_scopes):
                break
        return chosen

    def _join_holds(self) -> None:
        """New rows of a hold's scope (a tenant, or one sender of it) are held too, without an attempt
        (shared.holds.join_hold)."""
        with self._engine.connect() as conn:
            held = held_scopes(conn)
            tenants = sorted(held.tenants | {t for t, _ in held.senders})
            waiting = set(conn.execute(select(_N.c.tenant_id, func.lower(_N.c.sender)).distinct().where(
                _N.c.state.in_(ACTIVE_STATES), _N.c.tenant_id.in_(tenants))).all()) if tenants else set()
        for scope in held.scopes():
            if not any(t == scope.tenant_id and scope.sender in (None, sender) for t, sender in waiting):
                continue
            if moved := join_hold(self._engine, scope):
                log.info("hold.joined", tenant_id=scope.tenant_id, sender=scope.sender, rows=moved)

    def _mark_waiting(self, now_ms: int) -> None:
        """Rows held back by an open breaker show `retry_wait` and its reason (once a second)."""
        plan = self._plan
        if plan is None:
            return
        by_reason: dict[str, list[str]] = {}
        for tenant_id, why in plan.blocked.items():
            by_reason.setdefault(why.value, []).append(tenant_id)
        with self._engine.begin() as conn:
            for reason, tenants in by_reason.items():
                conn.execute(
                    update(_N).where(_N.c.tenant_id.in_(sorted(tenants)), _N.c.state.in_(ACTIVE_STATES),
                                     or_(_N.c.wait_reason.is_(None), _N.c.wait_reason != reason),
                                     or_(_N.c.dispatch_lease_until_ms.is_(None),
                                         _N.c.dispatch_lease_until_ms <= now_ms))
                    .values(state=State.RETRY_WAIT.value, wait_reason=reason))

    def _unlease(self, ids: Sequence[str]) -> None:
        with self._engine.begin() as conn:
            conn.execute(update(_N).where(_N.c.id.in_(list(ids)), _N.c.state.in_(ACTIVE_STATES))
                         .values(dispatch_lease_until_ms=None))
