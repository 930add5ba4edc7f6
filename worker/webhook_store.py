"""Database side of webhook delivery: claims by lease, one transaction per recorded attempt, disabling.

Any number of workers run the delivery loop. A claim is a conditional UPDATE of due rows whose lease
has run out (PostgreSQL re-checks the condition after waiting for a competing claim's row lock, SQLite
takes its write lock up front), so two workers never hold one delivery; a worker that dies holding
some lets their lease run out and another claims them again (at least once, same `webhook-id`).
A delivery still failing after its retry window (`webhook_retry_for_s`) fails, and its endpoint is
disabled: an activity event and, when the tenant's provider names an admin contact, an email through
the platform relay, in the same transaction.
"""

from __future__ import annotations

import random
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, or_, select, update

from shared.events import insert_event
from shared.models import ProviderConfig, WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from shared.producer import Producer
from shared.secretbox import SecretBox
from shared.settings import Settings
from transport.webhooks import WebhookAnswer
from worker.retry_policy import compute_backoff

_D = WebhookDelivery.__table__  # type: ignore[attr-defined]
_W = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_E = WebhookEvent.__table__  # type: ignore[attr-defined]
_A = WebhookAttempt.__table__  # type: ignore[attr-defined]
_P = ProviderConfig.__table__  # type: ignore[attr-defined]
DISABLED_EVENT = "webhook_endpoint_disabled"


@dataclass(frozen=True, slots=True)
class ClaimedDelivery:
    """A delivery this worker holds, with what it takes to send it (secrets decrypted, in memory only)."""

    id: str
    tenant_id: str
    endpoint_id: str
    event_id: str
    url: str
    payload: dict[str, Any]
    attempts: int
    window_start_ms: int
    signing_secrets: tuple[str, ...]

    def __repr__(self) -> str:  # never the secrets
        return f"ClaimedDelivery(id={self.id!r}, endpoint_id={self.endpoint_id!r}, event_id={self.event_id!r})"


def claim(engine: Engine, box: SecretBox, claimed_by: str, *, now_ms: int, lease_ms: int,
          limit: int) -> list[ClaimedDelivery]:
    """Lease up to `limit` due deliveries of enabled endpoints to this worker."""
    free = or_(_D.c.lease_until_ms.is_(None), _D.c.lease_until_ms <= now_ms)
    due = (select(_D.c.id).join(_W, _W.c.id == _D.c.endpoint_id)
           .where(_D.c.state == "pending", _D.c.next_attempt_ms <= now_ms, free, _W.c.enabled.is_(True))
           .order_by(_D.c.next_attempt_ms).limit(limit))
    with engine.begin() as conn:
        ids = list(conn.scalars(due))
        if not ids:
            return []
        taken = list(conn.scalars(update(_D).where(_D.c.id.in_(ids), _D.c.state == "pending", free)
                                  .values(lease_until_ms=now_ms + lease_ms, claimed_by=claimed_by)
                                  .returning(_D.c.id)))
        rows = conn.execute(
            select(_D.c.id, _D.c.tenant_id, _D.c.endpoint_id, _D.c.event_id, _D.c.attempts, _D.c.window_start_ms,
                   _W.c.url, _W.c.secret_enc, _W.c.previous_secret_enc, _W.c.previous_valid_until, _E.c.payload)
            .join(_W, _W.c.id == _D.c.endpoint_id).join(_E, _E.c.id == _D.c.event_id)
            .where(_D.c.id.in_(taken))).mappings().all() if taken else []
    now = datetime.fromtimestamp(now_ms / 1000, UTC)
    return [ClaimedDelivery(r["id"], r["tenant_id"], r["endpoint_id"], r["event_id"], r["url"], dict(r["payload"]),
                            r["attempts"], r["window_start_ms"], _secrets(box, r, now)) for r in rows]


def _secrets(box: SecretBox, row: Any, now: datetime) -> tuple[str, ...]:
    current = box.decrypt(row["secret_enc"])
    until = row["previous_valid_until"]
    if row["previous_secret_enc"] is None or until is None or _utc(until) <= now:
        return (current,)
    return current, box.decrypt(row["previous_secret_enc"])


def _utc(value: datetime) -> datetime:
    return value if value.tzinfo else value.replace(tzinfo=UTC)


def record(engine: Engine, settings: Settings, delivery: ClaimedDelivery, answer: WebhookAnswer, claimed_by: str,
           *, started_at: datetime, rng: random.Random | None = None) -> str:
    """Write one attempt and the delivery's next state; returns it (delivered, pending, failed or lost)."""
    now_ms = int(datetime.now(UTC).timestamp() * 1000)
    attempts = delivery.attempts + 1
    values: dict[str, Any] = {"attempts": attempts, "last_status": answer.status, "last_error": answer.error,
                              "lease_until_ms": None, "claimed_by": None}
    if answer.delivered:
        state = "delivered"
        values |= {"state": state, "delivered_at": datetime.now(UTC)}
    elif now_ms - delivery.window_start_ms >= settings.webhook_retry_for_s * 1000:
        state = "failed"
        values["state"] = state
    else:
        state = "pending"
        values["next_attempt_ms"] = now_ms + compute_backoff(attempts, base_ms=settings.webhook_backoff_base_ms,
                                                             cap_ms=settings.webhook_backoff_cap_ms, rng=rng)
    with engine.begin() as conn:
        conn.execute(insert(_A).values(delivery_id=delivery.id, tenant_id=delivery.tenant_id, started_at=started_at,
                                       status_code=answer.status, error=answer.error, latency_ms=answer.latency_ms,
                                       worker=claimed_by))
        mine = conn.execute(update(_D).where(_D.c.id == delivery.id, _D.c.state == "pending",
                                             _D.c.claimed_by == claimed_by).values(**values)).rowcount
        if not mine:
            return "lost"  # the lease ran out and another worker holds it now; the attempt is still logged
        if state == "failed":
            disable_endpoint(conn, settings, delivery.endpoint_id,
                             f"deliveries failed for {settings.webhook_retry_for_s / 3600:g} h; last: "
                             f"{answer.error or answer.status}")
    return state


def disable_endpoint(conn: Connection, settings: Settings, endpoint_id: str, reason: str) -> bool:
    """Disable an endpoint, fail its pending deliveries, record the event and email the admin contact."""
    now = datetime.now(UTC)
    endpoint = conn.execute(update(_W).where(_W.c.id == endpoint_id, _W.c.enabled.is_(True))
                            .values(enabled=False, disabled_reason=reason[:500], updated_at=now)
                            .returning(_W.c.tenant_id, _W.c.url)).first()
    if endpoint is None:
        return False  # already disabled (by another worker's exhausted delivery, or its admin)
    conn.execute(update(_D).where(_D.c.endpoint_id == endpoint_id, _D.c.state == "pending")
                 .values(state="failed", last_error="endpoint disabled", lease_until_ms=None, claimed_by=None))
    contact = conn.scalar(select(_P.c.admin_contact_email).where(_P.c.tenant_id == endpoint.tenant_id,
                                                                  _P.c.active.is_(True))
                          .order_by(_P.c.version.desc()).limit(1))
    emailed = ""
    if contact:
        message = {"to": [contact], "subject": "Your webhook endpoint was disabled", "body_type": "text",
                   "body": f"The webhook endpoint {endpoint.url} (id {endpoint_id}) was disabled: {reason}.\n\n"
                           "Fix the receiver, enable the endpoint again in Settings > Webhooks, then replay the "
                           "failed deliveries from its delivery log.\n"}
        nid = Producer(conn.engine, settings).enqueue_platform_mail(
            conn, message, f"webhook-disabled:{endpoint_id}:{int(now.timestamp() * 1000)}")
        emailed = f"; emailed {contact} (notification {nid})"
    insert_event(conn, endpoint.tenant_id, DISABLED_EVENT, code=endpoint_id, detail=f"{reason}{emailed}",
                 actor="webhooks")
    return True
