"""Resend: an admin puts failed or ambiguous notifications back in the queue.

A resend is a new attempt on the same row: its delivery_attempt history stays, its attempt count
goes on. The row is flagged `possible_duplicate` when an earlier attempt may have been delivered
(the row is ambiguous, or any attempt was recorded as ambiguous: `ambiguous_count` > 0). Only
failed and ambiguous rows move, in one conditional UPDATE, so the same request twice sends once:
the second finds the row queued, sending or sent and answers its current state.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, or_, select, update

from shared.events import insert_event
from shared.models import Notification, State

RESENDABLE = (State.FAILED.value, State.AMBIGUOUS.value)
RESENT_EVENT = "notifications_resent"
MAX_BULK = 1000
_N = Notification.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True, kw_only=True)
class ResendFilter:
    """Which of a tenant's failed or ambiguous notifications a bulk resend takes (newest first)."""

    state: str | None = None  # "failed" or "ambiguous"; None: both
    error_code: str | None = None
    since: datetime | None = None
    until: datetime | None = None
    limit: int = 100


def resend(engine: Engine, tenant_id: str, ids: list[str], *, actor: str | None) -> list[str]:
    """Requeue those of `ids` (the tenant's) that are failed or ambiguous; returns the ids requeued."""
    if not ids:
        return []
    duplicate = or_(_N.c.possible_duplicate.is_(True), _N.c.state == State.AMBIGUOUS.value, _N.c.ambiguous_count > 0)
    with engine.begin() as conn:
        moved = list(conn.execute(
            update(_N).where(_N.c.tenant_id == tenant_id, _N.c.id.in_(ids), _N.c.state.in_(RESENDABLE))
            .values(state=State.QUEUED.value, next_attempt_ms=int(time.time() * 1000), possible_duplicate=duplicate,
                    dispatch_lease_until_ms=None, sent_at=None, age_from=datetime.now(UTC),
                    updated_at=datetime.now(UTC))
            .returning(_N.c.id)
        ).scalars())
        if moved:
            insert_event(conn, tenant_id, RESENT_EVENT, actor=actor,
                         detail=f"{len(moved)} notification(s) resent: {', '.join(moved[:20])}"
                                f"{' …' if len(moved) > 20 else ''}")
    return moved


def matching(engine: Engine, tenant_id: str, f: ResendFilter) -> list[str]:
    """The ids a bulk resend with `f` takes, newest first, at most `f.limit`."""
    query = select(_N.c.id).where(_N.c.tenant_id == tenant_id,
                                  _N.c.state.in_([f.state] if f.state else list(RESENDABLE)))
    if f.error_code:
        query = query.where(_N.c.last_error_code == f.error_code)
    if f.since:
        query = query.where(_N.c.created_at >= f.since)
    if f.until:
        query = query.where(_N.c.created_at < f.until)
    with engine.connect() as conn:
        return list(conn.execute(query.order_by(_N.c.created_at.desc(), _N.c.id.desc())
                                 .limit(min(f.limit, MAX_BULK))).scalars())


def current_state(engine: Engine, tenant_id: str, nid: str) -> dict[str, object] | None:
    """The row's state and duplicate flag, or None when the tenant has no such notification."""
    with engine.connect() as conn:
        row = conn.execute(select(_N.c.state, _N.c.possible_duplicate, _N.c.attempts)
                           .where(_N.c.tenant_id == tenant_id, _N.c.id == nid)).mappings().first()
    return dict(row) if row else None
