"""Named senders: the mailboxes one tenant's Microsoft 365 app sends from.

A tenant's Graph provider has a `default` sender (the provider's `sender_address`, `sender_name` and
`reply_to` columns, as before there were several) and may add named ones (`security`, `billing`), each
with its own address, display name, reply-to and daily recipient limit, all under the same app
credential. They are stored with the provider version (`provider_config.senders`, JSON, the whole
map including `default`), so a save, a revert and a restore carry them and the history names them.
A version stored before named senders existed has no `senders` value: its `default` is read from the
columns (`senders_of`), so single-sender configurations work unchanged.

A notification names its sender (`message.sender`, absent means `default`); the producer rejects a
name the tenant's provider in force does not have (`sender_addresses`) and stamps the row with the
address it names, so the dispatcher can hold back only that mailbox's rows after a 429. The platform default has one
sender, the platform's no-reply address: a tenant on it can only name `default`.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from sqlalchemy import Connection, func, select

from shared.errors import ValidationFailed
from shared.models import ProviderConfig

DEFAULT_SENDER = "default"
MAX_SENDERS = 20
MAX_DAILY_RECIPIENT_LIMIT = 1_000_000
SENDER_NAME = re.compile(r"^[a-z][a-z0-9_-]{0,31}$")
_P = ProviderConfig.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class SenderIdentity:
    """One sender mailbox of a tenant's app; `daily_recipient_limit` None means the platform's default."""

    name: str
    address: str
    display_name: str | None = None
    reply_to: str | None = None
    daily_recipient_limit: int | None = None

    def stored(self) -> dict[str, Any]:
        """The JSON form kept in `provider_config.senders` (without the name, which is the key)."""
        out = asdict(self)
        del out["name"]
        return out


def check_sender_name(value: object, field: str) -> str:
    """A sender name: 1-32 lowercase letters, digits, `_` or `-`, starting with a letter."""
    if not isinstance(value, str) or not SENDER_NAME.fullmatch(value):
        raise ValidationFailed(field, "must be a sender name: 1-32 of a-z, 0-9, _ and -, starting with a letter")
    return value


def check_daily_limit(value: object, field: str) -> int | None:
    """A daily recipient limit: a whole number 1..MAX_DAILY_RECIPIENT_LIMIT, or None."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value.strip())
    if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= MAX_DAILY_RECIPIENT_LIMIT:
        raise ValidationFailed(field, f"must be a whole number from 1 to {MAX_DAILY_RECIPIENT_LIMIT}")
    return value


def senders_of(row: ProviderConfig) -> dict[str, SenderIdentity]:
    """Every sender of a stored Graph version, `default` first; read from the columns when the
    version predates named senders. A platform version has none."""
    return _senders(row.kind, row.sender_address, row.sender_name, row.reply_to, row.senders)


def _senders(kind: str, address: str | None, display_name: str | None, reply_to: str | None,
             stored: Mapping[str, Any] | None) -> dict[str, SenderIdentity]:
    if kind != "graph" or not address:
        return {}
    default = SenderIdentity(DEFAULT_SENDER, address, display_name, reply_to)
    stored = stored or {}
    out = {DEFAULT_SENDER: _from_stored(DEFAULT_SENDER, stored[DEFAULT_SENDER]) if DEFAULT_SENDER in stored
           else default}
    out.update((name, _from_stored(name, value)) for name, value in stored.items() if name != DEFAULT_SENDER)
    return out


def stored_senders(senders: Iterable[SenderIdentity]) -> dict[str, dict[str, Any]]:
    """The JSON map `provider_config.senders` holds."""
    return {s.name: s.stored() for s in senders}


def changed_senders(before: Mapping[str, SenderIdentity], after: Mapping[str, SenderIdentity]) -> list[str]:
    """History field names of the senders added, removed or changed: `senders.security`."""
    return [f"senders.{name}" for name in sorted(set(before) | set(after)) if before.get(name) != after.get(name)]


def sender_addresses(conn: Connection, tenant_ids: Iterable[str]) -> dict[str, dict[str, str]]:
    """For each tenant on its own Graph app, its senders in force by name → address; tenants on the
    platform default (or with nothing configured) are left out. One query."""
    tenants = sorted(set(tenant_ids))
    if not tenants:
        return {}
    latest = (select(_P.c.tenant_id, func.max(_P.c.version).label("v"))
              .where(_P.c.tenant_id.in_(tenants), _P.c.active.is_(True)).group_by(_P.c.tenant_id).subquery())
    query = select(_P.c.tenant_id, _P.c.kind, _P.c.sender_address, _P.c.senders).join(
        latest, (_P.c.tenant_id == latest.c.tenant_id) & (_P.c.version == latest.c.v))
    out: dict[str, dict[str, str]] = {}
    for tenant_id, kind, address, senders in conn.execute(query):
        if named := _senders(kind, address, None, None, senders):
            out[tenant_id] = {name: s.address.lower() for name, s in named.items()}
    return out


def _from_stored(name: str, value: Mapping[str, Any]) -> SenderIdentity:
    return SenderIdentity(name, value["address"], value.get("display_name"), value.get("reply_to"),
                          value.get("daily_recipient_limit"))
