"""Dashboards' time series: notifications per minute or per hour, by enqueue time, for one tenant or many.

Each bucket holds the notifications *enqueued* in it (`created_at`, through ix_notification_tenant_created)
and says where they are now: sent, failed, ambiguous, or still waiting (by state: queued, sending,
retry_wait, held), with the p50 and p95 of enqueue→outcome latency of the finished ones (a sent row's
`sent_at`, a failed or ambiguous row's last update). Totals by sender and, across tenants, by tenant
cover the whole window. Percentiles are nearest-rank over the bucket's finished rows, computed here so
that SQLite and PostgreSQL answer alike; the rows of the window are streamed, never held all at once
beyond their latencies.
"""

from __future__ import annotations

import math
from collections import defaultdict
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, select

from shared.clock import as_utc
from shared.models import Notification, State

_N = Notification.__table__  # type: ignore[attr-defined]
BUCKETS_S = {"1m": 60, "1h": 3600}
MAX_BUCKETS = 1440
WAITING_STATES = (State.QUEUED.value, State.SENDING.value, State.RETRY_WAIT.value, State.HELD.value)
_OUTCOMES = (State.SENT.value, State.FAILED.value, State.AMBIGUOUS.value)


@dataclass
class _Tally:
    """Counts and finished latencies of one bucket, sender or tenant."""

    counts: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    latencies_s: list[float] = field(default_factory=list)

    def add(self, state: str, latency_s: float | None) -> None:
        self.counts[state] += 1
        if latency_s is not None:
            self.latencies_s.append(latency_s)

    def summary(self) -> dict[str, Any]:
        waiting = {s: self.counts.get(s, 0) for s in WAITING_STATES}
        ordered = sorted(self.latencies_s)
        outcomes = {s: self.counts.get(s, 0) for s in _OUTCOMES}
        return {"enqueued": sum(self.counts.values()), **outcomes, "waiting": sum(waiting.values()),
                "waiting_by_state": waiting, "latency_p50_s": percentile(ordered, 50),
                "latency_p95_s": percentile(ordered, 95)}


def percentile(ordered: Sequence[float], p: float) -> float | None:
    """The nearest-rank `p`th percentile of sorted values (None for none), rounded to milliseconds."""
    if not ordered:
        return None
    return round(ordered[max(0, math.ceil(p / 100 * len(ordered)) - 1)], 3)


def bucket_start(at: datetime, bucket_s: int) -> datetime:
    """The start of the bucket holding `at` (buckets are aligned on the epoch, in UTC)."""
    epoch_s = int(as_utc(at).timestamp())
    return datetime.fromtimestamp(epoch_s - epoch_s % bucket_s, UTC)


def timeseries(engine: Engine, tenants: Sequence[str] | None, *, bucket: str, since: datetime, until: datetime,
               sender: str | None = None, per_tenant: bool = False) -> dict[str, Any]:
    """Buckets of `bucket` ("1m" or "1h") from the one holding `since` to the one before `until`, for the
    listed tenants (None: every tenant), optionally of one sender address; `per_tenant` adds `by_tenant`."""
    bucket_s = BUCKETS_S[bucket]
    first = bucket_start(since, bucket_s)
    by_bucket: dict[datetime, _Tally] = defaultdict(_Tally)
    by_sender: dict[str | None, _Tally] = defaultdict(_Tally)
    by_tenant: dict[str, _Tally] = defaultdict(_Tally)
    total = _Tally()
    for tenant_id, created_at, state, row_sender, latency_s in _rows(engine, tenants, first, until, sender):
        for tally in (by_bucket[bucket_start(created_at, bucket_s)], by_sender[row_sender], by_tenant[tenant_id],
                      total):
            tally.add(state, latency_s)
    starts = _starts(first, as_utc(until), bucket_s)
    out: dict[str, Any] = {
        "bucket": bucket, "since": first.isoformat(), "until": as_utc(until).isoformat(),
        "series": [{"start": s.isoformat(), **by_bucket.get(s, _Tally()).summary()} for s in starts],
        "by_sender": [{"sender": k, **v.summary()} for k, v in sorted(by_sender.items(), key=lambda kv: kv[0] or "")],
        "total": total.summary(),
    }
    if per_tenant:
        out["by_tenant"] = [{"tenant_id": k, **v.summary()} for k, v in sorted(by_tenant.items())]
    return out


def _starts(first: datetime, until: datetime, bucket_s: int) -> list[datetime]:
    count = max(0, math.ceil((until - first).total_seconds() / bucket_s))
    return [first + timedelta(seconds=i * bucket_s) for i in range(count)]


def _rows(engine: Engine, tenants: Sequence[str] | None, since: datetime, until: datetime,
          sender: str | None) -> Iterable[tuple[str, datetime, str, str | None, float | None]]:
    query = select(_N.c.tenant_id, _N.c.created_at, _N.c.state, _N.c.sender, _N.c.sent_at, _N.c.updated_at).where(
        _N.c.created_at >= since, _N.c.created_at < until)
    if tenants is not None:
        query = query.where(_N.c.tenant_id.in_(list(tenants)))
    if sender is not None:
        query = query.where(_N.c.sender == sender)
    with engine.connect() as conn:
        for r in conn.execution_options(yield_per=2000).execute(query):
            created_at = as_utc(r.created_at)
            outcome_at = (r.sent_at or r.updated_at) if r.state in _OUTCOMES else None
            latency_s = (as_utc(outcome_at) - created_at).total_seconds() if outcome_at is not None else None
            yield r.tenant_id, created_at, r.state, r.sender, latency_s
