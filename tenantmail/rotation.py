"""Re-encrypt everything the SecretBox protects under the newest key, so old keys can be retired.

What is encrypted: every `provider_config.secret_enc` (each version a tenant ever saved, active or
not: client secrets and certificates' private keys) and every webhook endpoint's signing secrets
(`webhook_endpoint.secret_enc` and, during a rotation's grace, `previous_secret_enc`) in the
database, and the cached tokens (`tm:tok:*`) in Redis. Nothing else is: API keys are stored as
SHA-256 hashes, the SMTP relay's password lives in the environment, reminders and history rows hold
no secret.

Two phases, so that nothing is half-rewritten:
1. check: every stored credential and webhook secret must open with a configured key; if any does
   not, a `SecretsUndecryptable` names each (tenant, version or endpoint) and nothing at all is written;
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
from shared.models import ProviderConfig, WebhookEndpoint
from shared.secretbox import SecretBox
from transport.tokens import TOKEN_KEY_PATTERN

_P = ProviderConfig.__table__  # type: ignore[attr-defined]
_W = WebhookEndpoint.__table__  # type: ignore[attr-defined]
_WEBHOOK_COLUMNS = ("secret_enc", "previous_secret_enc")
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
    webhook_secrets: Counts

    def lines(self) -> list[str]:
        """Human-readable summary (counts only, never a secret)."""
        tokens = str(self.tokens) if self.tokens is not None else "skipped (no REDIS_URL)"
        return [f"credentials: {self.credentials}", f"webhook secrets: {self.webhook_secrets}", f"tokens: {tokens}"]


def rotate_all(engine: Engine, box: SecretBox, redis: Any | None) -> RotationReport:
    """Check every stored credential and webhook secret, then re-encrypt them and the cached tokens
    under the newest key."""
    try:
        stale, current = check_credentials(engine, box)
    except SecretsUndecryptable as exc:  # name the webhook secrets no key opens too, in one error
        try:
            check_webhook_secrets(engine, box)
        except SecretsUndecryptable as more:
            raise SecretsUndecryptable([*exc.versions, *more.versions]) from None
        raise
    stale_webhooks, current_webhooks = check_webhook_secrets(engine, box)
    credentials = Counts(current=current)
    for row_id, old in stale:
        if rewrite_credential(engine, row_id, old, box.rotate(old)):
            credentials.rewritten += 1
        else:
            credentials.raced += 1
    webhook_secrets = Counts(current=current_webhooks)
    for endpoint_id, column, old in stale_webhooks:
        if rewrite_webhook_secret(engine, endpoint_id, column, old, box.rotate(old)):
            webhook_secrets.rewritten += 1
        else:
            webhook_secrets.raced += 1
    return RotationReport(credentials, rotate_tokens(redis, box) if redis is not None else None, webhook_secrets)


def check_webhook_secrets(engine: Engine, box: SecretBox) -> tuple[list[tuple[str, str, bytes]], int]:
    """(endpoint id, column, ciphertext) of the webhook secrets not under the newest key, and how many
    are; raises SecretsUndecryptable, naming every (tenant, endpoint), when no configured key opens one."""
    stale: list[tuple[str, str, bytes]] = []
    current = 0
    unreadable: list[tuple[str, str]] = []
    query = select(_W.c.id, _W.c.tenant_id, *(_W.c[c] for c in _WEBHOOK_COLUMNS)).order_by(_W.c.tenant_id, _W.c.id)
    with engine.connect() as conn:
        for endpoint_id, tenant_id, *blobs in conn.execute(query):
            for column, blob in zip(_WEBHOOK_COLUMNS, blobs, strict=True):
                if blob is None:
                    continue
                if box.is_newest(blob):
                    current += 1
                elif box.opens(blob):
                    stale.append((endpoint_id, column, bytes(blob)))
                else:
                    unreadable.append((tenant_id, f"webhook endpoint {endpoint_id}"))
    if unreadable:
        raise SecretsUndecryptable(unreadable)
    return stale, current


def rewrite_webhook_secret(engine: Engine, endpoint_id: str, column: str, old: bytes, new: bytes) -> bool:
    """Store `new` in the endpoint's `column` only if it still holds `old` (a rotation of the signing
    secret meanwhile wins); returns whether it did."""
    with engine.begin() as conn:
        result = conn.execute(update(_W).where(_W.c.id == endpoint_id, _W.c[column] == old).values({column: new}))
    return result.rowcount == 1


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
