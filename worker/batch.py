"""One batch of notification ids, from claim to recorded outcomes (runs in a task thread)."""

from __future__ import annotations

import os
import socket
import threading
import time
import uuid
from collections.abc import Sequence

import structlog

from shared.clock import as_utc
from shared.holds import HoldScope, hold_scope, place_hold
from shared.metrics import metrics
from shared.models import TERMINAL_STATES, State
from shared.senders import DEFAULT_SENDER
from worker.delivery import Sender
from worker.liveness import progress
from worker.quota_gate import QuotaGate
from worker.runtime import Runtime
from worker.sendmarks import current_epoch
from worker.store import RowOutcome, claim, renew_leases, write_outcomes

log = structlog.get_logger(__name__)


def worker_name() -> str:
    """host:pid, the start of claimed_by and of the worker recorded on attempt rows."""
    return f"{socket.gethostname()}:{os.getpid()}"


def deliver_batch(runtime: Runtime, ids: Sequence[str]) -> dict[str, int]:
    """Claim, send and record one batch; returns counts by resulting state."""
    progress.batch_started()
    try:
        return _deliver(runtime, ids)
    finally:
        progress.batch_finished()


def _deliver(runtime: Runtime, ids: Sequence[str]) -> dict[str, int]:
    s = runtime.settings
    # Send marks are trusted only within the Redis epoch the rows were claimed in; the batch id makes
    # the claim this batch's alone, so the sweeper can fence a row off from it (worker.sendmarks).
    claimed_by = f"{worker_name()}:{uuid.uuid4().hex[:8]}/{current_epoch(runtime.redis_sync)}"
    rows = claim(runtime.engine, ids, claimed_by, s.send_lease_ms, int(time.time() * 1000))
    if not rows:
        return {}
    # From the claim to the written outcomes the claim is kept alive, so the sweeper never mistakes a
    # batch that is only slow (provider lookups, quota counters rebuilt from the database, sends, a
    # busy database) for a dead worker's.
    with _LeaseKeeper(runtime, [r.id for r in rows], claimed_by):
        providers = runtime.resolver.resolve_many(r.tenant_id for r in rows)
        gate = QuotaGate(runtime.quotas, runtime.engine, s, claim=claimed_by)
        gated = gate.admit(rows, providers)  # Exchange's limits: rows over their sender's budget wait
        sender = Sender(runtime.graph, runtime.tokens, runtime.throttle, runtime.marks, s, runtime.smtp,
                        claim=claimed_by, breakers=runtime.breakers, engine=runtime.engine)
        outcomes = runtime.submit(sender.send_all(gated.to_send, providers)).result()
        gate.give_back_unsent(gated, outcomes)
        outcomes = [*outcomes, *gated.waiting]
        write_outcomes(runtime.engine, outcomes, claimed_by)
    _place_holds(runtime, outcomes)
    # Once an outcome is recorded the row's fate is in the database; its send mark is no longer needed.
    runtime.submit(runtime.marks.clear([o.row.id for o in outcomes if o.state is not State.SENDING]))
    _observe_latency(outcomes, time.time())
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.state.value] = counts.get(o.state.value, 0) + 1
    log.debug("batch.done", claimed=len(rows), asked=len(ids), **counts)
    return counts


class _LeaseKeeper:
    """Renews a batch's send lease every third of its length, on a thread of its own, while the
    `with` block runs (the lease is three renewals long, so one missed renewal is harmless)."""

    def __init__(self, runtime: Runtime, ids: list[str], claimed_by: str) -> None:
        self._runtime, self._ids, self._claimed_by = runtime, ids, claimed_by
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"lease-{claimed_by}", daemon=True)

    def __enter__(self) -> None:
        self._thread.start()

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def _run(self) -> None:
        lease_ms = self._runtime.settings.send_lease_ms
        while not self._done.wait(lease_ms / 3000):
            try:
                renew_leases(self._runtime.engine, self._ids, self._claimed_by, lease_ms)
            except Exception:  # a renewal that fails is retried next time; the lease covers two misses
                log.warning("leases.renew_error", rows=len(self._ids), worker=self._claimed_by, exc_info=True)


def _place_holds(runtime: Runtime, outcomes: Sequence[RowOutcome]) -> None:
    """A row the policy held holds the rest of its scope: its sender, or its whole tenant (shared.holds)."""
    held: dict[HoldScope, RowOutcome] = {}
    for o in outcomes:
        if o.state is State.HELD and o.attempts:
            held.setdefault(hold_scope(o.row.tenant_id, o.attempts[-1].error_code, o.sender), o)
    for scope, o in held.items():
        last = o.attempts[-1]
        place_hold(runtime.engine, runtime.settings, scope, code=last.error_code or "", message=last.error_message,
                   until_ms=o.next_attempt_ms, version=o.provider_version,
                   sender_name=str(o.row.payload.get("sender", DEFAULT_SENDER)))


def _observe_latency(outcomes: Sequence[RowOutcome], now: float) -> None:
    """Enqueue → final outcome, for rows that just reached one."""
    for o in outcomes:
        if o.state.value in TERMINAL_STATES:
            metrics.notification_latency.observe(max(0.0, now - as_utc(o.row.created_at).timestamp()))
