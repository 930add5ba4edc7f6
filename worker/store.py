"""Database side of delivery: atomic claims and bulk outcome writes.

A claim is one conditional UPDATE ... RETURNING: only rows still queued or due for retry move to
`sending`, so a redelivered or duplicated task never sends a row someone else claimed or sent.
Outcomes of a whole batch are written in one transaction with executemany, and only onto rows
this worker still holds.
"""

from __future__ import annotations

import functools
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any, ParamSpec, TypeVar

import structlog
from sqlalchemy import Connection, Engine, and_, bindparam, delete, insert, select, text, update
from sqlalchemy.dialects import postgresql
from sqlalchemy.exc import DBAPIError, OperationalError
from tenacity import Retrying, retry_if_exception, stop_after_delay, wait_random_exponential

from shared.codes import Code
from shared.errors import DatabaseUnavailable
from shared.models import (
    ACTIVE_STATES,
    TERMINAL_STATES,
    DeliveryAttempt,
    Notification,
    NotificationAttachment,
    NotificationRecipient,
    State,
    WebhookAttempt,
    WebhookDelivery,
    WebhookEvent,
)
from worker.webhook_events import emit_outcome_events

log = structlog.get_logger(__name__)
_N = Notification.__table__  # type: ignore[attr-defined]
_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]
_R = NotificationRecipient.__table__  # type: ignore[attr-defined]
_F = NotificationAttachment.__table__  # type: ignore[attr-defined]
_WE = WebhookEvent.__table__  # type: ignore[attr-defined]
_WD = WebhookDelivery.__table__  # type: ignore[attr-defined]
_WA = WebhookAttempt.__table__  # type: ignore[attr-defined]
P = ParamSpec("P")
T = TypeVar("T")


def _unavailable(exc: BaseException) -> bool:
    """An error that says the database could not be reached or dropped the connection."""
    return isinstance(exc, OperationalError) or (isinstance(exc, DBAPIError) and exc.connection_invalidated)


def _db_boundary(fn: Callable[P, T]) -> Callable[P, T]:
    """SQLAlchemy's disconnects become `DatabaseUnavailable` here, the store's one boundary."""
    @functools.wraps(fn)
    def mapped(*args: P.args, **kwargs: P.kwargs) -> T:
        try:
            return fn(*args, **kwargs)
        except DBAPIError as exc:
            if not _unavailable(exc):
                raise
            raise DatabaseUnavailable(f"database unavailable: {type(exc.orig).__name__}: {exc.orig}",
                                      code=Code.DATABASE_UNAVAILABLE) from exc
    return mapped


@dataclass(frozen=True, slots=True)
class ClaimedRow:
    """A notification this worker now holds."""

    id: str
    tenant_id: str
    payload: dict[str, Any]
    attempts: int
    ambiguous_count: int
    possible_duplicate: bool
    created_at: datetime
    age_from: datetime | None = None  # a resend or a hold's release; the maximum age counts from here
    draft_id: str | None = None  # a Graph draft an earlier attempt left (worker.uploads deletes it first)
    draft_mailbox: str | None = None

    @property
    def age_start(self) -> datetime:
        """Where the retry policy's maximum age counts from."""
        return self.age_from or self.created_at


@dataclass(frozen=True, slots=True)
class AttemptRecord:
    """One try at delivering, as it goes into delivery_attempt (`smtp_status` for the SMTP relay)."""

    started_at: datetime
    outcome: str
    latency_ms: float | None = None
    http_status: int | None = None
    error_code: str | None = None
    error_message: str | None = None
    request_id: str | None = None
    client_request_id: str | None = None
    retry_after_s: float | None = None
    mailbox: str | None = None
    smtp_status: int | None = None


@dataclass(frozen=True, slots=True)
class RowOutcome:
    """The new state of a claimed row and the attempts that led to it."""

    row: ClaimedRow
    state: State
    next_attempt_ms: int
    attempts: tuple[AttemptRecord, ...]
    possible_duplicate: bool
    ambiguous_count: int
    provider_version: int | None = None
    sender: str | None = None
    wait_reason: str | None = None  # why a retry_wait or held row waits (shared.models.WaitReason)


@_db_boundary
def claim(engine: Engine, ids: Sequence[str], claimed_by: str, lease_ms: int, now_ms: int) -> list[ClaimedRow]:
    """Move the due ones of `ids` to `sending` for this worker; returns what was claimed."""
    if not ids:
        return []
    stmt = (
        update(_N)
        .where(_N.c.id.in_(list(ids)), _N.c.state.in_(ACTIVE_STATES), _N.c.next_attempt_ms <= now_ms)
        .values(state=State.SENDING.value, claimed_by=claimed_by, send_lease_until_ms=now_ms + lease_ms,
                dispatch_lease_until_ms=None, wait_reason=None,
                updated_at=datetime.now(UTC))
        .returning(_N.c.id, _N.c.tenant_id, _N.c.payload, _N.c.attempts, _N.c.ambiguous_count,
                   _N.c.possible_duplicate, _N.c.created_at, _N.c.age_from, _N.c.draft_id, _N.c.draft_mailbox)
    )
    with engine.begin() as conn:
        return [ClaimedRow(*r) for r in conn.execute(stmt).all()]


@_db_boundary
def record_draft(engine: Engine, notification_id: str, claimed_by: str, mailbox: str, draft_id: str) -> bool:
    """Note the Graph draft this claim created for the row (worker.uploads), so that whoever sends it next
    deletes it first; False when the row is no longer this claim's (the sweeper took it back)."""
    stmt = (update(_N).where(_N.c.id == notification_id, _N.c.claimed_by == claimed_by,
                             _N.c.state == State.SENDING.value)
            .values(draft_id=draft_id, draft_mailbox=mailbox))
    with engine.begin() as conn:
        return conn.execute(stmt).rowcount == 1


@_db_boundary
def forget_draft(engine: Engine, notification_id: str, draft_id: str) -> None:
    """The draft is deleted or sent: nothing is left to clean up after the row."""
    with engine.begin() as conn:
        conn.execute(update(_N).where(_N.c.id == notification_id, _N.c.draft_id == draft_id)
                     .values(draft_id=None, draft_mailbox=None))


@_db_boundary
def purge_finished(engine: Engine, older_than_ms: int, *, chunk: int = 5_000) -> int:
    """Delete sent, failed and ambiguous notifications (and their attempts, recipients and attachments) created before
    `older_than_ms`, then the webhook events of that age none of whose deliveries is pending (with their
    deliveries and attempts: a notification.* event names its notification); returns how many notifications
    went. Works in chunks so it never holds long locks."""
    cutoff = datetime.fromtimestamp(older_than_ms / 1000, UTC)
    total = 0
    while True:
        with engine.begin() as conn:
            ids = list(conn.execute(
                select(_N.c.id).where(_N.c.state.in_(TERMINAL_STATES), _N.c.created_at < cutoff).limit(chunk)
            ).scalars())
            if not ids:
                break
            conn.execute(delete(_A).where(_A.c.notification_id.in_(ids)))
            conn.execute(delete(_R).where(_R.c.notification_id.in_(ids)))
            conn.execute(delete(_F).where(_F.c.notification_id.in_(ids)))
            conn.execute(delete(_N).where(_N.c.id.in_(ids)))
        total += len(ids)
    while _purge_webhook_events(engine, cutoff, chunk):
        pass
    return total


def _purge_webhook_events(engine: Engine, cutoff: datetime, chunk: int) -> int:
    """One chunk of webhook events created before `cutoff` whose deliveries are all delivered or failed."""
    pending = select(_WD.c.id).where(_WD.c.event_id == _WE.c.id, _WD.c.state == "pending").exists()
    with engine.begin() as conn:
        ids = list(conn.execute(select(_WE.c.id).where(_WE.c.created_at < cutoff, ~pending).limit(chunk)).scalars())
        if ids:
            deliveries = select(_WD.c.id).where(_WD.c.event_id.in_(ids))
            conn.execute(delete(_WA).where(_WA.c.delivery_id.in_(deliveries)))
            conn.execute(delete(_WD).where(_WD.c.event_id.in_(ids)))
            conn.execute(delete(_WE).where(_WE.c.id.in_(ids)))
    return len(ids)


def renew_leases(engine: Engine, ids: Sequence[str], claimed_by: str, lease_ms: int) -> bool:
    """Extend this worker's claim on rows it is still sending; False when the database could not
    be reached. That must not end the batch: its sends go on and their outcomes are written once
    the database is back (the lease is three renewals long, so one missed renewal is harmless)."""
    now_ms = int(time.time() * 1000)
    try:
        with engine.begin() as conn:
            conn.execute(update(_N).where(_N.c.id.in_(list(ids)), _N.c.state == State.SENDING.value,
                                          _N.c.claimed_by == claimed_by)
                         .values(send_lease_until_ms=now_ms + lease_ms))
    except DBAPIError as exc:
        if not _unavailable(exc):
            raise
        log.warning("leases.renew_failed", rows=len(ids), worker=claimed_by, exc_info=True)
        return False
    return True


@_db_boundary
def write_outcomes(engine: Engine, outcomes: Sequence[RowOutcome], claimed_by: str, *,
                   lease_expired_by_ms: int | None = None, retry_for_s: float = 180.0) -> int:
    """Write every outcome of a batch in one transaction; returns how many rows were still ours.

    Only rows still `sending` under `claimed_by` are written (and, for the sweeper, only those
    whose send lease ran out by `lease_expired_by_ms`). Retried for `retry_for_s` while the
    database is unreachable (a restart): the sends happened, so their outcomes must not be dropped.
    """
    retrying = Retrying(retry=retry_if_exception(_unavailable), stop=stop_after_delay(retry_for_s),
                        wait=wait_random_exponential(multiplier=0.2, max=5), reraise=True)
    return retrying(_write_outcomes, engine, outcomes, claimed_by, lease_expired_by_ms)


def _write_outcomes(engine: Engine, outcomes: Sequence[RowOutcome], claimed_by: str,
                    lease_expired_by_ms: int | None) -> int:
    # A row left `sending` is one this batch lost to the sweeper before sending it: nothing to write.
    outcomes = [o for o in outcomes if o.state is not State.SENDING]
    if not outcomes:
        return 0
    now = datetime.now(UTC)
    updates = [_update_params(o, now) for o in outcomes]
    with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            # One statement per table for the whole batch instead of one per row: most of the
            # worker's database time at full throughput.
            matched = _pg_update_outcomes(conn, updates, now, claimed_by, lease_expired_by_ms)
        else:
            matched = _update_outcomes(conn, updates, now, claimed_by, lease_expired_by_ms)
        # Attempts and webhook events only for rows still ours: a row the sweeper took back (or
        # another claim finished) keeps the record its new owner writes, not a second one.
        ours = [o for o in outcomes if o.row.id in matched]
        attempts = [_attempt_params(o, a, i, claimed_by) for o in ours for i, a in enumerate(o.attempts)]
        if attempts:
            if conn.dialect.name == "postgresql":
                _pg_insert_attempts(conn, attempts)
            else:
                conn.execute(insert(_A), attempts)
        emit_outcome_events(conn, ours)  # webhooks: in this transaction (worker.webhook_events)
    if len(matched) < len(updates):
        log.warning("outcomes.lost_claims", expected=len(updates), matched=len(matched), worker=claimed_by)
    return len(matched)


def _update_outcomes(conn: Connection, updates: Sequence[dict[str, Any]], now: datetime,
                     claimed_by: str, lease_expired_by_ms: int | None) -> set[str]:
    """The outcome updates one row at a time (SQLite: local, and UPDATE ... RETURNING has no
    executemany); returns the ids still ours."""
    guard = [_N.c.id == bindparam("b_id"), _N.c.state == State.SENDING.value,
             _N.c.claimed_by == bindparam("b_claimed_by")]
    if lease_expired_by_ms is not None:
        guard.append(_N.c.send_lease_until_ms <= lease_expired_by_ms)
    stmt = (
        update(_N)
        .where(and_(*guard))
        .values(state=bindparam("state"), next_attempt_ms=bindparam("next_attempt_ms"),
                send_lease_until_ms=None, dispatch_lease_until_ms=None, claimed_by=None,
                attempts=bindparam("attempts"),
                ambiguous_count=bindparam("ambiguous_count"),
                possible_duplicate=bindparam("possible_duplicate"), last_status=bindparam("last_status"),
                last_error_code=bindparam("last_error_code"),
                last_error_message=bindparam("last_error_message"),
                graph_request_id=bindparam("graph_request_id"), sent_at=bindparam("sent_at"),
                provider_version=bindparam("provider_version"), sender=bindparam("sender"),
                wait_reason=bindparam("wait_reason"), updated_at=now)
        .returning(_N.c.id)
    )
    return {nid for u in updates for nid in conn.execute(stmt, u | {"b_claimed_by": claimed_by}).scalars()}


def _pg_arrays(table: Any, rows: Sequence[dict[str, Any]], names: Sequence[str]) -> tuple[str, dict[str, Any]]:
    """`unnest(CAST(:c AS type[]), ...) AS v(c, ...)` over `rows` for PostgreSQL, with its parameters:
    one array parameter per column instead of one statement per row."""
    return _pg_source(table, tuple(names)), {n: [r[n] for r in rows] for n in names}


@functools.lru_cache(maxsize=16)
def _pg_source(table: Any, names: tuple[str, ...]) -> str:
    dialect = postgresql.dialect()  # type: ignore[no-untyped-call]
    casts = ", ".join(f"CAST(:{n} AS {table.c[n.removeprefix('b_')].type.compile(dialect=dialect)}[])"
                      for n in names)
    return f"unnest({casts}) AS v({', '.join(names)})"


def _pg_update_outcomes(conn: Connection, updates: Sequence[dict[str, Any]], now: datetime,
                        claimed_by: str, lease_expired_by_ms: int | None) -> set[str]:
    names = list(updates[0])
    source, params = _pg_arrays(_N, updates, names)
    sets = ", ".join(f"{n} = v.{n}" for n in names if n != "b_id")
    expired = "" if lease_expired_by_ms is None else " AND n.send_lease_until_ms <= :expired_by"
    result = conn.execute(text(
        f"UPDATE notification AS n SET {sets}, send_lease_until_ms = NULL, dispatch_lease_until_ms = NULL, "
        f"claimed_by = NULL, updated_at = :now "
        f"FROM {source} WHERE n.id = v.b_id AND n.state = 'sending' AND n.claimed_by = :claimed_by{expired} "
        f"RETURNING n.id"
    ), params | {"now": now, "claimed_by": claimed_by, "expired_by": lease_expired_by_ms})
    return set(result.scalars())


def _pg_insert_attempts(conn: Connection, attempts: Sequence[dict[str, Any]]) -> None:
    names = list(attempts[0])
    source, params = _pg_arrays(_A, attempts, names)
    conn.execute(text(f"INSERT INTO delivery_attempt ({', '.join(names)}) SELECT * FROM {source}"), params)


def _update_params(o: RowOutcome, now: datetime) -> dict[str, Any]:
    last = o.attempts[-1] if o.attempts else None
    return {
        "b_id": o.row.id, "state": o.state.value, "next_attempt_ms": o.next_attempt_ms,
        "attempts": o.row.attempts + len(o.attempts), "ambiguous_count": o.ambiguous_count,
        "possible_duplicate": o.possible_duplicate,
        "last_status": (last.http_status or last.smtp_status) if last else None,
        "last_error_code": last.error_code if last else None,
        "last_error_message": last.error_message if last else None,
        "graph_request_id": last.request_id if last else None,
        "sent_at": now if o.state is State.SENT else None,
        "provider_version": o.provider_version, "sender": o.sender, "wait_reason": o.wait_reason,
    }


def _attempt_params(o: RowOutcome, a: AttemptRecord, index: int, worker: str) -> dict[str, Any]:
    return {
        "notification_id": o.row.id, "tenant_id": o.row.tenant_id, "attempt_no": o.row.attempts + index + 1,
        "started_at": a.started_at, "latency_ms": a.latency_ms, "outcome": a.outcome,
        "http_status": a.http_status, "error_code": a.error_code,
        "error_message": a.error_message[:2000] if a.error_message else None,
        "request_id": a.request_id, "client_request_id": a.client_request_id,
        "retry_after_s": a.retry_after_s, "mailbox": a.mailbox, "worker": worker, "smtp_status": a.smtp_status,
    }
