"""Webhook events: the outbox they are written to, and how a delivery is signed (Standard Webhooks).

`emit(conn, events)` runs inside the transaction of what caused the events (an outcome write, a
provider save, an expiry reminder): the event rows and one delivery row per subscribed, enabled
endpoint commit with it or not at all, so a process that dies loses nothing and invents nothing.
Events of tenants with no endpoint listening are not stored.

Every delivery of an event carries the event's id as `webhook-id` (stable across retries and
replays, so receivers drop duplicates), the attempt's `webhook-timestamp`, and `webhook-signature`:
`v1,<base64 HMAC-SHA256 of "id.timestamp.body">` under the endpoint's secret, followed by one under
the previous secret while a rotation's grace period lasts (the spec allows several, space-separated).
"""

from __future__ import annotations

import base64
import secrets
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import orjson
from sqlalchemy import Connection, insert, select
from standardwebhooks import Webhook

from shared.ids import new_id
from shared.models import ProviderConfig, WebhookDelivery, WebhookEndpoint, WebhookEvent

EVENT_TYPES: tuple[str, ...] = ("notification.sent", "notification.failed", "notification.ambiguous",
                                "notification.held", "notification.released", "provider.saved",
                                "credential.expiring")
SECRET_PREFIX = "whsec_"
_W = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_E = WebhookEvent.__table__  # type: ignore[attr-defined]
_D = WebhookDelivery.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Event:
    """Something a tenant's endpoints may hear about: its type and its `data` (ids and codes, never secrets)."""

    tenant_id: str
    type: str
    data: dict[str, Any] = field(default_factory=dict)


def subscribed_tenants(conn: Connection, tenant_ids: Iterable[str]) -> set[str]:
    """Which of these tenants have an enabled endpoint (cheap: callers skip building events otherwise)."""
    wanted = sorted(set(tenant_ids))
    if not wanted:
        return set()
    return set(conn.scalars(select(_W.c.tenant_id).distinct().where(_W.c.tenant_id.in_(wanted),
                                                                     _W.c.enabled.is_(True))))


def emit(conn: Connection, events: Sequence[Event]) -> list[str]:
    """Store `events` and their deliveries in the caller's transaction; returns the ids of stored events."""
    unknown = sorted({e.type for e in events} - set(EVENT_TYPES))
    if unknown:
        raise ValueError(f"unknown webhook event types: {unknown}")
    endpoints: dict[str, list[tuple[str, list[str]]]] = {}
    tenants = subscribed_tenants(conn, (e.tenant_id for e in events))
    if not tenants:
        return []
    for eid, tenant_id, types in conn.execute(select(_W.c.id, _W.c.tenant_id, _W.c.event_types)
                                              .where(_W.c.tenant_id.in_(sorted(tenants)), _W.c.enabled.is_(True))):
        endpoints.setdefault(tenant_id, []).append((eid, list(types)))
    now = datetime.now(UTC)
    now_ms = int(now.timestamp() * 1000)
    event_rows: list[dict[str, Any]] = []
    delivery_rows: list[dict[str, Any]] = []
    for event in events:
        targets = [eid for eid, types in endpoints.get(event.tenant_id, ()) if event.type in types]
        if not targets:
            continue
        msg_id = f"msg_{new_id(now_ms)}"
        event_rows.append({"id": msg_id, "tenant_id": event.tenant_id, "type": event.type, "created_at": now,
                           "payload": {"type": event.type, "timestamp": now.isoformat(), "data": event.data}})
        delivery_rows += [{"id": new_id(now_ms), "event_id": msg_id, "endpoint_id": target,
                           "tenant_id": event.tenant_id, "state": "pending", "attempts": 0,
                           "next_attempt_ms": now_ms, "window_start_ms": now_ms,
                           "created_at": now} for target in targets]
    if event_rows:
        conn.execute(insert(_E), event_rows)
        conn.execute(insert(_D), delivery_rows)
    return [r["id"] for r in event_rows]


def provider_saved_event(row: ProviderConfig, action: str, changed_fields: list[str]) -> Event:
    """provider.saved: a new version of the tenant's provider (saved, or reverted to the platform default)."""
    return Event(row.tenant_id, "provider.saved", {
        "version": row.version, "action": action, "provider": "platform" if row.kind == "platform" else "customer",
        "changed_fields": changed_fields, "actor": row.created_by})


def credential_expiring_event(tenant_id: str, version: int, credential_type: str, expires_at: datetime,
                              threshold_days: int) -> Event:
    """credential.expiring: the provider's secret or certificate expires within `threshold_days`."""
    return Event(tenant_id, "credential.expiring", {
        "version": version, "credential_type": credential_type, "expires_at": expires_at.isoformat(),
        "threshold_days": threshold_days})


def new_secret() -> str:
    """A signing secret as receivers paste it: `whsec_` and 32 random bytes in base64."""
    return SECRET_PREFIX + base64.b64encode(secrets.token_bytes(32)).decode()


def body_bytes(payload: dict[str, Any]) -> bytes:
    """The exact bytes sent (and signed) for an event's payload."""
    return orjson.dumps(payload)


def signature_header(signing_secrets: Sequence[str], msg_id: str, at: datetime, body: bytes) -> str:
    """`webhook-signature`: one `v1,…` per secret, newest first, space-separated."""
    text = body.decode()
    return " ".join(Webhook(s).sign(msg_id, at, text) for s in signing_secrets)


def signed_headers(signing_secrets: Sequence[str], msg_id: str, at: datetime, body: bytes) -> dict[str, str]:
    """The Standard Webhooks headers of one attempt sent at `at`."""
    return {"webhook-id": msg_id, "webhook-timestamp": str(int(at.timestamp())),
            "webhook-signature": signature_header(signing_secrets, msg_id, at, body),
            "content-type": "application/json"}
