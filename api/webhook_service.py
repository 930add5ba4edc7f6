"""A tenant's webhook endpoints: validate, store (secret encrypted), rotate, list deliveries, replay.

Blocking functions (SQLAlchemy); the routes and the page run them in the executor. The signing secret
leaves only in the answer to a create or a rotation; it is stored with the SecretBox, and a rotation
keeps the previous one signing beside the new one until `previous_valid_until`.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, delete, func, insert, select, update

from api.errors import ApiError, not_found
from shared.clock import as_utc
from shared.errors import ValidationFailed
from shared.ids import new_id
from shared.message import check_line
from shared.models import WebhookAttempt, WebhookDelivery, WebhookEndpoint, WebhookEvent
from shared.secretbox import SecretBox
from shared.settings import Settings
from shared.webhooks import EVENT_TYPES, new_secret
from transport.webhooks import check_url

MAX_ENDPOINTS = 50
FIELDS = frozenset({"url", "description", "event_types", "enabled"})
DELIVERY_STATES = ("pending", "delivered", "failed")
_W = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_D = WebhookDelivery.__table__  # type: ignore[attr-defined]
_E = WebhookEvent.__table__  # type: ignore[attr-defined]
_A = WebhookAttempt.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class Webhooks:
    """The service, bound to a database, the secret box and the server's settings."""

    engine: Engine
    box: SecretBox
    settings: Settings

    def parse(self, body: Mapping[str, Any], *, partial: bool) -> dict[str, Any]:
        """The endpoint fields of a create (`partial=False`: url required) or an update; 422 naming the field."""
        values: dict[str, Any] = {}
        if "url" in body or not partial:
            values["url"] = check_url(body.get("url"), self.settings)
        if "description" in body:
            values["description"] = check_line(body["description"], "description", 200) or None
        if "event_types" in body or not partial:
            values["event_types"] = _event_types(body.get("event_types", list(EVENT_TYPES)))
        if "enabled" in body:
            if not isinstance(body["enabled"], bool):
                raise ValidationFailed("enabled", "must be true or false")
            values["enabled"] = body["enabled"]
        return values

    def create(self, tenant_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """A new endpoint; the answer carries its signing secret, this once."""
        values = self.parse(body, partial=False)
        secret, now = new_secret(), datetime.now(UTC)
        with self.engine.begin() as conn:
            count = conn.scalar(select(func.count()).select_from(_W).where(_W.c.tenant_id == tenant_id)) or 0
            if count >= MAX_ENDPOINTS:
                raise ValidationFailed("url", f"a tenant has at most {MAX_ENDPOINTS} endpoints")
            endpoint_id = f"ep_{new_id()}"
            conn.execute(insert(_W).values(id=endpoint_id, tenant_id=tenant_id, secret_enc=self.box.encrypt(secret),
                                           enabled=values.pop("enabled", True), created_at=now, updated_at=now,
                                           **values))
        return {**self.get(tenant_id, endpoint_id), "secret": secret}

    def list(self, tenant_id: str) -> list[dict[str, Any]]:
        """The tenant's endpoints, oldest first, without secrets."""
        with self.engine.connect() as conn:
            rows = conn.execute(select(_W).where(_W.c.tenant_id == tenant_id).order_by(_W.c.created_at, _W.c.id))
            return [_view(r) for r in rows.mappings()]

    def get(self, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
        """One endpoint of the tenant; 404 for any other."""
        with self.engine.connect() as conn:
            row = conn.execute(select(_W).where(_W.c.id == endpoint_id, _W.c.tenant_id == tenant_id)).mappings().first()
        if row is None:
            raise not_found("webhook endpoint")
        return _view(row)

    def update(self, tenant_id: str, endpoint_id: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """Change url, description, event types or enabled; enabling clears the reason it was disabled."""
        values = self.parse(body, partial=True)
        if values.get("enabled") is True:
            values["disabled_reason"] = None
        elif values.get("enabled") is False:
            values["disabled_reason"] = "disabled by an admin"
        with self.engine.begin() as conn:
            done = conn.execute(update(_W).where(_W.c.id == endpoint_id, _W.c.tenant_id == tenant_id)
                                .values(updated_at=datetime.now(UTC), **values)).rowcount
        if not done:
            raise not_found("webhook endpoint")
        return self.get(tenant_id, endpoint_id)

    def delete(self, tenant_id: str, endpoint_id: str) -> None:
        """Remove an endpoint and its deliveries and their log."""
        self.get(tenant_id, endpoint_id)
        with self.engine.begin() as conn:
            ids = select(_D.c.id).where(_D.c.endpoint_id == endpoint_id, _D.c.tenant_id == tenant_id)
            conn.execute(delete(_A).where(_A.c.delivery_id.in_(ids)))
            conn.execute(delete(_D).where(_D.c.endpoint_id == endpoint_id, _D.c.tenant_id == tenant_id))
            conn.execute(delete(_W).where(_W.c.id == endpoint_id, _W.c.tenant_id == tenant_id))

    def rotate(self, tenant_id: str, endpoint_id: str) -> dict[str, Any]:
        """A new signing secret (shown this once); the old one keeps signing beside it for the grace period."""
        secret, now = new_secret(), datetime.now(UTC)
        until = now + timedelta(seconds=self.settings.webhook_rotation_grace_s)
        with self.engine.begin() as conn:
            row = conn.execute(select(_W.c.secret_enc).where(_W.c.id == endpoint_id, _W.c.tenant_id == tenant_id)
                               .with_for_update()).first()
            if row is None:
                raise not_found("webhook endpoint")
            conn.execute(update(_W).where(_W.c.id == endpoint_id).values(
                secret_enc=self.box.encrypt(secret), previous_secret_enc=row.secret_enc, previous_valid_until=until,
                updated_at=now))
        return {**self.get(tenant_id, endpoint_id), "secret": secret}

    def deliveries(self, tenant_id: str, endpoint_id: str, *, state: str | None, cursor: str | None,
                   limit: int) -> dict[str, Any]:
        """The endpoint's delivery log, newest first, `limit` at a time (`next_cursor` for the next page)."""
        self.get(tenant_id, endpoint_id)
        query = (_deliveries_query().where(_D.c.endpoint_id == endpoint_id, _D.c.tenant_id == tenant_id)
                 .order_by(_D.c.id.desc()).limit(limit + 1))
        if state is not None:
            query = query.where(_D.c.state == state)
        if cursor is not None:
            query = query.where(_D.c.id < cursor)
        with self.engine.connect() as conn:
            rows = [_delivery_view(r) for r in conn.execute(query).mappings()]
        more = len(rows) > limit
        return {"items": rows[:limit], "next_cursor": rows[limit - 1]["id"] if more else None}

    def delivery(self, tenant_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any]:
        """One delivery with its event's payload and every attempt (status code or error, latency)."""
        with self.engine.connect() as conn:
            row = conn.execute(_deliveries_query(_E.c.payload).where(
                _D.c.id == delivery_id, _D.c.endpoint_id == endpoint_id, _D.c.tenant_id == tenant_id)
            ).mappings().first()
            if row is None:
                raise not_found("delivery")
            attempts = conn.execute(select(_A.c.started_at, _A.c.status_code, _A.c.error, _A.c.latency_ms)
                                    .where(_A.c.delivery_id == delivery_id).order_by(_A.c.id)).mappings().all()
        return {**_delivery_view(row), "payload": row["payload"],
                "attempt_log": [{**a, "started_at": _iso(a["started_at"])} for a in attempts]}

    def replay(self, tenant_id: str, endpoint_id: str, delivery_id: str) -> dict[str, Any]:
        """Send a delivery again, soon, with the same webhook-id and a fresh retry window; 409 when disabled."""
        if not self.get(tenant_id, endpoint_id)["enabled"]:
            raise ApiError(409, "endpoint_disabled", "enable the endpoint before replaying its deliveries")
        now_ms = int(datetime.now(UTC).timestamp() * 1000)
        with self.engine.begin() as conn:
            done = conn.execute(update(_D).where(_D.c.id == delivery_id, _D.c.endpoint_id == endpoint_id,
                                                 _D.c.tenant_id == tenant_id)
                                .values(state="pending", next_attempt_ms=now_ms, window_start_ms=now_ms,
                                        lease_until_ms=None, claimed_by=None)).rowcount
        if not done:
            raise not_found("delivery")
        return self.delivery(tenant_id, endpoint_id, delivery_id)


def _event_types(value: object) -> list[str]:
    if not isinstance(value, list) or not value or len(value) > len(EVENT_TYPES):
        raise ValidationFailed("event_types", f"must be a list of 1-{len(EVENT_TYPES)} event types")
    for i, item in enumerate(value):
        if item not in EVENT_TYPES:
            raise ValidationFailed(f"event_types[{i}]", f"must be one of {', '.join(EVENT_TYPES)}")
    if len(set(value)) != len(value):
        raise ValidationFailed("event_types", "must not repeat a type")
    return list(value)


def _deliveries_query(*extra: Any) -> Any:
    return select(_D.c.id, _D.c.event_id, _E.c.type, _D.c.state, _D.c.attempts, _D.c.last_status, _D.c.last_error,
                  _D.c.next_attempt_ms, _D.c.created_at, _D.c.delivered_at, *extra).join(_E, _E.c.id == _D.c.event_id)


def _delivery_view(r: Any) -> dict[str, Any]:
    pending = r["state"] == "pending"
    return {"id": r["id"], "event_id": r["event_id"], "event_type": r["type"], "state": r["state"],
            "attempts": r["attempts"], "last_status_code": r["last_status"], "last_error": r["last_error"],
            "next_attempt_at": _iso(datetime.fromtimestamp(r["next_attempt_ms"] / 1000, UTC)) if pending else None,
            "created_at": _iso(r["created_at"]), "delivered_at": _iso(r["delivered_at"])}


def _view(r: Any) -> dict[str, Any]:
    until = r["previous_valid_until"]
    rotating = until is not None and as_utc(until) > datetime.now(UTC)
    return {"id": r["id"], "url": r["url"], "description": r["description"], "event_types": list(r["event_types"]),
            "enabled": r["enabled"], "disabled_reason": r["disabled_reason"], "created_at": _iso(r["created_at"]),
            "updated_at": _iso(r["updated_at"]), "previous_secret_valid_until": _iso(until) if rotating else None}


def _iso(value: datetime | None) -> str | None:
    return as_utc(value).isoformat() if value else None
