"""Credential expiry reminders, 30 and 7 days before the recorded expiry of a secret or certificate.

`send_due_reminders` is what the beat's task runs. For each tenant's provider in force whose
credential expires within the next 30 days (and has not expired yet), every threshold it has
crossed without a reminder gets an `expiry_reminder` row; in the same transaction go the activity
event and, when the configuration names an admin contact, the reminder email: a notification of
the platform itself (tenant `PLATFORM_TENANT_KEY`), which the workers deliver through the platform
default's SMTP relay with the usual retries. The unique (tenant, version, threshold) constraint is
what makes it happen once: a second beat run, or a retried task, fails that insert and rolls back
everything it would have added. A new secret or certificate is a new version, so it gets its own
reminders.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import UTC, datetime, timedelta

import structlog
from sqlalchemy import Engine, func, insert, select
from sqlalchemy.exc import IntegrityError

from shared.clock import as_utc
from shared.events import insert_event
from shared.models import ExpiryReminder, ProviderConfig
from shared.producer import Producer
from shared.settings import Settings
from shared.webhooks import credential_expiring_event, emit

THRESHOLDS_DAYS = (30, 7)
EVENT_KIND = "credential_expiry_reminder"
_P = ProviderConfig.__table__  # type: ignore[attr-defined]
_R = ExpiryReminder.__table__  # type: ignore[attr-defined]
log = structlog.get_logger(__name__)


@dataclass(frozen=True, slots=True)
class Expiring:
    """A provider version in force whose credential expires soon."""

    tenant_id: str
    version: int
    expires_at: datetime
    credential_type: str
    identity: str  # "••••abcd" or the certificate thumbprint
    client_id: str
    admin_contact_email: str | None


def send_due_reminders(engine: Engine, settings: Settings, *, now: datetime | None = None) -> int:
    """Record (and email) every reminder now due; returns how many this call recorded."""
    moment = now or datetime.now(UTC)
    done = 0
    for item in expiring(engine, moment):
        days_left = (item.expires_at - moment).total_seconds() / 86400
        due = [t for t in THRESHOLDS_DAYS if days_left <= t]
        if due and _remind(engine, settings, item, due, moment):
            done += 1
    return done


def expiring(engine: Engine, now: datetime) -> list[Expiring]:
    """Configurations in force whose recorded expiry is within the largest threshold and still ahead."""
    horizon = now + timedelta(days=max(THRESHOLDS_DAYS))
    return [item for item in credentials_in_force(engine) if now < item.expires_at <= horizon]


def credentials_in_force(engine: Engine) -> list[Expiring]:
    """Every configuration in force with a recorded credential expiry (past or future)."""
    latest = (select(_P.c.tenant_id, func.max(_P.c.version).label("v")).where(_P.c.active.is_(True))
              .group_by(_P.c.tenant_id).subquery())
    query = (select(_P).join(latest, (_P.c.tenant_id == latest.c.tenant_id) & (_P.c.version == latest.c.v))
             .where(_P.c.kind == "graph", _P.c.secret_expires_at.is_not(None)))
    out = []
    with engine.connect() as conn:
        for r in conn.execute(query).mappings():
            cert = r["credential_type"] == "certificate"
            out.append(Expiring(r["tenant_id"], r["version"], as_utc(r["secret_expires_at"]),
                                "certificate" if cert else "secret",
                                r["cert_thumbprint"] if cert else f"••••{r['secret_last4'] or ''}",
                                r["client_id"] or "", r["admin_contact_email"]))
    return out


def _remind(engine: Engine, settings: Settings, item: Expiring, due: list[int], now: datetime) -> bool:
    threshold = min(due)
    try:
        with engine.begin() as conn:
            sent = {t for (t,) in conn.execute(select(_R.c.threshold_days).where(
                _R.c.tenant_id == item.tenant_id, _R.c.config_version == item.version))}
            if set(due) <= sent:
                return False
            notification_id = None
            if item.admin_contact_email:
                notification_id = Producer(engine, settings).enqueue_platform_mail(
                    conn, reminder_message(item, now), f"expiry:{item.tenant_id}:{item.version}:{threshold}")
            conn.execute(insert(_R), [
                {"tenant_id": item.tenant_id, "config_version": item.version, "threshold_days": t,
                 "expires_at": item.expires_at, "created_at": now,
                 "notification_id": notification_id if t == threshold else None}
                for t in due if t not in sent])
            insert_event(conn, item.tenant_id, EVENT_KIND, code=f"expires_in_{threshold}_days",
                         detail=_event_detail(item, now, notification_id), actor="beat")
            emit(conn, [credential_expiring_event(item.tenant_id, item.version, item.credential_type,
                                                  item.expires_at, threshold)])  # webhooks, same transaction
    except IntegrityError:  # another beat run or a retry recorded it first; this one added nothing
        return False
    log.info("expiry.reminder", tenant_id=item.tenant_id, version=item.version, threshold_days=threshold,
             emailed=notification_id is not None)
    return True


def reminder_message(item: Expiring, now: datetime) -> dict[str, object]:
    """The email to the tenant's admin contact."""
    what = "certificate" if item.credential_type == "certificate" else "client secret"
    days = max(0, (item.expires_at - now).days)
    action = ("create a new certificate, upload its public part in Certificates & secrets > Certificates, and "
              "save the private key and certificate in Settings > Email provider" if what == "certificate" else
              "create a new client secret in Certificates & secrets and paste its Value into Settings > Email "
              "provider")
    body = (f"The {what} ({item.identity}) of the Microsoft Entra app {item.client_id} that sends your "
            f"notification email expires on {item.expires_at:%Y-%m-%d %H:%M} UTC, in {days} day(s).\n\n"
            f"Before then, {action}. When it expires, notifications stop with AADSTS"
            f"{'700027' if what == 'certificate' else '7000222'}.\n")
    return {"to": [item.admin_contact_email], "subject": f"Action needed: your email {what} expires in {days} "
                                                          "day(s)", "body": body, "body_type": "text"}


def _event_detail(item: Expiring, now: datetime, notification_id: str | None) -> str:
    what = "certificate" if item.credential_type == "certificate" else "client secret"
    head = (f"{what} {item.identity} of version {item.version} expires {item.expires_at:%Y-%m-%d} "
            f"(in {max(0, (item.expires_at - now).days)} days)")
    if notification_id is None:
        return f"{head}; no admin contact email configured, nothing emailed"
    return f"{head}; reminder emailed to {item.admin_contact_email} (notification {notification_id})"



