"""`tenantmail activity` and the demo: the activity table as fixed-width text."""

from __future__ import annotations

from typing import Any

from sqlalchemy import Engine

from shared.activity import recent_activity

_COLUMNS = [("tenant_id", 12), ("state", 9), ("attempts", 8), ("sender", 28), ("last_status", 6),
            ("last_error_code", 18), ("graph_request_id", 36), ("subject", 28)]


def format_activity(rows: list[dict[str, Any]]) -> str:
    """A fixed-width text table of activity items, then the diagnosis of each one that did not go."""
    head = "  ".join(name[:w].ljust(w) for name, w in _COLUMNS)
    lines = [head, "-" * len(head)]
    notes = []
    for r in rows:
        lines.append("  ".join(str(r.get(name) if r.get(name) is not None else "")[:w].ljust(w)
                               for name, w in _COLUMNS))
        if r.get("diagnosis"):
            notes.append(f"{r['tenant_id']} {r['id']}: {r['diagnosis']['cause']} Fix: {r['diagnosis']['fix']}")
    return "\n".join(lines + ([""] + notes if notes else []))


def print_activity(engine: Engine, *, tenant_id: str | None = None, limit: int = 50) -> None:
    """Print the activity table to stdout."""
    print(format_activity(recent_activity(engine, tenant_id=tenant_id, limit=limit)))
