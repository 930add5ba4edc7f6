"""Retention: the purge removes finished notifications past the retention age, and nothing else."""

from __future__ import annotations

import time
from datetime import UTC, datetime, timedelta

from sqlalchemy import insert, select, update

from shared import models
from shared.db import make_engine
from shared.producer import Producer
from shared.settings import Settings
from worker.store import purge_finished

State = models.State
_N, _A, _R, _WE, _WD, _WA = (m.__table__ for m in (  # type: ignore[attr-defined]
    models.Notification, models.DeliveryAttempt, models.NotificationRecipient, models.WebhookEvent,
    models.WebhookDelivery, models.WebhookAttempt))


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


def test_purge_takes_recipients_and_finished_webhook_history_of_its_age(database_url: str) -> None:
    # given an old sent notification and a young one (with their recipients), and webhook events: an old one
    # delivered (with an attempt), an old one still pending for one endpoint, a young delivered one
    settings = Settings(database_url=database_url)
    engine = make_engine(settings)
    producer = Producer(engine, settings)
    old_sent, young_sent = (producer.enqueue("acme", {"to": [f"{n}@example.org"], "cc": ["c@example.org"]})
                            for n in ("old", "young"))
    old = datetime.now(UTC) - timedelta(days=100)
    now = datetime.now(UTC)
    with engine.begin() as conn:
        conn.execute(update(_N).where(_N.c.id == old_sent).values(state=State.SENT.value, created_at=old))
        conn.execute(update(_N).where(_N.c.id == young_sent).values(state=State.SENT.value))
        for event, at, states in (("ev_old_done", old, ("delivered", "failed")), ("ev_old_pending", old,
                                                                                  ("delivered", "pending")),
                                  ("ev_young", now, ("delivered",))):
            conn.execute(insert(_WE).values(id=event, tenant_id="acme", type="notification.sent",
                                            payload={"data": {"id": old_sent}}, created_at=at))
            for i, state in enumerate(states):
                conn.execute(insert(_WD).values(id=f"{event}_d{i}", event_id=event, endpoint_id=f"ep{i}",
                                                tenant_id="acme", state=state, next_attempt_ms=0, window_start_ms=0,
                                                created_at=at))
                conn.execute(insert(_WA).values(delivery_id=f"{event}_d{i}", tenant_id="acme", started_at=at,
                                                status_code=200))

    # when the purge runs with a 90-day retention
    purge_finished(engine, int((time.time() - 90 * 86400) * 1000), chunk=1)

    # then the old notification's recipients and the old finished event (its deliveries, attempts) are gone
    with engine.connect() as conn:
        recipients = set(conn.execute(select(_R.c.notification_id, _R.c.address)).all())
        events = set(conn.execute(select(_WE.c.id)).scalars())
        deliveries = set(conn.execute(select(_WD.c.id)).scalars())
        attempts = set(conn.execute(select(_WA.c.delivery_id)).scalars())
    assert recipients == {(young_sent, "young@example.org"), (young_sent, "c@example.org")}
    assert events == {"ev_old_pending", "ev_young"}
    assert deliveries == attempts == {"ev_old_pending_d0", "ev_old_pending_d1", "ev_young_d0"}
    engine.dispose()
