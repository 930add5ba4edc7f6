"""The activity table: what dashboards and `tenantmail activity` read."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine, select

from shared.diagnosis import diagnose
from shared.models import Notification

_N = Notification.__table__  # type: ignore[attr-defined]


def recent_activity(engine: Engine, *, tenant_id: str | None = None, limit: int = 50) -> list[dict[str, Any]]:
    """The newest notifications with their state and last Graph answer."""
    query = select(_N.c.id, _N.c.tenant_id, _N.c.state, _N.c.attempts, _N.c.sender, _N.c.last_status,
                   _N.c.last_error_code, _N.c.last_error_message, _N.c.graph_request_id, _N.c.possible_duplicate,
                   _N.c.created_at, _N.c.payload).order_by(_N.c.created_at.desc(), _N.c.id.desc()).limit(limit)
    if tenant_id:
        query = query.where(_N.c.tenant_id == tenant_id)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{**{k: v for k, v in r.items() if k != "payload"}, "subject": (r["payload"] or {}).get("subject", ""),
             "diagnosis": str(diagnose(r["last_error_code"], r["last_error_message"]) or "")
             if r["state"] != "sent" else ""}
            for r in rows]


def format_activity(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of activity rows."""
    cols = [("tenant_id", 12), ("state", 9), ("attempts", 8), ("sender", 28), ("last_status", 6),
            ("last_error_code", 18), ("graph_request_id", 36), ("subject", 28)]
    head = "  ".join(name[:w].ljust(w) for name, w in cols)
    lines = [head, "-" * len(head)]
    notes = []
    for r in rows:
        lines.append("  ".join(str(r.get(name) if r.get(name) is not None else "")[:w].ljust(w) for name, w in cols))
        if r.get("diagnosis"):
            notes.append(f"{r['tenant_id']} {r['id']}: {r['diagnosis']}")
    return "\n".join(lines + ([""] + notes if notes else []))


def print_activity(engine: Engine, *, tenant_id: str | None = None, limit: int = 50) -> None:
    """Print the activity table to stdout."""
    print(format_activity(recent_activity(engine, tenant_id=tenant_id, limit=limit)))
