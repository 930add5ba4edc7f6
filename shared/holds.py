"""Held queues: a tenant whose configuration broke waits for a fix instead of failing everything.

The outcome policy (`worker.retry_policy.decide`) puts a row `held` when its attempt met a
configuration error (wrong or expired credential, consent missing, app disabled, Access Policy or
RBAC refusal, mailbox not enabled for REST). `place_hold` then holds the rest of that tenant's
queued and retry_wait rows, which would only fail the same way, and tells the admin once per hold:
an activity event `notifications_held` and, when the configuration names an admin contact, an
email through the platform relay (the reminders' path: platform mail enqueued in the same
transaction). A hold is one stretch between a `notifications_held` event and the next
`notifications_released`; a per-tenant lock (PostgreSQL advisory lock; SQLite serializes writers)
makes concurrent batches agree on whether it is new.

`release_hold` runs inside every provider save (`shared.providers`): the held rows go back to
`queued`, due now, with their `fair_rank` kept, so they go out in their original order. Held rows
past `hold_max_s` are failed by the sweeper with the code that placed the hold.

While a hold is in force, the dispatcher gives the tenant no rows, and `join_hold` (run by it once a
second) holds the tenant's new notifications too, without an attempt: they would only meet the same
error, and each would ask Entra ID again. A hold's start and its release are also webhook events,
`notification.held` and `notification.released` (one per hold, in the same transaction).
"""

from __future__ import annotations

import time
from datetime import UTC, datetime

import structlog
from sqlalchemy import Connection, Engine, func, select, text, update

from shared.diagnosis import diagnose
from shared.events import insert_event
from shared.models import ACTIVE_STATES, ActivityEvent, Notification, ProviderConfig, State, WaitReason
from shared.producer import Producer
from shared.settings import Settings
from shared.webhooks import Event, emit

HELD_EVENT = "notifications_held"
RELEASED_EVENT = "notifications_released"
_N = Notification.__table__  # type: ignore[attr-defined]
_E = ActivityEvent.__table__  # type: ignore[attr-defined]
_P = ProviderConfig.__table__  # type: ignore[attr-defined]
log = structlog.get_logger(__name__)


def place_hold(engine: Engine, settings: Settings, tenant_id: str, *, code: str, message: str | None,
               until_ms: int, version: int | None) -> int:
    """Hold the tenant's queued and retry_wait rows until `until_ms`; tell the admin if the hold is new.
    Returns how many more rows were held.

    `version` is the provider version the failure happened under. If a newer one was saved meanwhile
    (its release ran before this hold), the failure says nothing about it: the rows that version held
    go back to the queue, due once every worker's provider cache has seen the new version."""
    with engine.begin() as conn:
        _lock(conn, tenant_id)
        if version is not None and version != _version_in_force(conn, tenant_id):
            _requeue_stale(conn, tenant_id, version, settings.provider_cache_ttl_ms)
            return 0
        moved = conn.execute(
            update(_N).where(_N.c.tenant_id == tenant_id, _N.c.state.in_(ACTIVE_STATES))
            .values(state=State.HELD.value, next_attempt_ms=until_ms, dispatch_lease_until_ms=None,
                    wait_reason=WaitReason.HELD.value, last_error_code=code, last_error_message=message,
                    updated_at=datetime.now(UTC))
        ).rowcount or 0
        if not _hold_in_force(conn, tenant_id):
            _notify(conn, settings, tenant_id, code, message)
            emit(conn, [Event(tenant_id, "notification.held", {
                "code": code, "held": _held_count(conn, tenant_id), "provider_version": version,
                "hold_expires_at": datetime.fromtimestamp(until_ms / 1000, UTC).isoformat()})])
    return moved


def held_tenants(conn: Connection) -> set[str]:
    """Tenants with notifications on hold (the dispatcher gives them no rows)."""
    return set(conn.scalars(select(_N.c.tenant_id).distinct().where(_N.c.state == State.HELD.value)))


def join_hold(engine: Engine, tenant_id: str) -> int:
    """Hold the tenant's queued and retry_wait rows, with no attempt, if a hold is in force under the
    provider version in force; returns how many. Serialized with provider saves (their lock), so rows
    a save has just released are never held again."""
    with engine.begin() as conn:
        _lock_saves(conn, tenant_id)
        hold = conn.execute(
            select(_N.c.last_error_code, _N.c.last_error_message, _N.c.next_attempt_ms, _N.c.provider_version)
            .where(_N.c.tenant_id == tenant_id, _N.c.state == State.HELD.value)
            .order_by(_N.c.next_attempt_ms).limit(1)).first()
        if hold is None or hold.provider_version not in (None, _version_in_force(conn, tenant_id)):
            return 0
        return conn.execute(
            update(_N).where(_N.c.tenant_id == tenant_id, _N.c.state.in_(ACTIVE_STATES))
            .values(state=State.HELD.value, next_attempt_ms=hold.next_attempt_ms, dispatch_lease_until_ms=None,
                    wait_reason=WaitReason.HELD.value, last_error_code=hold.last_error_code,
                    last_error_message=hold.last_error_message, updated_at=datetime.now(UTC))
        ).rowcount or 0


def _held_count(conn: Connection, tenant_id: str) -> int:
    return int(conn.scalar(select(func.count()).where(_N.c.tenant_id == tenant_id,
                                                        _N.c.state == State.HELD.value)) or 0)


def _version_in_force(conn: Connection, tenant_id: str) -> int | None:
    return conn.execute(select(func.max(_P.c.version)).where(_P.c.tenant_id == tenant_id,
                                                             _P.c.active.is_(True))).scalar()


def _requeue_stale(conn: Connection, tenant_id: str, version: int, delay_ms: int) -> None:
    conn.execute(
        update(_N).where(_N.c.tenant_id == tenant_id, _N.c.state == State.HELD.value, _N.c.provider_version == version)
        .values(state=State.QUEUED.value, next_attempt_ms=int(time.time() * 1000) + delay_ms, wait_reason=None,
                updated_at=datetime.now(UTC)))


def release_hold(conn: Connection, tenant_id: str, *, actor: str | None, version: int) -> int:
    """Inside a provider save's transaction: held rows go back to `queued`, due now. Returns how many."""
    released = conn.execute(
        update(_N).where(_N.c.tenant_id == tenant_id, _N.c.state == State.HELD.value)
        .values(state=State.QUEUED.value, next_attempt_ms=int(time.time() * 1000), age_from=datetime.now(UTC),
                wait_reason=None, updated_at=datetime.now(UTC))
    ).rowcount or 0
    if released or _hold_in_force(conn, tenant_id):
        insert_event(conn, tenant_id, RELEASED_EVENT, actor=actor,
                     detail=f"{released} held notification(s) released by saving version {version}")
        emit(conn, [Event(tenant_id, "notification.released",
                          {"released": released, "provider_version": version, "actor": actor})])
    return released


def hold_message(tenant_id: str, code: str, message: str | None, hold_max_s: float) -> dict[str, object]:
    """The email to the tenant's admin contact when a hold begins."""
    found = diagnose(code, message)
    cause = found.cause if found else (message or code)
    fix = f"\n\nHow to fix it: {found.fix}" if found else ""
    body = (f"Notification email of {tenant_id} has stopped: Microsoft answered {code}.\n\n{cause}{fix}\n\n"
            f"Nothing is lost: notifications are held, and go out in order as soon as a corrected email provider "
            f"is saved in Settings > Email provider. Held longer than {hold_max_s / 3600:g} hours, they fail.\n")
    return {"subject": f"Action needed: notification email is on hold ({code})", "body": body, "body_type": "text"}


def _notify(conn: Connection, settings: Settings, tenant_id: str, code: str, message: str | None) -> None:
    contact = conn.execute(select(_P.c.admin_contact_email).where(_P.c.tenant_id == tenant_id, _P.c.active.is_(True))
                           .order_by(_P.c.version.desc()).limit(1)).scalar()
    emailed = None
    if contact:
        mail = {"to": [contact], **hold_message(tenant_id, code, message, settings.hold_max_s)}
        emailed = Producer(conn.engine, settings).enqueue_platform_mail(
            conn, mail, f"hold:{tenant_id}:{int(time.time() * 1000)}")
    detail = f"notifications held after {code}: {message or ''}"[:900]
    detail += f"; emailed to {contact} (notification {emailed})" if emailed else "; no admin contact email configured"
    insert_event(conn, tenant_id, HELD_EVENT, code=code, detail=detail, actor="worker")
    log.warning("hold.placed", tenant_id=tenant_id, code=code, emailed=emailed is not None)


def _hold_in_force(conn: Connection, tenant_id: str) -> bool:
    """Whether the tenant's latest hold event is a `notifications_held` (not yet released)."""
    latest = conn.execute(select(_E.c.kind).where(_E.c.tenant_id == tenant_id,
                                                  _E.c.kind.in_((HELD_EVENT, RELEASED_EVENT)))
                          .order_by(_E.c.id.desc()).limit(1)).scalar()
    return latest == HELD_EVENT


def _lock_saves(conn: Connection, tenant_id: str) -> None:
    # The lock every provider save of the tenant holds (shared.providers._lock_tenant); SQLite serializes writers.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                     {"key": f"provider_config:{tenant_id}"})


def _lock(conn: Connection, tenant_id: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"hold:{tenant_id}"})

