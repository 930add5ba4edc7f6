"""Producer API: validate notifications and commit them to the outbox table.

Once `enqueue` returns, the notification is in the database and will be delivered: the producer
never talks to Redis or the broker, so neither being down nor losing its data can lose a
notification. The dispatcher (worker.dispatcher) publishes what is due.

Fairness starts here: each tenant's notifications get a `fair_rank` on a per-tenant virtual
clock (`fair_spacing_ms` apart), so one tenant enqueuing 50,000 at once spreads them into the
future and other tenants' notifications sort in between.
"""

from __future__ import annotations

import re
import time
from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import Connection, Engine, func, insert, select, tuple_
from sqlalchemy.dialects.postgresql import insert as pg_insert
from sqlalchemy.dialects.sqlite import insert as sqlite_insert

from shared.attachments import detach_uploads, store_uploads
from shared.errors import ValidationFailed
from shared.ids import new_id
from shared.message import Message, message_to_dict, parse_message
from shared.models import ACTIVE_STATES, Notification, NotificationRecipient, ProviderConfig, State
from shared.recipients import recipients_of
from shared.senders import DEFAULT_SENDER, sender_addresses
from shared.settings import Settings

_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
# Tenant id of mail the platform itself sends (expiry reminders to tenant admins); it always goes
# through the platform default provider. No producer can use it: tenant ids start with a letter or digit.
PLATFORM_TENANT_KEY = "__platform__"
_KEY_MAX = 200
_TABLE = Notification.__table__  # type: ignore[attr-defined]
_RECIPIENTS = NotificationRecipient.__table__  # type: ignore[attr-defined]
_PROVIDERS = ProviderConfig.__table__  # type: ignore[attr-defined]
READWRITE_FIX = (
    "the tenant's app needs the Mail.ReadWrite application permission for attachments of 3 MiB or more "
    "(Graph takes them through a draft and an upload session): in Entra ID > App registrations > API "
    "permissions add Microsoft Graph > Application permissions > Mail.ReadWrite and grant admin consent, limit "
    "it to the sender mailboxes with the Application Access Policy (or the Exchange RBAC for Applications role "
    "\"Application Mail.ReadWrite\"), then save the email provider again so its token shows the permission")


@dataclass(frozen=True, slots=True)
class EnqueueItem:
    """One notification for `enqueue_many`."""

    tenant_id: str
    message: Mapping[str, Any] | Message
    idempotency_key: str | None = None


class Producer:
    """Enqueues notifications into the outbox table."""

    def __init__(self, engine: Engine, settings: Settings) -> None:
        self._engine = engine
        self._spacing_ms = settings.fair_spacing_ms

    def enqueue(self, tenant_id: str, message: Mapping[str, Any] | Message,
                idempotency_key: str | None = None) -> str:
        """Validate and store one notification; returns its id (the existing id for a repeated key)."""
        return self.enqueue_many([EnqueueItem(tenant_id, message, idempotency_key)])[0]

    def enqueue_many(self, items: Iterable[EnqueueItem | tuple[Any, ...]]) -> list[str]:
        """Validate all, then store all in one transaction; ids in input order.

        Nothing is stored when any item is invalid; the ValidationFailed names it (`[3].to[0]`).
        """
        rows = [self._row(i, _as_item(i, raw)) for i, raw in enumerate(items)]
        if not rows:
            return []
        ids = [r["id"] for r in rows]
        blobs = {r["id"]: b for r in rows if (b := r.pop("_blobs"))}
        with self._engine.begin() as conn:
            _stamp_senders(conn, rows)
            _check_uploads(conn, rows, blobs)
            self._assign_ranks(conn, rows)
            conn.execute(self._insert_stmt(), rows)
            keyed = [(r["tenant_id"], r["idempotency_key"]) for r in rows if r["idempotency_key"]]
            if keyed:
                existing = dict(((t, k), nid) for t, k, nid in conn.execute(
                    select(_TABLE.c.tenant_id, _TABLE.c.idempotency_key, _TABLE.c.id)
                    .where(tuple_(_TABLE.c.tenant_id, _TABLE.c.idempotency_key).in_(keyed))
                ))
                ids = [existing.get((r["tenant_id"], r["idempotency_key"]), r["id"]) for r in rows]
            # Only rows stored now: a repeated idempotency key kept the first notification and its recipients.
            stored = [r for r, nid in zip(rows, ids, strict=True) if r["id"] == nid]
            _store_recipients(conn, stored)
            for r in stored:
                store_uploads(conn, r["id"], blobs.get(r["id"], ()))
        return ids

    def enqueue_platform_mail(self, conn: Connection, message: Mapping[str, Any], idempotency_key: str) -> str:
        """Enqueue mail of the platform itself inside the caller's transaction (`conn`), under
        PLATFORM_TENANT_KEY; returns its id. It commits, or not, with the caller's other writes."""
        row = self._row(0, EnqueueItem(PLATFORM_TENANT_KEY, message, idempotency_key), platform=True)
        if row.pop("_blobs"):
            raise ValidationFailed("[0].message.attachments", "platform mail carries no attachment of 3 MiB or more")
        self._assign_ranks(conn, [row])
        conn.execute(self._insert_stmt(), [row])
        existing = conn.execute(select(_TABLE.c.id).where(_TABLE.c.tenant_id == PLATFORM_TENANT_KEY,
                                                          _TABLE.c.idempotency_key == idempotency_key)).scalar()
        if existing in (None, row["id"]):
            _store_recipients(conn, [row])
        return str(existing or row["id"])

    def _row(self, index: int, item: EnqueueItem, *, platform: bool = False) -> dict[str, Any]:
        tenant_id = PLATFORM_TENANT_KEY if platform else _check_tenant(index, item.tenant_id)
        key = _check_key(index, item.idempotency_key)
        try:
            message = item.message if isinstance(item.message, Message) else parse_message(item.message)
        except ValidationFailed as exc:
            field = f"[{index}].message" if exc.field == "message" else f"[{index}].message.{exc.field}"
            raise ValidationFailed(field, exc.reason) from None
        now = datetime.now(UTC)
        payload, blobs = detach_uploads(message_to_dict(message))
        return {
            "id": new_id(), "tenant_id": tenant_id, "idempotency_key": key, "state": State.QUEUED.value,
            "payload": payload, "_blobs": blobs, "created_at": now, "updated_at": now,
            "fair_rank": 0, "next_attempt_ms": int(now.timestamp() * 1000), "dispatch_lease_until_ms": None,
            "send_lease_until_ms": None, "sender": None,
            "attempts": 0, "ambiguous_count": 0, "possible_duplicate": False,
        }

    def _assign_ranks(self, conn: Any, rows: Sequence[dict[str, Any]]) -> None:
        by_tenant: dict[str, list[dict[str, Any]]] = defaultdict(list)
        for r in rows:
            by_tenant[r["tenant_id"]].append(r)
        last = dict(conn.execute(
            select(_TABLE.c.tenant_id, func.max(_TABLE.c.fair_rank))
            .where(_TABLE.c.tenant_id.in_(list(by_tenant)), _TABLE.c.state.in_(ACTIVE_STATES))
            .group_by(_TABLE.c.tenant_id)
        ).all())
        now_ms = int(time.time() * 1000)
        for tenant_id, tenant_rows in by_tenant.items():
            start = max(now_ms, (last.get(tenant_id) or 0) + self._spacing_ms)
            for i, r in enumerate(tenant_rows):
                r["fair_rank"] = start + i * self._spacing_ms

    def _insert_stmt(self) -> Any:
        dialect = self._engine.dialect.name
        if dialect == "postgresql":
            return pg_insert(_TABLE).on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        if dialect == "sqlite":
            return sqlite_insert(_TABLE).on_conflict_do_nothing(index_elements=["tenant_id", "idempotency_key"])
        return insert(_TABLE)


def _store_recipients(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """The normalized recipients of newly stored notifications (the activity's recipient index)."""
    values = [{"notification_id": r["id"], "tenant_id": r["tenant_id"], "address": address}
              for r in rows for address in recipients_of(r["payload"])]
    if values:
        conn.execute(insert(_RECIPIENTS), values)


def _stamp_senders(conn: Connection, rows: Sequence[dict[str, Any]]) -> None:
    """Check each row's named sender against its tenant's provider in force (in the insert's
    transaction, so nothing is stored when one is unknown) and stamp the row with its address.
    `default` always exists; a tenant on the platform default has no other."""
    known = sender_addresses(conn, {r["tenant_id"] for r in rows})
    for i, r in enumerate(rows):
        name = r["payload"].get("sender", DEFAULT_SENDER)
        address = known.get(r["tenant_id"], {}).get(name)
        if address is None and name != DEFAULT_SENDER:
            raise ValidationFailed(f"[{i}].message.sender", f"the tenant has no sender named {name!r}")
        r["sender"] = address


def _check_uploads(conn: Connection, rows: Sequence[dict[str, Any]], blobs: Mapping[str, Any]) -> None:
    """Attachments of 3 MiB or more go through a Graph draft and upload session, which need Mail.ReadWrite:
    their tenant's provider in force must be its own Graph app whose token showed it at save."""
    tenants = sorted({r["tenant_id"] for r in rows if r["id"] in blobs})
    if not tenants:
        return
    latest = (select(_PROVIDERS.c.tenant_id, func.max(_PROVIDERS.c.version).label("v"))
              .where(_PROVIDERS.c.tenant_id.in_(tenants), _PROVIDERS.c.active.is_(True))
              .group_by(_PROVIDERS.c.tenant_id).subquery())
    allowed = set(conn.execute(select(_PROVIDERS.c.tenant_id).join(
        latest, (_PROVIDERS.c.tenant_id == latest.c.tenant_id) & (_PROVIDERS.c.version == latest.c.v))
        .where(_PROVIDERS.c.kind == "graph", _PROVIDERS.c.mail_readwrite.is_(True))).scalars())
    for i, r in enumerate(rows):
        if r["id"] in blobs and r["tenant_id"] not in allowed:
            position = blobs[r["id"]][0]["position"]
            raise ValidationFailed(f"[{i}].message.attachments[{position}]", READWRITE_FIX)


def _as_item(index: int, raw: EnqueueItem | tuple[Any, ...]) -> EnqueueItem:
    if isinstance(raw, EnqueueItem):
        return raw
    if isinstance(raw, tuple) and 2 <= len(raw) <= 3:
        return EnqueueItem(*raw)
    raise ValidationFailed(f"[{index}]", "must be an EnqueueItem or a (tenant_id, message[, key]) tuple")


def _check_tenant(index: int, tenant_id: object) -> str:
    if not isinstance(tenant_id, str) or not _TENANT_RE.fullmatch(tenant_id):
        raise ValidationFailed(f"[{index}].tenant_id", "must be 1-64 characters of letters, digits, . _ : -")
    return tenant_id


def _check_key(index: int, key: object) -> str | None:
    if key is None:
        return None
    if not isinstance(key, str) or not key or len(key) > _KEY_MAX or not key.isprintable():
        raise ValidationFailed(f"[{index}].idempotency_key", f"must be 1-{_KEY_MAX} printable characters")
    return key
