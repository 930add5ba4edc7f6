"""The notification.* webhook events of a batch's outcomes, written in the outcome transaction.

Only final outcomes (sent, failed, ambiguous) are events, and only those this write recorded: a row
whose claim was lost (its `updated_at` is not this write's) is someone else's to report.
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import datetime
from typing import TYPE_CHECKING

from sqlalchemy import Connection, select

from shared.models import TERMINAL_STATES, Notification
from shared.webhooks import Event, emit, subscribed_tenants

if TYPE_CHECKING:
    from worker.store import RowOutcome

_N = Notification.__table__  # type: ignore[attr-defined]


def emit_outcome_events(conn: Connection, outcomes: Sequence[RowOutcome], now: datetime) -> None:
    """Inside write_outcomes' transaction: one event per final outcome of a tenant with an endpoint."""
    final = {o.row.id: o for o in outcomes if o.state.value in TERMINAL_STATES}
    tenants = subscribed_tenants(conn, (o.row.tenant_id for o in final.values()))
    final = {nid: o for nid, o in final.items() if o.row.tenant_id in tenants}
    if not final:
        return
    recorded = set(conn.scalars(select(_N.c.id).where(_N.c.id.in_(sorted(final)), _N.c.updated_at == now)))
    emit(conn, [Event(o.row.tenant_id, f"notification.{o.state.value}", _data(o))
                for nid, o in final.items() if nid in recorded])


def _data(o: RowOutcome) -> dict[str, object]:
    last = o.attempts[-1] if o.attempts else None
    return {"id": o.row.id, "state": o.state.value, "attempts": o.row.attempts + len(o.attempts),
            "error_code": last.error_code if last else None, "possible_duplicate": o.possible_duplicate,
            "provider_version": o.provider_version}
