"""The activity table, the one reader of it: filtered lists with keyset cursors, one notification, stats.

What the API, the admin page, dashboards and `tenantmail activity` read. API queries are scoped by the
caller's tenant, so another tenant's id simply is not found; only the operator's CLI lists all tenants.
Cursors are opaque: base64 of the last row's (created_at, id); pages are ordered newest first.
"""

from __future__ import annotations

import base64
import binascii
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, String, and_, cast, func, or_, select

from shared.clock import as_utc
from shared.diagnosis import diagnose
from shared.errors import ValidationFailed
from shared.models import DeliveryAttempt, Notification, State

_N = Notification.__table__  # type: ignore[attr-defined]
_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]
_LIST_COLUMNS = (_N.c.id, _N.c.tenant_id, _N.c.state, _N.c.attempts, _N.c.sender, _N.c.last_status,
                 _N.c.last_error_code, _N.c.last_error_message, _N.c.graph_request_id, _N.c.possible_duplicate,
                 _N.c.created_at, _N.c.updated_at, _N.c.sent_at, _N.c.wait_reason, _N.c.payload)


@dataclass(frozen=True, slots=True)
class ActivityFilter:
    """Filters of GET /v1/activity; None means "any"."""

    status: str | None = None
    error_code: str | None = None
    recipient: str | None = None
    since: datetime | None = None
    until: datetime | None = None


def list_activity(engine: Engine, tenant_id: str | None, filters: ActivityFilter, *, cursor: str | None,
                  limit: int) -> dict[str, Any]:
    """One page of the tenant's notifications (every tenant's when `tenant_id` is None: the operator's
    view), newest first, and the cursor of the next page."""
    query = select(*_LIST_COLUMNS).where(*_conditions(filters))
    if tenant_id is not None:
        query = query.where(_N.c.tenant_id == tenant_id)
    if cursor:
        at, nid = decode_cursor(cursor)
        query = query.where(or_(_N.c.created_at < at, and_(_N.c.created_at == at, _N.c.id < nid)))
    query = query.order_by(_N.c.created_at.desc(), _N.c.id.desc()).limit(limit + 1)
    with engine.connect() as conn:
        rows = [dict(r) for r in conn.execute(query).mappings().all()]
    more = len(rows) > limit
    rows = rows[:limit]
    return {"items": [_item(r) for r in rows],
            "next_cursor": encode_cursor(rows[-1]["created_at"], rows[-1]["id"]) if more else None}


def _conditions(f: ActivityFilter) -> list[Any]:
    out: list[Any] = []
    if f.status:
        out.append(_N.c.state == f.status)
    if f.error_code:
        out.append(_N.c.last_error_code == f.error_code)
    if f.recipient:
        out.append(func.lower(cast(_N.c.payload, String)).contains(f.recipient.lower(), autoescape=True))
    if f.since:
        out.append(_N.c.created_at >= f.since)
    if f.until:
        out.append(_N.c.created_at < f.until)
    return out


def notification_detail(engine: Engine, tenant_id: str, notification_id: str) -> dict[str, Any] | None:
    """One notification of the tenant with all its attempts, or None."""
    with engine.connect() as conn:
        row = conn.execute(select(*_LIST_COLUMNS).where(_N.c.tenant_id == tenant_id, _N.c.id == notification_id)
                           ).mappings().first()
        if row is None:
            return None
        attempts = conn.execute(select(_A).where(_A.c.notification_id == notification_id, _A.c.tenant_id == tenant_id)
                                .order_by(_A.c.id)).mappings().all()
    item = _item(dict(row))
    item["attempts"] = [{k: _json(v) for k, v in a.items() if k not in ("tenant_id", "notification_id")}
                        for a in attempts]
    return item


def stats(engine: Engine, tenant_id: str, *, window_s: int) -> dict[str, Any]:
    """Counts by state and by last error code of the tenant's notifications created in the window."""
    since = datetime.now(UTC) - timedelta(seconds=window_s)
    scope = (_N.c.tenant_id == tenant_id, _N.c.created_at >= since)
    with engine.connect() as conn:
        by_state: dict[str, int] = dict(conn.execute(
            select(_N.c.state, func.count()).where(*scope).group_by(_N.c.state)).all())
        by_code: dict[str, int] = dict(conn.execute(select(_N.c.last_error_code, func.count()).where(
            *scope, _N.c.last_error_code.is_not(None), _N.c.state != State.SENT.value).group_by(_N.c.last_error_code)
        ).all())
    return {"window_s": window_s, "since": since.isoformat(), "total": sum(by_state.values()),
            "by_status": {s.value: int(by_state.get(s.value, 0)) for s in State},
            "by_error_code": {str(k): int(v) for k, v in sorted(by_code.items(), key=lambda kv: -kv[1])}}


def _item(r: dict[str, Any]) -> dict[str, Any]:
    payload = r.pop("payload") or {}
    out = {k: _json(v) for k, v in r.items()}
    out["subject"] = payload.get("subject", "")
    out["to"] = [t["address"] if isinstance(t, dict) else t for t in payload.get("to", [])]
    diagnosis = diagnose(r["last_error_code"], r["last_error_message"]) if r["state"] != State.SENT.value else None
    out["diagnosis"] = {"cause": diagnosis.cause, "fix": diagnosis.fix} if diagnosis else None
    return out


def _json(value: Any) -> Any:
    return as_utc(value).isoformat() if isinstance(value, datetime) else value


def encode_cursor(created_at: datetime, notification_id: str) -> str:
    """The opaque cursor after (created_at, id)."""
    return base64.urlsafe_b64encode(f"{as_utc(created_at).isoformat()}|{notification_id}".encode()).decode()


def decode_cursor(cursor: str) -> tuple[datetime, str]:
    """(created_at, id) of a cursor; ValidationFailed naming `cursor` when it is not one of ours."""
    try:
        at, nid = base64.urlsafe_b64decode(cursor.encode()).decode().split("|", 1)
        if not nid.isprintable():  # a forged cursor; PostgreSQL cannot compare a text holding NUL
            raise ValueError(nid)
        return as_utc(datetime.fromisoformat(at)), nid
    except (ValueError, binascii.Error, UnicodeDecodeError):
        raise ValidationFailed("cursor", "is not a cursor returned by this API") from None


def recent_activity(engine: Engine, *, tenant_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest notifications (of one tenant, or all), as `list_activity` items."""
    items: list[dict[str, Any]] = list_activity(engine, tenant_id, ActivityFilter(), cursor=None, limit=limit)["items"]
    return items
