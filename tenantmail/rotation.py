"""Re-encrypt everything the SecretBox protects under the newest key, so old keys can be retired.

What is encrypted: every `provider_config.secret_enc` (each version a tenant ever saved, active or
not: client secrets and certificates' private keys) in the database, and the cached tokens
(`tm:tok:*`) in Redis. Nothing else is: API keys are stored as SHA-256 hashes, the SMTP relay's
password lives in the environment, reminders and history rows hold no secret.

Two phases, so that nothing is half-rewritten:
1. check: every stored credential must open with a configured key; if any does not, a
   `SecretsUndecryptable` names each (tenant, version) and nothing at all is written;
2. rewrite: one short transaction per row, `UPDATE … WHERE id = :id AND secret_enc = :old`, so
   a row changed meanwhile is never overwritten with a stale value (configuration rows are
   immutable once saved, but the guard costs nothing). Tokens are swapped by a Lua script on the
   same condition, keeping their TTL. A token no key opens is deleted: it is a cache, and the
   worker that needs it asks Entra ID again.

A ciphertext the newest key already opens is left as it is, so a second run changes nothing.
Running workers are unaffected: while both keys are configured, old and new ciphertexts decrypt.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import Engine, select, update

from shared.errors import SecretsUndecryptable
from shared.models import ProviderConfig
from shared.secretbox import SecretBox
from transport.tokens import TOKEN_KEY_PATTERN

_P = ProviderConfig.__table__  # type: ignore[attr-defined]
_SWAP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('SET', KEYS[1], ARGV[2], 'KEEPTTL') and 1 or 0 end
return 0
"""
_DROP = """
if redis.call('GET', KEYS[1]) == ARGV[1] then return redis.call('DEL', KEYS[1]) end
return 0
"""


@dataclass
class Counts:
    """What one kind of stored secret went through."""

    rewritten: int = 0
    current: int = 0  # already under the newest key
    raced: int = 0  # changed by someone else between read and write; left to them
    dropped: int = 0  # tokens no key opens (a cache: deleted)

    def __str__(self) -> str:
        text = f"{self.rewritten} re-encrypted, {self.current} already under the newest key"
        if self.raced:
            text += f", {self.raced} changed meanwhile (left as saved)"
        if self.dropped:
            text += f", {self.dropped} dropped (no key opens them)"
        return text


@dataclass(frozen=True)
class RotationReport:
    """Counts of one `tenantmail secrets rotate` run; `tokens` is None without Redis."""

    credentials: Counts
    tokens: Counts | None

    def lines(self) -> list[str]:
        """Human-readable summary (counts only, never a secret)."""
        tokens = str(self.tokens) if self.tokens is not None else "skipped (no REDIS_URL)"
        return [f"credentials: {self.credentials}", f"tokens: {tokens}"]


def rotate_all(engine: Engine, box: SecretBox, redis: Any | None) -> RotationReport:
    """Check every stored credential, then re-encrypt credentials and cached tokens under the newest key."""
    stale, current = check_credentials(engine, box)
    credentials = Counts(current=current)
    for row_id, old in stale:
        if rewrite_credential(engine, row_id, old, box.rotate(old)):
            credentials.rewritten += 1
        else:
            credentials.raced += 1
    return RotationReport(credentials, rotate_tokens(redis, box) if redis is not None else None)


def rewrite_credential(engine: Engine, row_id: int, old: bytes, new: bytes) -> bool:
    """Store `new` on the row only if it still holds `old`; returns whether it did."""
    with engine.begin() as conn:
        result = conn.execute(update(_P).where(_P.c.id == row_id, _P.c.secret_enc == old).values(secret_enc=new))
    return result.rowcount == 1


def rotate_tokens(redis: Any, box: SecretBox) -> Counts:
    """Re-encrypt every cached token still held under an older key; drop those no key opens."""
    counts = Counts()
    swap, drop = redis.register_script(_SWAP), redis.register_script(_DROP)
    for key in redis.scan_iter(match=TOKEN_KEY_PATTERN, count=500):
        blob = redis.get(key)
        if blob is None:
            continue  # expired meanwhile
        if box.is_newest(blob):
            counts.current += 1
        elif not box.opens(blob):
            counts.dropped += int(drop(keys=[key], args=[blob]))
        elif swap(keys=[key], args=[blob, box.rotate(blob)]):
            counts.rewritten += 1
        else:
            counts.raced += 1
    return counts


def check_credentials(engine: Engine, box: SecretBox) -> tuple[list[tuple[int, bytes]], int]:
    """(id, ciphertext) of the rows not under the newest key, and how many are; raises
    SecretsUndecryptable, naming every (tenant, version), when a configured key opens none of one."""
    stale: list[tuple[int, bytes]] = []
    current = 0
    unreadable: list[tuple[str, int]] = []
    query = select(_P.c.id, _P.c.tenant_id, _P.c.version, _P.c.secret_enc).where(_P.c.secret_enc.is_not(None))
    with engine.connect() as conn:
        for row_id, tenant_id, version, blob in conn.execute(query.order_by(_P.c.tenant_id, _P.c.version)):
            if box.is_newest(blob):
                current += 1
            elif box.opens(blob):
                stale.append((row_id, bytes(blob)))
            else:
                unreadable.append((tenant_id, version))
    if unreadable:
        raise SecretsUndecryptable(unreadable)
    return stale, current
