"""The sweeper: finishes rows whose worker died while sending them.

A row stays `sending` only while its worker renews the send lease. Once the lease has run out, the
send marks (`worker.sendmarks`) say how far the send got, `worker.retry_policy.decide` says what
follows (`WorkerLost(evidence)`), and the outcomes are written with `worker.store.write_outcomes`
as a batch writes its own, onto rows still held by the dead worker whose lease is still expired.
Run by the dispatcher's leader once a second. It also fails held rows whose hold ran out
(`HoldExpired`), keeping the code that placed the hold.
"""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Engine, select, update

from shared.models import Notification, State
from shared.settings import Settings
from worker.retry_policy import HoldExpired, WorkerLost, decide
from worker.sendmarks import Evidence, classify
from worker.store import AttemptRecord, ClaimedRow, RowOutcome, write_outcomes

log = structlog.get_logger(__name__)
_N = Notification.__table__  # type: ignore[attr-defined]
_PAGE = 1000


class Sweeper:
    """Recovers `sending` rows whose send lease expired."""

    def __init__(self, engine: Engine, redis_sync: Any, settings: Settings) -> None:
        self._engine = engine
        self._redis = redis_sync
        self._s = settings

    def sweep(self, now_ms: int) -> int:
        """Recover rows whose worker lease expired by `now_ms`; returns how many were found."""
        self.expire_holds(now_ms)
        with self._engine.connect() as conn:
            lost = conn.execute(
                select(_N.c.id, _N.c.tenant_id, _N.c.claimed_by, _N.c.ambiguous_count, _N.c.attempts,
                       _N.c.possible_duplicate, _N.c.created_at)
                .where(_N.c.state == State.SENDING.value, _N.c.send_lease_until_ms <= now_ms).limit(_PAGE)
            ).all()
        if not lost:
            return 0
        evidence = classify(self._redis, [(r.id, r.claimed_by) for r in lost])
        by_worker: dict[str, list[RowOutcome]] = {}
        for r, what in zip(lost, evidence, strict=True):
            by_worker.setdefault(r.claimed_by, []).append(self._outcome(r, what, now_ms))
        for claimed_by, outcomes in by_worker.items():
            # No retries here: the dispatcher loop comes back in a second.
            write_outcomes(self._engine, outcomes, claimed_by, lease_expired_by_ms=now_ms, retry_for_s=0)
        counts = Counter(evidence)
        log.warning("sweeper.recovered", requeued=counts[Evidence.NEVER_STARTED],
                    ambiguous=counts[Evidence.MAYBE_SENT], sent=counts[Evidence.ACCEPTED])
        return len(lost)

    def expire_holds(self, now_ms: int) -> int:
        """Fail held rows whose hold ran out by `now_ms`, keeping their code; returns how many."""
        d = decide(HoldExpired(), attempts=0, ambiguous_count=0, age_s=0.0, now_ms=now_ms, settings=self._s)
        with self._engine.begin() as conn:
            expired = conn.execute(
                update(_N).where(_N.c.state == State.HELD.value, _N.c.next_attempt_ms <= now_ms)
                .values(state=d.state.value, next_attempt_ms=d.next_attempt_ms, last_error_message=d.message,
                        wait_reason=None, updated_at=datetime.now(UTC))
            ).rowcount or 0
        if expired:
            log.warning("sweeper.holds_expired", failed=expired)
        return expired

    def _outcome(self, r: Any, evidence: Evidence, now_ms: int) -> RowOutcome:
        row = ClaimedRow(r.id, r.tenant_id, {}, r.attempts, r.ambiguous_count, r.possible_duplicate, r.created_at)
        attempts = r.attempts + (evidence is not Evidence.NEVER_STARTED)
        d = decide(WorkerLost(evidence), attempts=attempts, ambiguous_count=r.ambiguous_count,
                   age_s=now_ms / 1000 - r.created_at.timestamp(), now_ms=now_ms, settings=self._s)
        records: tuple[AttemptRecord, ...] = ()
        if d.label is not None:
            records = (AttemptRecord(started_at=datetime.now(UTC), outcome=d.label, error_code=d.code,
                                     error_message=d.message, http_status=202 if d.state is State.SENT else None),)
        return RowOutcome(row, d.state, d.next_attempt_ms, records, r.possible_duplicate or d.possible_duplicate,
                          d.ambiguous_count)

