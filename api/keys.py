"""API keys: `tm_<id>_<secret>`, stored as the sha256 of the whole key, bound to one tenant and one role.

The key is shown once, when created. Lookups go by the public id and compare digests in constant time.
"""

from __future__ import annotations

import hashlib
import hmac
import re
import secrets
from dataclasses import dataclass
from datetime import UTC, datetime

from sqlalchemy import Engine, select
from sqlmodel import Session

from shared.errors import ValidationFailed
from shared.models import ApiKey

ROLES = ("admin", "sender", "viewer")
_KEY_RE = re.compile(r"^tm_([a-z0-9]{12})_([A-Za-z0-9_-]{32,64})$")
_TENANT_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._:-]{0,63}$")
_K = ApiKey.__table__  # type: ignore[attr-defined]

# What each role may do; every role may read its tenant's data.
_ALLOWED = {"admin": {"read", "send", "admin"}, "sender": {"read", "send"}, "viewer": {"read"}}


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: the key's id, its tenant and its role."""

    key_id: str
    tenant_id: str
    role: str

    def may(self, permission: str) -> bool:
        """True when the role grants `permission` (read, send or admin)."""
        return permission in _ALLOWED.get(self.role, set())

    @property
    def actor(self) -> str:
        """How history and activity name this caller."""
        return f"key:{self.key_id}"


def _digest(key: str) -> str:
    return hashlib.sha256(key.encode()).hexdigest()


def create_key(engine: Engine, tenant_id: str, role: str, *, label: str | None = None) -> str:
    """Create a key and return it; only its digest is stored, so this is the one time it is seen."""
    if role not in ROLES:
        raise ValidationFailed("role", f"must be one of {', '.join(ROLES)}")
    if not _TENANT_RE.fullmatch(tenant_id):
        raise ValidationFailed("tenant", "must be 1-64 characters of letters, digits, . _ : -")
    key_id = secrets.token_hex(6)
    key = f"tm_{key_id}_{secrets.token_urlsafe(32)}"
    with Session(engine) as session:
        session.add(ApiKey(id=key_id, tenant_id=tenant_id, role=role, key_sha256=_digest(key), label=label,
                           created_at=datetime.now(UTC)))
        session.commit()
    return key


def authenticate(engine: Engine, key: str) -> Principal | None:
    """The principal of a presented key, or None when it is malformed, unknown or revoked."""
    match = _KEY_RE.fullmatch(key.strip())
    if match is None:
        return None
    with engine.connect() as conn:
        row = conn.execute(select(_K.c.tenant_id, _K.c.role, _K.c.key_sha256, _K.c.revoked_at)
                           .where(_K.c.id == match.group(1))).first()
    if row is None or row.revoked_at is not None:
        return None
    if not hmac.compare_digest(row.key_sha256, _digest(key.strip())):
        return None
    return Principal(match.group(1), row.tenant_id, row.role)


def revoke_key(engine: Engine, key_id: str) -> bool:
    """Revoke a key by its id; True when a key was revoked."""
    with engine.begin() as conn:
        result = conn.execute(_K.update().where(_K.c.id == key_id, _K.c.revoked_at.is_(None))
                              .values(revoked_at=datetime.now(UTC)))
    return bool(result.rowcount)
