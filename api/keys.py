"""API keys: `tm_<id>_<secret>`, stored as the sha256 of the whole key, with one role.

A key of the admin, sender or viewer role is bound to one tenant. A `service` key (application
services, created from the CLI) is bound to a list of tenants or to all of them, and names the
tenant it acts for on each request (`X-Tenant-Id`); it may read and enqueue, never administer.
The key is shown once, when created. Lookups go by the public id and compare digests in constant
time; an expired or revoked key is refused. `last_used_at` is written at most once a minute per key.

A `platform_viewer` key (the platform's own operators' dashboards, created from the CLI) is bound like
a service key; it reads only. Without `X-Tenant-Id` it may read the cross-tenant time series (the
`platform` permission) and nothing else; naming a tenant of its list it reads that tenant as a viewer.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, insert, select

from api.errors import ApiError
from shared.clock import as_utc
from shared.errors import ValidationFailed
from shared.models import ApiKey

ROLES = ("admin", "sender", "viewer", "service", "platform_viewer")
TENANT_ROLES = ROLES[:3]
PLATFORM_ROLES = ROLES[3:]  # bound to a list of tenants (or all), not one
ALL_TENANTS = "*"
_KEY_RE = re.compile(r"^tm_([a-z0-9]{12})_([A-Za-z0-9_-]{32,64})$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_K = ApiKey.__table__  # type: ignore[attr-defined]
_LAST_USED_EVERY = timedelta(seconds=60)

# What each role may do; every role may read its tenant's data.
_ALLOWED = {"admin": {"read", "send", "admin"}, "sender": {"read", "send"}, "viewer": {"read"},
            "service": {"read", "send"}, "platform_viewer": {"read", "platform"}}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, the tenant it acts for and its role (`tenants`: a service key's list)."""

    key_id: str
    tenant_id: str
    role: str
    tenants: tuple[str, ...] | None = None

    def may(self, permission: str) -> bool:
        """True when the role grants `permission` (read, send or admin)."""
        return permission in _ALLOWED.get(self.role, set())

    @property
    def actor(self) -> str:
        """How history and activity name this caller."""
        return f"key:{self.key_id}"

    def acting_for(self, named: str | None) -> Principal:
        """The principal for the tenant a request names in X-Tenant-Id: a service key must name one of its
        tenants (422 without, 403 outside its list); a tenant key may only name its own (403 otherwise)."""
        if named is not None and not _TENANT_RE.fullmatch(named):
            raise ValidationFailed("X-Tenant-Id", "must be 1-64 characters of letters, digits, . _ : -")
        if self.role not in PLATFORM_ROLES:
            if named is not None and named != self.tenant_id:
                raise ApiError(403, "forbidden", "this key may only act for its own tenant")
            return self
        if named is None and self.role == "platform_viewer":
            return self  # across its tenants: api.context.principal lets it use the `platform` permission only
        if named is None:
            raise ValidationFailed("X-Tenant-Id", "is required with a service key (the tenant to act for)")
        if self.tenants is not None and named not in self.tenants:
            raise ApiError(403, "forbidden", f"this {self.role} key may not act for that tenant")
        return Principal(self.key_id, named, self.role, self.tenants)


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def check_tenant(tenant_id: str, field: str = "tenant") -> str:
    """A tenant id as keys and headers carry it; 422 naming `field` otherwise."""
    if not _TENANT_RE.fullmatch(tenant_id):
        raise ValidationFailed(field, "must be 1-64 characters of letters, digits, . _ : -")
    return tenant_id


def create_key(engine: Engine, tenant_id: str, role: str, *, label: str | None = None,
               expires_at: datetime | None = None, tenants: list[str] | None = None) -> str:
    """Create a key and return it; only its digest is stored, so this is the one time it is seen.

    A service or platform_viewer key takes `tenants` (None: all tenants) instead of `tenant_id`.
    """
    if role not in ROLES:
        raise ValidationFailed("role", f"must be one of {', '.join(ROLES)}")
    if role in PLATFORM_ROLES:
        tenant_id = ALL_TENANTS
        tenants = [check_tenant(t, "tenants") for t in tenants] if tenants is not None else None
    else:
        check_tenant(tenant_id)
        tenants = None
    key_id = secrets.token_hex(6)
    key = f"tm_{key_id}_{secrets.token_urlsafe(32)}"
    with engine.begin() as conn:
        conn.execute(insert(_K).values(id=key_id, tenant_id=tenant_id, role=role, key_sha256=_digest(key),
                                       label=label, created_at=datetime.now(UTC), expires_at=expires_at,
                                       tenants=tenants))
    return key


def authenticate(engine: Engine, key: str) -> Principal | None:
    """The principal of a presented key, or None when it is malformed, unknown, revoked or expired."""
    match = _KEY_RE.fullmatch(key.strip())
    if match is None:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(_K.c.tenant_id, _K.c.role, _K.c.key_sha256, _K.c.revoked_at, _K.c.expires_at,
                                  _K.c.last_used_at, _K.c.tenants).where(_K.c.id == match.group(1))).first()
    now = datetime.now(UTC)
    if row is None or row.revoked_at is not None or (row.expires_at is not None and as_utc(row.expires_at) <= now):
        return None
    if not hmac.compare_digest(row.key_sha256, _digest(key.strip())):
        return None
    if row.last_used_at is None or as_utc(row.last_used_at) <= now - _LAST_USED_EVERY:
        _touch(engine, match.group(1), now)
    tenants = tuple(row.tenants) if row.tenants is not None else None
    return Principal(match.group(1), row.tenant_id, row.role, tenants)


def _touch(engine: Engine, key_id: str, now: datetime) -> None:
    with engine.begin() as conn:
        conn.execute(_K.update().where(_K.c.id == key_id).values(last_used_at=now))


def revoke_key(engine: Engine, key_id: str, *, tenant_id: str | None = None) -> bool:
    """Revoke a key by its id (only among `tenant_id`'s keys when given); True when a key was revoked."""
    where = [_K.c.id == key_id, _K.c.revoked_at.is_(None)]
    if tenant_id is not None:
        where.append(_K.c.tenant_id == tenant_id)
    with engine.begin() as conn:
        result = conn.execute(_K.update().where(*where).values(revoked_at=datetime.now(UTC)))
    return bool(result.rowcount)


def list_keys(engine: Engine, tenant_id: str, *, key_id: str | None = None) -> list[dict[str, Any]]:
    """A tenant's keys, newest first (one when `key_id` is given): never the key or its digest."""
    query = (select(_K.c.id, _K.c.role, _K.c.label, _K.c.created_at, _K.c.expires_at, _K.c.last_used_at,
                    _K.c.revoked_at).where(_K.c.tenant_id == tenant_id)
             .order_by(_K.c.created_at.desc(), _K.c.id).limit(500))
    if key_id is not None:
        query = query.where(_K.c.id == key_id)
    with engine.connect() as conn:
        rows = conn.execute(query).mappings().all()
    return [{k: (as_utc(v).isoformat() if isinstance(v, datetime) else v) for k, v in r.items()} for r in rows]


def set_key_expiry(engine: Engine, tenant_id: str, key_id: str, expires_at: datetime | None) -> bool:
    """Give one of the tenant's unrevoked keys an expiry (None: none); True when it exists."""
    with engine.begin() as conn:
        result = conn.execute(_K.update().where(_K.c.id == key_id, _K.c.tenant_id == tenant_id,
                                                _K.c.revoked_at.is_(None)).values(expires_at=expires_at))
    return bool(result.rowcount)
