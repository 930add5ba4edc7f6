"""The notification.* webhook events of a batch's outcomes, written in the outcome transaction.

Only final outcomes (sent, failed, ambiguous) are events, and `write_outcomes` passes only the rows
its update matched: a row whose claim was lost is someone else's to report.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from sqlalchemy import Connection

from shared.models import TERMINAL_STATES
from shared.webhooks import Event, emit, subscribed_tenants

if TYPE_CHECKING:
    from worker.store import RowOutcome

def emit_outcome_events(conn: Connection, outcomes: Sequence[RowOutcome]) -> None:
    """Inside write_outcomes' transaction: one event per final outcome of a tenant with an endpoint."""
    final = {o.row.id: o for o in outcomes if o.state.value in TERMINAL_STATES}
    tenants = subscribed_tenants(conn, (o.row.tenant_id for o in final.values()))
    final = {nid: o for nid, o in final.items() if o.row.tenant_id in tenants}
    if final:
        emit(conn, [Event(o.row.tenant_id, f"notification.{o.state.value}", _data(o)) for o in final.values()])


def _data(o: RowOutcome) -> dict[str, object]:
    last = o.attempts[-1] if o.attempts else None
    return {"id": o.row.id, "state": o.state.value, "attempts": o.row.attempts + len(o.attempts),
            "error_code": last.error_code if last else None, "possible_duplicate": o.possible_duplicate,
            "provider_version": o.provider_version}
