"""Tenant provider configurations: store a version, resolve the one in force.

Table access for the configuration API (versions with a change history) and for the workers
(the version in force). A tenant's provider is either its own Microsoft 365 app
(`ResolvedProvider`: Graph, with a client secret or a certificate) or the platform default
(`PlatformProvider`: the platform's no-reply sender through the SMTP relay in settings).
Credentials are decrypted only into `ResolvedProvider`, which never prints them.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime

from sqlalchemy import Engine, func, select, text
from sqlmodel import Session

from shared.certificates import CertificateCredential, client_credential
from shared.clock import as_utc
from shared.clouds import Cloud, resolve_cloud
from shared.codes import Code
from shared.errors import ConfigurationError, NoProviderConfigured, PermanentError, ProviderError
from shared.holds import release_hold
from shared.models import ProviderConfig, ProviderHistory
from shared.producer import PLATFORM_TENANT_KEY
from shared.secretbox import SecretBox
from shared.senders import DEFAULT_SENDER, SenderIdentity, changed_senders, senders_of, stored_senders
from shared.settings import Settings
from shared.webhooks import emit, provider_saved_event

_P = ProviderConfig.__table__  # type: ignore[attr-defined]
_H = ProviderHistory.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ResolvedProvider:
    """A tenant's own Microsoft 365 app: everything a worker needs to send through Graph.

    `credential` is the client secret or, for `credential_type` "certificate", the PEM private key
    and certificate; it never prints.
    """

    tenant_id: str
    version: int
    kind: str
    sender_address: str
    sender_name: str | None
    reply_to: str | None
    azure_tenant: str
    client_id: str
    cloud: Cloud
    credential: str = field(repr=False)
    credential_type: str = "secret"
    saved_at: datetime | None = None  # when this version was saved (Exchange may still be applying a change)
    # The named sender this copy sends as (`for_sender`), its limit, and all of the version's senders.
    sender: str = DEFAULT_SENDER
    daily_recipient_limit: int | None = None
    daily_external_recipient_limit: int | None = None  # the tenant's, across all its senders
    senders: Mapping[str, SenderIdentity] = field(default_factory=dict, repr=False, compare=False)

    def for_sender(self, name: str) -> ResolvedProvider | None:
        """This provider sending as its sender `name` (address, display name, reply-to, limit), or None
        when the version has no such sender."""
        identity = self.senders.get(name)
        if identity is None:
            return None
        return replace(self, sender=name, sender_address=identity.address, sender_name=identity.display_name,
                       reply_to=identity.reply_to, daily_recipient_limit=identity.daily_recipient_limit)

    @property
    def token_key(self) -> str:
        """Key of this provider's token in caches: (tenant, client id, config version)."""
        return f"{self.tenant_id}:{self.client_id}:{self.version}"

    @property
    def mailbox_key(self) -> str:
        """Key of the Graph per-(app, mailbox) limits."""
        return f"{self.client_id}:{self.sender_address.lower()}"

    @property
    def msal_credential(self) -> str | dict[str, str]:
        """What MSAL's `client_credential` takes for this provider."""
        return client_credential(self.credential_type, self.credential)


@dataclass(frozen=True, slots=True)
class PlatformProvider:
    """The platform default: its no-reply sender through the SMTP relay configured in settings."""

    tenant_id: str
    version: int
    sender_address: str
    sender_name: str | None
    reply_to: str | None = None
    kind: str = "platform"

    def for_sender(self, name: str) -> PlatformProvider:
        """The platform default has one sender: every name a tenant's mail carries sends from it."""
        return self


Provider = ResolvedProvider | PlatformProvider


def unknown_sender(name: str) -> PermanentError:
    """A queued notification names a sender the provider in force no longer has (removed by a save)."""
    return PermanentError(f"the tenant's provider has no sender named {name!r} any more",
                          code=Code.UNKNOWN_SENDER)


class VersionConflict(Exception):
    """A save named the version it edited (If-Match) and another version is in force now."""

    def __init__(self, current_version: int) -> None:
        super().__init__(f"version {current_version} is in force")
        self.current_version = current_version


# Fields whose change the history records by name; the secret is compared, never stored in it.
TRACKED_FIELDS = ("kind", "sender_name", "sender_address", "reply_to", "azure_tenant", "client_id", "cloud",
                  "secret_expires_at", "credential_type", "cert_thumbprint", "admin_contact_email",
                  "daily_external_recipient_limit", "mail_readwrite")


def save_graph_provider(
    engine: Engine,
    box: SecretBox,
    tenant_id: str,
    *,
    sender_address: str,
    azure_tenant: str,
    client_id: str,
    client_secret: str | None = None,
    certificate: CertificateCredential | None = None,
    sender_name: str | None = None,
    reply_to: str | None = None,
    cloud: str = "global",
    secret_expires_at: datetime | None = None,
    expiry_source: str | None = None,
    admin_contact_email: str | None = None,
    senders: Iterable[SenderIdentity] = (),
    daily_external_recipient_limit: int | None = None,
    mail_readwrite: bool | None = None,
    created_by: str | None = None,
    expected_version: int | None = None,
) -> int:
    """Store a new active customer-provided Graph configuration and its history entry; returns its version.

    Exactly one of `client_secret` and `certificate` is given. A certificate's expiry is its notAfter.
    `senders` are the named senders besides `default` (which is `sender_address`, `sender_name`,
    `reply_to`); a `default` among them gives only the default sender's daily recipient limit.
    `mail_readwrite`: whether the token the save was checked with held Mail.ReadWrite (large attachments).
    With `expected_version`, raises VersionConflict unless that version is the one in force.
    """
    if (client_secret is None) == (certificate is None):
        raise ValueError("give exactly one of client_secret and certificate")
    credential = certificate.pem if certificate is not None else client_secret or ""
    row = ProviderConfig(
        tenant_id=tenant_id, version=0, kind="graph", sender_name=sender_name,
        sender_address=sender_address, reply_to=reply_to, azure_tenant=azure_tenant, client_id=client_id,
        secret_enc=box.encrypt(credential), cloud=cloud, admin_contact_email=admin_contact_email,
        created_at=datetime.now(UTC), created_by=created_by,
        credential_type="secret" if certificate is None else "certificate",
        secret_last4=credential[-4:] if certificate is None else None,
        cert_thumbprint=certificate.thumbprint if certificate is not None else None,
        secret_expires_at=certificate.not_after if certificate is not None else secret_expires_at,
        expiry_source="certificate" if certificate is not None else (expiry_source if secret_expires_at else None),
    )
    row.senders = stored_senders(_with_default(row, senders))
    row.daily_external_recipient_limit = daily_external_recipient_limit
    row.mail_readwrite = mail_readwrite
    changed_name = "certificate_pem" if certificate is not None else "client_secret"
    return _insert_version(engine, row, "saved",
                           lambda prev: [changed_name] if _credential_changed(box, prev, credential) else [],
                           expected_version=expected_version)


def _with_default(row: ProviderConfig, senders: Iterable[SenderIdentity]) -> list[SenderIdentity]:
    named = {s.name: s for s in senders}
    given = named.pop(DEFAULT_SENDER, None)
    default = SenderIdentity(DEFAULT_SENDER, row.sender_address or "", row.sender_name, row.reply_to,
                             given.daily_recipient_limit if given else None)
    return [default, *named.values()]


def set_platform_default(engine: Engine, tenant_id: str, *, created_by: str | None = None,
                         expected_version: int | None = None) -> int:
    """Revert a tenant to the platform's own sender; returns the new version."""
    return _insert_version(engine, ProviderConfig(
        tenant_id=tenant_id, version=0, kind="platform", created_at=datetime.now(UTC), created_by=created_by,
    ), "reverted", _dropped_credential, expected_version=expected_version)


def restore_version(engine: Engine, box: SecretBox, source: ProviderConfig, *, created_by: str | None = None,
                    expected_version: int | None = None, mail_readwrite: bool | None = None) -> int:
    """Store a copy of an older version `source` as the new version in force; returns its version.
    `mail_readwrite`, when given, is what the restore's own credential check saw (else the source's)."""
    copied = {f: getattr(source, f)
              for f in (*TRACKED_FIELDS, "secret_enc", "secret_last4", "expiry_source", "senders")}
    if mail_readwrite is not None:
        copied["mail_readwrite"] = mail_readwrite
    row = ProviderConfig(tenant_id=source.tenant_id, version=0, created_at=datetime.now(UTC), created_by=created_by,
                         **copied)
    credential = box.decrypt(source.secret_enc) if source.secret_enc is not None else None

    def changes(prev: ProviderConfig | None) -> list[str]:
        if credential is None:
            return _dropped_credential(prev)
        return [_credential_name(source)] if _credential_changed(box, prev, credential) else []

    return _insert_version(engine, row, "restored", changes, expected_version=expected_version,
                           restored_from=source.version)


def config_version(engine: Engine, tenant_id: str, version: int) -> ProviderConfig | None:
    """One stored version of a tenant's configuration, or None."""
    with Session(engine) as session:
        query = select(ProviderConfig).where(_P.c.tenant_id == tenant_id, _P.c.version == version)
        return session.scalars(query).first()


def _dropped_credential(prev: ProviderConfig | None) -> list[str]:
    return [] if prev is None or prev.secret_enc is None else [_credential_name(prev)]


def current_config(engine: Engine, tenant_id: str) -> ProviderConfig | None:
    """The tenant's configuration row in force (highest active version), or None."""
    with Session(engine) as session:
        return _current(session, tenant_id)


def provider_history(engine: Engine, tenant_id: str, *, limit: int = 50) -> list[ProviderHistory]:
    """The tenant's configuration changes, newest first."""
    with Session(engine) as session:
        query = (select(ProviderHistory).where(_H.c.tenant_id == tenant_id)
                 .order_by(_H.c.version.desc()).limit(limit))
        return list(session.scalars(query).all())


def _current(session: Session, tenant_id: str) -> ProviderConfig | None:
    query = (select(ProviderConfig).where(_P.c.tenant_id == tenant_id, _P.c.active.is_(True))
             .order_by(_P.c.version.desc()).limit(1))
    return session.scalars(query).first()


def _credential_changed(box: SecretBox, prev: ProviderConfig | None, credential: str) -> bool:
    if prev is None or prev.secret_enc is None:
        return True
    try:
        return box.decrypt(prev.secret_enc) != credential
    except ConfigurationError:
        return True


def _credential_name(row: ProviderConfig) -> str:
    return "certificate_pem" if row.credential_type == "certificate" else "client_secret"


def _changed_fields(prev: ProviderConfig | None, row: ProviderConfig) -> list[str]:
    before = senders_of(prev) if prev is not None else {}
    # The default sender's address, name and reply-to are tracked as the columns they are.
    after = senders_of(row)
    named = [f for f in changed_senders(before, after) if f != f"senders.{DEFAULT_SENDER}"
             or _limit(before.get(DEFAULT_SENDER)) != _limit(after.get(DEFAULT_SENDER))]
    if prev is None:
        return [f for f in TRACKED_FIELDS if getattr(row, f) is not None] + named
    return [f for f in TRACKED_FIELDS if _comparable(getattr(prev, f)) != _comparable(getattr(row, f))] + named


def _limit(sender: SenderIdentity | None) -> int | None:
    return sender.daily_recipient_limit if sender else None


def _comparable(value: object) -> object:
    return as_utc(value) if isinstance(value, datetime) else value


def _insert_version(
    engine: Engine, row: ProviderConfig, action: str, credential_changes: Callable[[ProviderConfig | None], list[str]],
    *, expected_version: int | None = None, restored_from: int | None = None,
) -> int:
    # One transaction holding the tenant's lock: saves of one tenant run one after the other, so each
    # reads the version the previous one wrote (no two pick the same number), and the If-Match check
    # and the insert cannot be separated by another save. The unique (tenant_id, version) constraint
    # stays as the last line of defence.
    with Session(engine) as session:
        _lock_tenant(session, row.tenant_id)
        prev = _current(session, row.tenant_id)
        current = session.scalar(select(func.max(_P.c.version)).where(_P.c.tenant_id == row.tenant_id)) or 0
        if expected_version is not None and expected_version != current:
            raise VersionConflict(current)
        row.version = current + 1
        changed = _changed_fields(prev, row) + credential_changes(prev)
        session.add(row)
        session.add(ProviderHistory(tenant_id=row.tenant_id, version=row.version, action=action,
                                    changed_fields=changed, actor=row.created_by, created_at=row.created_at,
                                    restored_from=restored_from))
        session.flush()
        # Every save, revert and restore comes through here: a held queue goes out with the new version.
        release_hold(session.connection(), row.tenant_id, actor=row.created_by, version=row.version)
        emit(session.connection(), [provider_saved_event(row, action, changed)])  # webhooks, same transaction
        session.commit()
        return row.version


def _lock_tenant(session: Session, tenant_id: str) -> None:
    # PostgreSQL: a transaction-scoped advisory lock keyed on the tenant (released at commit or
    # rollback). SQLite: every transaction begins IMMEDIATE (shared.db), which already serializes writers.
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtextextended(:key, 0))"),
                        {"key": f"provider_config:{tenant_id}"})


class ProviderResolver:
    """Resolves tenants to their provider in force, cached for `provider_cache_ttl_ms`."""

    def __init__(self, engine: Engine, box: SecretBox, settings: Settings) -> None:
        self._engine = engine
        self._box = box
        self._settings = settings
        self._ttl_s = settings.provider_cache_ttl_ms / 1000
        self._cache: dict[str, tuple[float, Provider | ProviderError]] = {}
        self._lock = threading.Lock()

    def resolve_many(self, tenant_ids: Iterable[str]) -> dict[str, Provider | ProviderError]:
        """Provider (or the reason there is none) for each tenant."""
        now = time.monotonic()
        out: dict[str, Provider | ProviderError] = {}
        missing: list[str] = []
        with self._lock:
            for tid in set(tenant_ids):
                hit = self._cache.get(tid)
                if hit and hit[0] > now:
                    out[tid] = hit[1]
                else:
                    missing.append(tid)
        if missing:
            fresh = self._load(missing)
            with self._lock:
                for tid, value in fresh.items():
                    self._cache[tid] = (now + self._ttl_s, value)
            out.update(fresh)
        return out

    def _load(self, tenant_ids: list[str]) -> dict[str, Provider | ProviderError]:
        latest = (
            select(_P.c.tenant_id, func.max(_P.c.version).label("v"))
            .where(_P.c.tenant_id.in_(tenant_ids), _P.c.active.is_(True))
            .group_by(_P.c.tenant_id).subquery()
        )
        query = select(ProviderConfig).join(
            latest, (_P.c.tenant_id == latest.c.tenant_id) & (_P.c.version == latest.c.v)
        )
        with Session(self._engine) as session:
            rows = {r.tenant_id: r for r in session.scalars(query).all()}
        return {tid: self._resolve_row(tid, rows.get(tid)) for tid in tenant_ids}

    def _resolve_row(self, tenant_id: str, row: ProviderConfig | None) -> Provider | ProviderError:
        try:
            if tenant_id == PLATFORM_TENANT_KEY or row is None or row.kind == "platform":
                return self._platform(tenant_id, row.version if row else 0)
            assert row.secret_enc and row.sender_address and row.azure_tenant and row.client_id
            provider = ResolvedProvider(
                tenant_id=tenant_id, version=row.version, kind="graph", sender_address=row.sender_address,
                sender_name=row.sender_name, reply_to=row.reply_to, azure_tenant=row.azure_tenant,
                client_id=row.client_id, cloud=resolve_cloud(row.cloud, self._settings),
                credential=self._box.decrypt(row.secret_enc), credential_type=row.credential_type or "secret",
                saved_at=as_utc(row.created_at) if row.created_at else None,
                senders=senders_of(row), daily_external_recipient_limit=row.daily_external_recipient_limit,
            )
            return provider.for_sender(DEFAULT_SENDER) or provider  # the default's limit
        except ProviderError as exc:
            return exc
        except Exception as exc:  # a broken row must fail its tenant, not the whole batch
            return ProviderError(f"provider configuration v{row.version if row else 0} unusable: {exc}")

    def _platform(self, tenant_id: str, version: int) -> PlatformProvider:
        s = self._settings
        if not s.smtp_host:
            raise NoProviderConfigured(
                f"tenant {tenant_id} has no email provider and the platform default is not configured "
                "(TENANTMAIL_SMTP_HOST)"
            )
        return PlatformProvider(tenant_id=tenant_id, version=version, sender_address=s.platform_sender,
                                sender_name=s.platform_sender_name)
