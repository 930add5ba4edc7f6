"""Activity events of a tenant's email setup: config changes, credential checks, test sends, reminders.

Notifications have their own rows; these are the other things an admin's activity view shows.
Events carry codes and request ids, never secrets.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, insert, select

from shared.clock import as_utc
from shared.models import ActivityEvent

_E = ActivityEvent.__table__  # type: ignore[attr-defined]


def record_event(engine: Engine, tenant_id: str, kind: str, *, code: str | None = None, detail: str | None = None,
                 request_id: str | None = None, actor: str | None = None) -> None:
    """Append one event."""
    with engine.begin() as conn:
        insert_event(conn, tenant_id, kind, code=code, detail=detail, request_id=request_id, actor=actor)


def insert_event(conn: Connection, tenant_id: str, kind: str, *, code: str | None = None,
                 detail: str | None = None, request_id: str | None = None, actor: str | None = None,
                 sender: str | None = None) -> None:
    """Append one event inside the caller's transaction; `sender` names the sender address it concerns."""
    conn.execute(insert(_E).values(tenant_id=tenant_id, kind=kind, code=code, detail=(detail or None) and
                                   detail[:1000], request_id=request_id, actor=actor, sender=sender,
                                   created_at=datetime.now(UTC)))


def recent_events(engine: Engine, tenant_id: str, *, limit: int = 50) -> list[dict[str, Any]]:
    """The tenant's newest events first, as JSON-ready dicts."""
    query = (select(_E.c.kind, _E.c.code, _E.c.detail, _E.c.request_id, _E.c.actor, _E.c.sender, _E.c.created_at)
             .where(_E.c.tenant_id == tenant_id).order_by(_E.c.created_at.desc(), _E.c.id.desc()).limit(limit))
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{**dict(r), "created_at": _iso(r["created_at"])} for r in rows]


def _iso(value: datetime) -> str:
    return as_utc(value).isoformat()
