"""One batch of notification ids, from claim to recorded outcomes (runs in a task thread)."""

from __future__ import annotations

import concurrent.futures
import os
import socket
import time
import uuid
from collections.abc import Sequence
from datetime import UTC

import structlog

from shared.metrics import metrics
from shared.models import TERMINAL_STATES, State
from worker.delivery import Sender
from worker.liveness import progress
from worker.runtime import Runtime
from worker.store import RowOutcome, claim, renew_leases, write_outcomes
from worker.throttle import sendmark_key

log = structlog.get_logger(__name__)
EPOCH_KEY = "tm:epoch"


def worker_name() -> str:
    """host:pid, as recorded in claimed_by and on attempt rows."""
    return f"{socket.gethostname()}:{os.getpid()}"


def redis_epoch(runtime: Runtime) -> str:
    """An id that changes when Redis loses its data; send marks are trusted only within one epoch."""
    r = runtime.redis_sync
    r.set(EPOCH_KEY, uuid.uuid4().hex[:12], nx=True)
    value = r.get(EPOCH_KEY)
    return value.decode() if isinstance(value, bytes) else str(value)


def deliver_batch(runtime: Runtime, ids: Sequence[str]) -> dict[str, int]:
    """Claim, send and record one batch; returns counts by resulting state."""
    progress.batch_started()
    try:
        return _deliver(runtime, ids)
    finally:
        progress.batch_finished()


def _deliver(runtime: Runtime, ids: Sequence[str]) -> dict[str, int]:
    s = runtime.settings
    claimed_by = f"{worker_name()}/{redis_epoch(runtime)}"
    rows = claim(runtime.engine, ids, claimed_by, s.send_lease_ms, int(time.time() * 1000))
    if not rows:
        return {}
    providers = runtime.resolver.resolve_many(r.tenant_id for r in rows)
    sender = Sender(runtime.graph, runtime.tokens, runtime.throttle, s, runtime.smtp)
    pending = runtime.submit(sender.send_all(rows, providers))
    renew_every_s = s.send_lease_ms / 3000
    while True:
        try:
            outcomes = pending.result(timeout=renew_every_s)
            break
        except concurrent.futures.TimeoutError:
            # Still sending: keep the claim alive so the sweeper never mistakes us for dead.
            renew_leases(runtime.engine, [r.id for r in rows], claimed_by, s.send_lease_ms)
    write_outcomes(runtime.engine, outcomes, claimed_by)
    _observe_latency(outcomes, time.time())
    runtime.submit(_clear_marks(runtime, outcomes))
    counts: dict[str, int] = {}
    for o in outcomes:
        counts[o.state.value] = counts.get(o.state.value, 0) + 1
    log.debug("batch.done", claimed=len(rows), asked=len(ids), **counts)
    return counts


def _observe_latency(outcomes: Sequence[RowOutcome], now: float) -> None:
    """Enqueue → final outcome, for rows that just reached one (SQLite returns naive UTC datetimes)."""
    for o in outcomes:
        if o.state.value in TERMINAL_STATES:
            created = o.row.created_at
            created = created if created.tzinfo is not None else created.replace(tzinfo=UTC)
            metrics.notification_latency.observe(max(0.0, now - created.timestamp()))


async def _clear_marks(runtime: Runtime, outcomes: Sequence[RowOutcome]) -> None:
    # Once an outcome is recorded the row's fate is in the database; the mark is no longer needed.
    keys = [sendmark_key(o.row.id) for o in outcomes if o.state is not State.SENDING]
    if keys:
        try:
            await runtime.redis.delete(*keys)
        except Exception:  # best effort: marks expire on their own
            log.debug("batch.clear_marks_failed", exc_info=True)
