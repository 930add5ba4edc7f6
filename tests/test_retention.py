"""Retention: the purge removes finished notifications past the retention age, and nothing else."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update

from shared.db import make_engine
from shared.models import DeliveryAttempt, Notification, State
from shared.producer import Producer
from shared.settings import Settings
from worker.store import purge_finished

_N = Notification.__table__  # type: ignore[attr-defined]
_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]


def test_purge_removes_old_finished_rows_and_their_attempts_only(database_url: str) -> None:
    # given old sent and failed rows, an old queued row, and a young sent row
    settings = Settings(database_url=database_url)
    engine = make_engine(settings)
    producer = Producer(engine, settings)
    old_sent, old_failed, old_queued, young_sent = (
        producer.enqueue("acme", {"to": ["a@example.org"], "subject": str(i)}) for i in range(4))
    old = datetime.now(UTC) - timedelta(days=100)
    with engine.begin() as conn:
        for nid, state in ((old_sent, State.SENT), (old_failed, State.FAILED), (old_queued, State.QUEUED)):
            conn.execute(update(_N).where(_N.c.id == nid).values(state=state.value, created_at=old))
        conn.execute(update(_N).where(_N.c.id == young_sent).values(state=State.SENT.value))
        conn.execute(insert(_A), [{"notification_id": nid, "tenant_id": "acme", "attempt_no": 1, "started_at": old,
                                   "outcome": "sent"} for nid in (old_sent, young_sent)])

    # when the purge runs with a 90-day retention
    purged = purge_finished(engine, int((time.time() - 90 * 86400) * 1000), chunk=1)

    # then only the old finished rows (and their attempts) are gone
    with engine.connect() as conn:
        left = set(conn.execute(select(_N.c.id)).scalars())
        attempts_left = set(conn.execute(select(_A.c.notification_id)).scalars())
    assert purged == 2
    assert left == {old_queued, young_sent}
    assert attempts_left == {young_sent}
    engine.dispose()
