"""Held queues: notifications whose configuration broke wait for a fix instead of failing.

The outcome policy (`worker.retry_policy.decide`) puts a row `held` when its attempt met a
configuration error. What the hold stops depends on what broke (`hold_scope`):

    credential, consent or app (AADSTS7000215, 7000222, 700016, 65001, …),
    NoPermissionsInAccessToken                   -> the whole tenant: every sender would meet it
    Access Policy or RBAC refusal (AccessPolicyDenied, RbacScopeDenied, RbacPropagating,
    ErrorAccessDenied), ErrorSendAsDenied,
    MailboxNotEnabledForRESTAPI                  -> that sender mailbox only: the tenant's other
                                                    senders keep sending

A row stored without a sender address (before named senders) holds its whole tenant. A held row's
scope is read back from its own code and sender address, so no column records it.

`place_hold` holds the rest of the scope's queued and retry_wait rows, which would only fail the
same way, and tells the admin once per hold: an activity event `notifications_held` naming the
sender (`activity_event.sender`; null for the whole tenant), a webhook event `notification.held`
and, when the configuration names an admin contact, an email through the platform relay (the
reminders' path: platform mail enqueued in the same transaction). A hold is one stretch between a
`notifications_held` event of its scope and the tenant's next `notifications_released`; a
per-tenant lock (PostgreSQL advisory lock; SQLite serializes writers) makes concurrent batches
agree on whether it is new.

`release_hold` runs inside every provider save (`shared.providers`): all the tenant's held rows,
whatever their scope, go back to `queued`, due now, with their `fair_rank` kept, so they go out in
their original order. Held rows past `hold_max_s` are failed by the sweeper with the code that
placed the hold.

While a hold is in force the dispatcher gives its scope no rows (`held_scopes`), and `join_hold`
(run by it once a second) holds the scope's new notifications too, without an attempt: they would
only meet the same error, and each would ask Graph or Entra ID again.
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Connection, Engine, and_, func, or_, select, text, update

from shared.codes import Code
from shared.diagnosis import diagnose
from shared.events import insert_event
from shared.models import ACTIVE_STATES, ActivityEvent, Notification, ProviderConfig, State, WaitReason
from shared.producer import Producer
from shared.senders import sender_addresses
from shared.settings import Settings
from shared.webhooks import Event, emit

HELD_EVENT = "notifications_held"
RELEASED_EVENT = "notifications_released"
# Refusals of one sender mailbox (Graph answered for that mailbox): the tenant's other senders are unaffected.
SENDER_HOLD_CODES = frozenset({
    "ErrorAccessDenied", "ErrorSendAsDenied", "MailboxNotEnabledForRESTAPI",
    Code.ACCESS_POLICY_DENIED.value, Code.RBAC_SCOPE_DENIED.value, Code.RBAC_PROPAGATING.value,
})
_N = Notification.__table__  # type: ignore[attr-defined]
_E = ActivityEvent.__table__  # type: ignore[attr-defined]
_P = ProviderConfig.__table__  # type: ignore[attr-defined]
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class HoldScope:
    """What one hold stops: one sender mailbox of a tenant (`sender`, lowercased), or the whole tenant (None)."""

    tenant_id: str
    sender: str | None = None

    def active_rows(self) -> list[Any]:
        """SQL conditions for the scope's queued and retry_wait rows."""
        rows = [_N.c.tenant_id == self.tenant_id, _N.c.state.in_(ACTIVE_STATES)]
        return rows if self.sender is None else [*rows, func.lower(_N.c.sender) == self.sender]

    def held_rows(self) -> list[Any]:
        """SQL conditions for the rows this scope's hold holds (`hold_scope` in SQL)."""
        rows = [_N.c.tenant_id == self.tenant_id, _N.c.state == State.HELD.value]
        codes = sorted(SENDER_HOLD_CODES)
        if self.sender is None:
            return [*rows, or_(_N.c.sender.is_(None), _N.c.last_error_code.is_(None),
                               _N.c.last_error_code.notin_(codes))]
        return [*rows, func.lower(_N.c.sender) == self.sender, _N.c.last_error_code.in_(codes)]


def hold_scope(tenant_id: str, code: str | None, sender: str | None) -> HoldScope:
    """The scope a configuration error `code`, met sending from `sender` (an address), holds."""
    if sender and code in SENDER_HOLD_CODES:
        return HoldScope(tenant_id, sender.lower())
    return HoldScope(tenant_id)


@dataclass(frozen=True, slots=True)
class HeldScopes:
    """Every hold in force: whole tenants, and (tenant, sender address) pairs."""

    tenants: frozenset[str]
    senders: frozenset[tuple[str, str]]

    def holds(self, tenant_id: str, sender: str | None) -> bool:
        """Whether a row of `tenant_id` sending from `sender` is on hold (the dispatcher leaves it)."""
        if tenant_id in self.tenants:
            return True
        return sender is not None and (tenant_id, sender.lower()) in self.senders

    def scopes(self) -> list[HoldScope]:
        """The holds as scopes, whole tenants first."""
        return [*(HoldScope(t) for t in sorted(self.tenants)), *(HoldScope(t, s) for t, s in sorted(self.senders))]


def held_scopes(conn: Connection) -> HeldScopes:
    """The holds in force, from the held rows' codes and senders (one query)."""
    rows = conn.execute(select(_N.c.tenant_id, func.lower(_N.c.sender), _N.c.last_error_code).distinct()
                        .where(_N.c.state == State.HELD.value)).all()
    scopes = {hold_scope(t, code, sender) for t, sender, code in rows}
    return HeldScopes(frozenset(s.tenant_id for s in scopes if s.sender is None),
                      frozenset((s.tenant_id, s.sender) for s in scopes if s.sender is not None))


def place_hold(engine: Engine, settings: Settings, scope: HoldScope, *, code: str, message: str | None,
               until_ms: int, version: int | None, sender_name: str | None = None) -> int:
    """Hold the scope's queued and retry_wait rows until `until_ms`; tell the admin if the hold is new.
    Returns how many more rows were held. `sender_name` names the sender of a sender's hold.

    `version` is the provider version the failure happened under. If a newer one was saved meanwhile
    (its release ran before this hold), the failure says nothing about it: the rows that version held
    go back to the queue, due once every worker's provider cache has seen the new version."""
    tenant_id = scope.tenant_id
    with engine.begin() as conn:
        _lock(conn, tenant_id)
        if version is not None and version != _version_in_force(conn, tenant_id):
            _requeue_stale(conn, tenant_id, version, settings.provider_cache_ttl_ms)
            return 0
        moved = conn.execute(
            update(_N).where(*scope.active_rows())
            .values(state=State.HELD.value, next_attempt_ms=until_ms, dispatch_lease_until_ms=None,
                    wait_reason=WaitReason.HELD.value, last_error_code=code, last_error_message=message,
                    updated_at=datetime.now(UTC))
        ).rowcount or 0
        if not _hold_in_force(conn, scope):
            _notify(conn, settings, scope, sender_name, code, message)
            sender = {"name": sender_name, "address": scope.sender} if scope.sender else None
            emit(conn, [Event(tenant_id, "notification.held", {
                "code": code, "held": _held_count(conn, scope), "provider_version": version, "sender": sender,
                "hold_expires_at": datetime.fromtimestamp(until_ms / 1000, UTC).isoformat()})])
    return moved


def join_hold(engine: Engine, scope: HoldScope) -> int:
    """Hold the scope's queued and retry_wait rows, with no attempt, if its hold is in force under the
    provider version in force; returns how many. Serialized with provider saves (their lock), so rows
    a save has just released are never held again."""
    with engine.begin() as conn:
        _lock_saves(conn, scope.tenant_id)
        hold = conn.execute(
            select(_N.c.last_error_code, _N.c.last_error_message, _N.c.next_attempt_ms, _N.c.provider_version)
            .where(*scope.held_rows()).order_by(_N.c.next_attempt_ms).limit(1)).first()
        if hold is None or hold.provider_version not in (None, _version_in_force(conn, scope.tenant_id)):
            return 0
        return conn.execute(
            update(_N).where(*scope.active_rows())
            .values(state=State.HELD.value, next_attempt_ms=hold.next_attempt_ms, dispatch_lease_until_ms=None,
                    wait_reason=WaitReason.HELD.value, last_error_code=hold.last_error_code,
                    last_error_message=hold.last_error_message, updated_at=datetime.now(UTC))
        ).rowcount or 0


def release_hold(conn: Connection, tenant_id: str, *, actor: str | None, version: int) -> int:
    """Inside a provider save's transaction: every held row of the tenant (all scopes) goes back to
    `queued`, due now. Returns how many."""
    released = conn.execute(
        update(_N).where(_N.c.tenant_id == tenant_id, _N.c.state == State.HELD.value)
        .values(state=State.QUEUED.value, next_attempt_ms=int(time.time() * 1000), age_from=datetime.now(UTC),
                wait_reason=None, updated_at=datetime.now(UTC))
    ).rowcount or 0
    if released or _latest_hold_event(conn, tenant_id, None) == HELD_EVENT:
        insert_event(conn, tenant_id, RELEASED_EVENT, actor=actor,
                     detail=f"{released} held notification(s) released by saving version {version}")
        emit(conn, [Event(tenant_id, "notification.released",
                          {"released": released, "provider_version": version, "actor": actor})])
    return released


def held_summary(engine: Engine, tenant_id: str) -> list[dict[str, Any]]:
    """The tenant's holds in force, whole tenant first, for the page's banner: each one's `sender` (address)
    and `sender_name` (None for the whole tenant), `code`, how many notifications it `held`, and when the
    first of them fails (`expires_at`)."""
    with engine.connect() as conn:
        rows = conn.execute(select(_N.c.sender, _N.c.last_error_code, func.count(), func.min(_N.c.next_attempt_ms))
                            .where(_N.c.tenant_id == tenant_id, _N.c.state == State.HELD.value)
                            .group_by(_N.c.sender, _N.c.last_error_code)).all()
        names = {address: name for name, address in sender_addresses(conn, [tenant_id]).get(tenant_id, {}).items()}
    holds: dict[tuple[str, str | None], dict[str, Any]] = {}
    for sender, code, count, expires_ms in rows:
        scope = hold_scope(tenant_id, code, sender)
        item = holds.setdefault((scope.sender or "", code), {
            "sender": scope.sender, "sender_name": names.get(scope.sender or ""), "code": code, "held": 0,
            "expires_ms": expires_ms})
        item["held"] += int(count)
        item["expires_ms"] = min(item["expires_ms"], expires_ms)
    return [{**{k: v for k, v in h.items() if k != "expires_ms"},
             "expires_at": datetime.fromtimestamp(h["expires_ms"] / 1000, UTC).isoformat()}
            for _, h in sorted(holds.items(), key=lambda kv: (kv[0][0], kv[0][1] or ""))]


def hold_message(tenant_id: str, code: str, message: str | None, hold_max_s: float, *,
                 sender: str | None = None, sender_name: str | None = None) -> dict[str, object]:
    """The email to the tenant's admin contact when a hold begins (`sender`: the address of a sender's hold)."""
    found = diagnose(code, message)
    cause = found.cause if found else (message or code)
    fix = f"\n\nHow to fix it: {found.fix}" if found else ""
    what = f"Notification email of {tenant_id}"
    others = ""
    if sender:
        what += f" from the sender {describe_sender(sender, sender_name)}"
        others = " The tenant's other senders keep sending."
    body = (f"{what} has stopped: Microsoft answered {code}.{others}\n\n{cause}{fix}\n\n"
            f"Nothing is lost: notifications are held, and go out in order as soon as a corrected email provider "
            f"is saved in Settings > Email provider. Held longer than {hold_max_s / 3600:g} hours, they fail.\n")
    subject = f"Action needed: notification email{f' from {sender}' if sender else ''} is on hold ({code})"
    return {"subject": subject, "body": body, "body_type": "text"}


def describe_sender(address: str, name: str | None) -> str:
    """`security (security@contoso.com)`, or the address alone when the name is unknown."""
    return f"{name} ({address})" if name else address


def _held_count(conn: Connection, scope: HoldScope) -> int:
    return int(conn.scalar(select(func.count()).where(*scope.held_rows())) or 0)


def _version_in_force(conn: Connection, tenant_id: str) -> int | None:
    return conn.execute(select(func.max(_P.c.version)).where(_P.c.tenant_id == tenant_id,
                                                             _P.c.active.is_(True))).scalar()


def _requeue_stale(conn: Connection, tenant_id: str, version: int, delay_ms: int) -> None:
    conn.execute(
        update(_N).where(_N.c.tenant_id == tenant_id, _N.c.state == State.HELD.value, _N.c.provider_version == version)
        .values(state=State.QUEUED.value, next_attempt_ms=int(time.time() * 1000) + delay_ms, wait_reason=None,
                updated_at=datetime.now(UTC)))


def _notify(conn: Connection, settings: Settings, scope: HoldScope, sender_name: str | None, code: str,
            message: str | None) -> None:
    tenant_id = scope.tenant_id
    contact = conn.execute(select(_P.c.admin_contact_email).where(_P.c.tenant_id == tenant_id, _P.c.active.is_(True))
                           .order_by(_P.c.version.desc()).limit(1)).scalar()
    emailed = None
    if contact:
        mail = {"to": [contact], **hold_message(tenant_id, code, message, settings.hold_max_s,
                                                sender=scope.sender, sender_name=sender_name)}
        emailed = Producer(conn.engine, settings).enqueue_platform_mail(
            conn, mail, f"hold:{tenant_id}:{scope.sender or '*'}:{int(time.time() * 1000)}")
    whose = "notifications"
    if scope.sender:
        whose += f" of the sender {describe_sender(scope.sender, sender_name)}"
    detail = f"{whose} held after {code}: {message or ''}"[:900]
    detail += f"; emailed to {contact} (notification {emailed})" if emailed else "; no admin contact email configured"
    insert_event(conn, tenant_id, HELD_EVENT, code=code, detail=detail, actor="worker", sender=scope.sender)
    log.warning("hold.placed", tenant_id=tenant_id, sender=scope.sender, code=code, emailed=emailed is not None)


def _hold_in_force(conn: Connection, scope: HoldScope) -> bool:
    """Whether the scope's latest hold event is a `notifications_held` not released since."""
    return _latest_hold_event(conn, scope.tenant_id, scope) == HELD_EVENT


def _latest_hold_event(conn: Connection, tenant_id: str, scope: HoldScope | None) -> str | None:
    """The kind of the tenant's latest hold event: a release, or a hold of `scope` (any scope when None)."""
    held = _E.c.kind == HELD_EVENT
    if scope is not None:
        held = and_(held, _E.c.sender.is_(None) if scope.sender is None else _E.c.sender == scope.sender)
    latest: str | None = conn.execute(select(_E.c.kind).where(_E.c.tenant_id == tenant_id,
                                                              or_(_E.c.kind == RELEASED_EVENT, held))
                                      .order_by(_E.c.id.desc()).limit(1)).scalar()
    return latest


def _lock_saves(conn: Connection, tenant_id: str) -> None:
    # The lock every provider save of the tenant holds (shared.providers._lock_tenant); SQLite serializes writers.
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                     {"key": f"provider_config:{tenant_id}"})


def _lock(conn: Connection, tenant_id: str) -> None:
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"), {"key": f"hold:{tenant_id}"})
