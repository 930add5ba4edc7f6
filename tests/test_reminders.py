"""Expiry reminders 30 and 7 days before a recorded expiry: once per (config version, threshold)."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from cryptography.fernet import Fernet
from sqlalchemy import select

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from emulator.testing import make_certificate
from shared.certificates import parse_certificate_pem
from shared.db import make_engine
from shared.models import ActivityEvent, ExpiryReminder, Notification
from shared.producer import PLATFORM_TENANT_KEY
from shared.providers import save_graph_provider
from shared.reminders import send_due_reminders
from shared.secretbox import SecretBox
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.stack import ROOT, Stack, wait_until

NOW = datetime(2027, 3, 1, 12, 0, tzinfo=UTC)
ADMIN = "it-admin@acme.example"


def _setup(database_url: str) -> tuple[Any, SecretBox, Settings]:
    settings = Settings(database_url=database_url)
    return make_engine(settings), SecretBox([Fernet.generate_key().decode()]), settings


def _save(engine: Any, box: SecretBox, *, expires_at: datetime | None, contact: str | None = ADMIN,
          tenant: str = "acme", secret: str = DEMO_CLIENT_SECRET) -> int:
    return save_graph_provider(engine, box, tenant, sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                               client_id=DEMO_CLIENT_ID, client_secret=secret, secret_expires_at=expires_at,
                               admin_contact_email=contact)


def _rows(engine: Any, model: Any, *where: Any) -> list[dict[str, Any]]:
    table = model.__table__
    with engine.connect() as conn:
        return [dict(r) for r in conn.execute(select(table).where(*where).order_by(table.c.id)).mappings()]


def _reminders(engine: Any) -> list[tuple[str, int, int, bool]]:
    return [(r["tenant_id"], r["config_version"], r["threshold_days"], r["notification_id"] is not None)
            for r in _rows(engine, ExpiryReminder)]


def test_each_threshold_reminds_once_per_config_version(database_url: str) -> None:
    engine, box, settings = _setup(database_url)
    expires = NOW + timedelta(days=40)
    version = _save(engine, box, expires_at=expires)

    counts = [send_due_reminders(engine, settings, now=expires - timedelta(days=d)) for d in (35, 29, 28, 6, 5)]

    assert counts == [0, 1, 0, 1, 0]
    assert _reminders(engine) == [("acme", version, 30, True), ("acme", version, 7, True)]
    mails = _rows(engine, Notification)
    assert [m["tenant_id"] for m in mails] == [PLATFORM_TENANT_KEY] * 2
    assert [m["payload"]["to"] for m in mails] == [[{"address": ADMIN}]] * 2
    assert "expires in 29 day(s)" in mails[0]["payload"]["subject"]
    assert f"••••{DEMO_CLIENT_SECRET[-4:]}" in mails[0]["payload"]["body"]
    assert "paste its Value" in mails[0]["payload"]["body"]
    events = _rows(engine, ActivityEvent, ActivityEvent.__table__.c.tenant_id == "acme")
    assert [e["code"] for e in events] == ["expires_in_30_days", "expires_in_7_days"]
    assert ADMIN in events[0]["detail"] and mails[0]["id"] in events[0]["detail"]


def test_a_config_saved_inside_both_thresholds_gets_one_email(database_url: str) -> None:
    engine, box, settings = _setup(database_url)
    version = _save(engine, box, expires_at=NOW + timedelta(days=5))

    assert send_due_reminders(engine, settings, now=NOW) == 1
    assert send_due_reminders(engine, settings, now=NOW + timedelta(days=1)) == 0

    assert sorted(_reminders(engine)) == [("acme", version, 7, True), ("acme", version, 30, False)]
    assert len(_rows(engine, Notification)) == 1


def test_a_new_secret_is_a_new_version_with_its_own_reminders(database_url: str) -> None:
    engine, box, settings = _setup(database_url)
    first = _save(engine, box, expires_at=NOW + timedelta(days=20))
    assert send_due_reminders(engine, settings, now=NOW) == 1

    second = _save(engine, box, expires_at=NOW + timedelta(days=25), secret="a-rotated-secret-value")

    assert send_due_reminders(engine, settings, now=NOW) == 1
    assert [(v, t) for _, v, t, _ in _reminders(engine)] == [(first, 30), (second, 30)]


def test_without_admin_contact_expired_or_platform_configs_nothing_is_emailed(database_url: str) -> None:
    engine, box, settings = _setup(database_url)
    _save(engine, box, expires_at=NOW + timedelta(days=10), contact=None, tenant="nocontact")
    _save(engine, box, expires_at=NOW - timedelta(days=1), tenant="expired")
    _save(engine, box, expires_at=None, tenant="noexpiry")

    assert send_due_reminders(engine, settings, now=NOW) == 1

    assert _reminders(engine) == [("nocontact", 1, 30, False)]
    assert _rows(engine, Notification) == []
    [event] = _rows(engine, ActivityEvent)
    assert event["tenant_id"] == "nocontact" and "no admin contact email" in event["detail"]


def test_certificate_expiry_is_its_not_after_and_the_email_names_the_thumbprint(database_url: str) -> None:
    engine, box, settings = _setup(database_url)
    key_pem, cert_pem = make_certificate(valid_days=10)
    certificate = parse_certificate_pem(key_pem + cert_pem)
    save_graph_provider(engine, box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, certificate=certificate, admin_contact_email=ADMIN)

    assert send_due_reminders(engine, settings) == 1

    [mail] = _rows(engine, Notification)
    assert certificate.thumbprint in mail["payload"]["body"] and "certificate" in mail["payload"]["subject"]
    assert "upload its public part" in mail["payload"]["body"]


def test_concurrent_runs_record_each_reminder_once(database_url: str) -> None:
    engine, box, settings = _setup(database_url)
    for i in range(5):
        _save(engine, box, expires_at=NOW + timedelta(days=6), tenant=f"t{i}")
    results: list[int] = []
    start = threading.Barrier(4)

    def run() -> None:
        runner = make_engine(settings)  # each "beat run" with its own connections
        start.wait()
        results.append(send_due_reminders(runner, settings, now=NOW))
        runner.dispose()

    threads = [threading.Thread(target=run) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(60)

    assert sum(results) == 5
    assert len(_reminders(engine)) == 10  # 30 and 7 days for each of the 5 tenants
    assert len(_rows(engine, Notification)) == 5 and len(_rows(engine, ActivityEvent)) == 5


def test_beat_running_repeatedly_emails_the_admin_once_through_the_platform_relay(
    make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any
) -> None:
    # given: a secret that expires in 20 days, with an admin contact, and a beat that checks every 0.3 s
    stack = make_stack(TENANTMAIL_EXPIRY_CHECK_INTERVAL_S="0.3")
    api = make_api(stack.settings)
    _save(stack.engine, stack.box, expires_at=datetime.now(UTC) + timedelta(days=20))
    stack.start_workers(1, concurrency=2)
    log = open(stack.log_dir / "worker-beat.log", "wb")
    beat = subprocess.Popen([sys.executable, "-m", "tenantmail", "beat"], env=stack.env, cwd=ROOT, stdout=log,
                            stderr=subprocess.STDOUT)
    try:
        # when: the beat has run the check several times
        wait_until(lambda: stack.logs().count("expiry.checked") >= 4, timeout_s=60, what="four expiry checks")
    finally:
        beat.send_signal(signal.SIGTERM)
        beat.wait(timeout=30)
        log.close()

    # then: one reminder, one event, one email to the admin through the SMTP relay
    [mail] = wait_until(lambda: [m for m in emulator.smtp_messages() if m["rcpt_tos"] == [ADMIN]],
                        what="the reminder email")
    assert "expires in 19 day(s)" in mail["subject"] or "expires in 20 day(s)" in mail["subject"]
    assert mail["mail_from"] == stack.settings.platform_sender
    assert len(emulator.smtp_messages()) == 1 and emulator.outbox() == []
    assert _reminders(stack.engine) == [("acme", 1, 30, True)]
    events = api.client("acme", "viewer").get("/v1/events").json()["items"]
    assert [(e["kind"], e["code"]) for e in events] == [("credential_expiry_reminder", "expires_in_30_days")]
