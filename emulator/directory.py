"""The emulated directory: tenants, app registrations, mailboxes, access policies, Send-As grants.

Loaded from a dict (YAML or JSON file) and indexed for lookups by GUID, domain, client id, mailbox id
or address (all case-insensitive). The raw dict is kept so GET /_emulator/directory returns what was
put in. File format: docs/emulator.md.
"""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import json
import re
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from emulator.demo import (  # noqa: F401  (re-exported: the contract names them here)
    DEMO_CEO,
    DEMO_CLIENT_ID,
    DEMO_CLIENT_SECRET,
    DEMO_SENDER,
    DEMO_TENANT_ID,
    DEMO_UNLICENSED,
    PLATFORM_CLIENT_ID,
    PLATFORM_CLIENT_SECRET,
    PLATFORM_NO_REPLY,
    PLATFORM_SENDER,
    PLATFORM_TENANT_ID,
    demo_directory,
    make_tenant,
)

GUID_RE = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_OBJECT_IDS = uuid.UUID("7d3f7a52-1c1b-4d55-8f0e-6a3b2c1d0e9f")
DNS_RE = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")


def parse_time(value: Any) -> float | None:
    """Epoch seconds from None, a number, a datetime/date or an ISO-8601 string."""
    if value is None or value == "":
        return None
    if isinstance(value, int | float):
        return float(value)
    if isinstance(value, dt.datetime):
        moment = value
    elif isinstance(value, dt.date):
        moment = dt.datetime(value.year, value.month, value.day)
    else:
        moment = dt.datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.UTC)
    return moment.timestamp()


@dataclass
class Secret:
    """One client secret of an app registration."""

    id: str
    value: str
    expires_at: float | None


@dataclass
class Certificate:
    """A registered public certificate, with both thumbprint forms MSAL may send."""

    cert: x509.Certificate
    x5t: str  # base64url SHA-1, no padding
    x5t_s256: str  # base64url SHA-256, no padding
    expires_at: float | None


@dataclass
class App:
    """An app registration (its service principal in this tenant)."""

    client_id: str
    display_name: str
    secrets: list[Secret]
    certificates: list[Certificate]
    roles: list[str]
    admin_consent: bool
    object_id: str = ""  # of the app registration
    service_principal_id: str = ""  # object id of its enterprise application (service principal)

    @property
    def granted_roles(self) -> list[str]:
        """Roles that end up in tokens: only with admin consent."""
        return list(self.roles) if self.admin_consent else []


@dataclass
class Mailbox:
    """A recipient that may send through Graph."""

    id: str
    address: str  # canonical, lower case
    display_name: str
    licensed: bool
    on_premises: bool
    exists: bool
    max_send_size_bytes: int
    attributes: dict[str, str] = field(default_factory=dict)  # CustomAttribute1..15, Department: for filters


@dataclass
class Tenant:
    """One tenant and everything in it."""

    id: str
    display_name: str
    domains: list[str]
    apps: dict[str, App] = field(default_factory=dict)
    mailboxes: dict[str, Mailbox] = field(default_factory=dict)  # by address and by id, lower case
    groups: dict[str, set[str]] = field(default_factory=dict)
    policies: dict[str, list[tuple[str, str]]] = field(default_factory=dict)  # app -> [(scope, right)]
    send_as: dict[str, set[str]] = field(default_factory=dict)
    exchange: dict[str, Any] = field(default_factory=dict)  # RBAC for Applications (emulator.exchange)
    admin_units: list[dict[str, Any]] = field(default_factory=list)

    def mailbox(self, ident: str) -> Mailbox | None:
        """Look a mailbox up by id or address, case-insensitively; None if absent or not existing."""
        box = self.mailboxes.get(ident.lower())
        return box if box is not None and box.exists else None

    def policy_allows(self, app_id: str, address: str) -> bool:
        """Apply Application Access Policies: DenyAccess wins, RestrictAccess limits to its scopes."""
        rules = self.policies.get(app_id.lower())
        if not rules:
            return True
        address = address.lower()
        restricted = False
        allowed = False
        for scope, right in rules:
            inside = address == scope or address in self.groups.get(scope, ())
            if right == "denyaccess" and inside:
                return False
            if right == "restrictaccess":
                restricted = True
                allowed = allowed or inside
        return allowed or not restricted

    def may_send_as(self, mailbox: Mailbox, address: str) -> bool:
        """Whether `mailbox` may put `address` in `from`."""
        address = address.lower()
        return address == mailbox.address or address in self.send_as.get(mailbox.address, ())


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _certificate(spec: dict[str, Any]) -> Certificate:
    cert = x509.load_pem_x509_certificate(spec["pem"].encode())
    der = cert.public_bytes(Encoding.DER)
    expires = parse_time(spec.get("expires_at")) or cert.not_valid_after_utc.timestamp()
    return Certificate(
        cert, _b64url(hashlib.sha1(der).digest()), _b64url(hashlib.sha256(der).digest()), expires
    )


def _app(spec: dict[str, Any]) -> App:
    secrets = [
        Secret(str(s.get("id", "")), str(s["value"]), parse_time(s.get("expires_at")))
        for s in spec.get("secrets", [])
    ]
    return App(
        client_id=str(spec["client_id"]).lower(),
        display_name=str(spec.get("display_name", spec["client_id"])),
        secrets=secrets,
        certificates=[_certificate(c) for c in spec.get("certificates", [])],
        roles=list(spec.get("roles", [])),
        admin_consent=bool(spec.get("admin_consent", True)),
        object_id=str(spec.get("object_id") or derived_id("app-registration", spec["client_id"])),
        service_principal_id=str(spec.get("service_principal_id")
                                 or derived_id("enterprise-application", spec["client_id"])),
    )


def derived_id(kind: str, client_id: str) -> str:
    """A stable object id for an app's registration or enterprise application when the spec gives none."""
    return str(uuid.uuid5(_OBJECT_IDS, f"{kind}/{str(client_id).lower()}"))


def _mailbox(spec: dict[str, Any]) -> Mailbox:
    return Mailbox(
        id=str(spec.get("id", spec["address"])).lower(),
        address=str(spec["address"]).lower(),
        display_name=str(spec.get("display_name", spec["address"])),
        licensed=bool(spec.get("licensed", True)),
        on_premises=bool(spec.get("on_premises", False)),
        exists=bool(spec.get("exists", True)),
        max_send_size_bytes=int(spec.get("max_send_size_kb", 35 * 1024)) * 1024,
        attributes={str(k): str(v) for k, v in (spec.get("attributes") or {}).items()},
    )


def build_tenant(spec: dict[str, Any]) -> Tenant:
    """Index one tenant dict; raises ValueError/KeyError on malformed input."""
    tid = str(spec["id"]).lower()
    if not GUID_RE.match(tid):
        raise ValueError(f"tenant id must be a GUID: {tid!r}")
    tenant = Tenant(tid, str(spec.get("display_name", tid)), [d.lower() for d in spec.get("domains", [])])
    for app_spec in spec.get("apps", []):
        app = _app(app_spec)
        tenant.apps[app.client_id] = app
    for box_spec in spec.get("mailboxes", []):
        box = _mailbox(box_spec)
        tenant.mailboxes[box.address] = box
        tenant.mailboxes[box.id] = box
    for group in spec.get("groups", []):
        tenant.groups[str(group["address"]).lower()] = {str(m).lower() for m in group.get("members", [])}
    for policy in spec.get("access_policies", []):
        right = str(policy.get("access_right", "RestrictAccess")).lower()
        if right not in ("restrictaccess", "denyaccess"):
            raise ValueError(f"access_right must be RestrictAccess or DenyAccess: {right!r}")
        rules = tenant.policies.setdefault(str(policy["app_id"]).lower(), [])
        rules.append((str(policy["scope"]).lower(), right))
    tenant.exchange = dict(spec.get("exchange") or {})
    tenant.admin_units = [{"id": str(u.get("id", u["name"])), "name": str(u["name"]),
                           "members": [str(m).lower() for m in u.get("members", [])]}
                          for u in spec.get("admin_units", [])]
    for grant in spec.get("send_as", []):
        allowed = tenant.send_as.setdefault(str(grant["mailbox"]).lower(), set())
        allowed.update(str(a).lower() for a in grant.get("can_send_as", []))
    return tenant


class Directory:
    """All tenants, indexed; replace wholesale with a new Directory or one tenant with `put_tenant`."""

    def __init__(self, data: dict[str, Any] | None = None) -> None:
        self._raw: dict[str, dict[str, Any]] = {}
        self._by_key: dict[str, Tenant] = {}
        for spec in (data or {}).get("tenants", []):
            self.put_tenant(spec)

    def put_tenant(self, spec: dict[str, Any]) -> Tenant:
        """Add a tenant or replace the one with the same id."""
        tenant = build_tenant(spec)
        old = self._by_key.get(tenant.id)
        if old is not None:
            for key in [old.id, *old.domains]:
                self._by_key.pop(key, None)
        self._raw[tenant.id] = spec
        self._by_key[tenant.id] = tenant
        for domain in tenant.domains:
            self._by_key[domain] = tenant
        return tenant

    def tenant(self, ident: str) -> Tenant | None:
        """A tenant by GUID or verified domain, case-insensitive."""
        return self._by_key.get(ident.lower())

    def add_certificate(self, ident: str, client_id: str, pem: str) -> Tenant:
        """Register a certificate's public part on an app of a tenant (KeyError if either is unknown)."""
        tenant = self.tenant(ident)
        if tenant is None:
            raise KeyError(f"no tenant {ident!r}")
        spec = self._raw[tenant.id]
        for app in spec.get("apps", []):
            if str(app["client_id"]).lower() == client_id.lower():
                _certificate({"pem": pem})  # ValueError on a malformed certificate, before changing anything
                app["certificates"] = [*app.get("certificates", []), {"pem": pem}]
                return self.put_tenant(spec)
        raise KeyError(f"no app {client_id!r} in tenant {tenant.id}")

    def raw_tenant(self, tenant_id: str) -> dict[str, Any]:
        """The spec a tenant was built from (change it, then `put_tenant` it)."""
        return self._raw[tenant_id]

    def to_dict(self) -> dict[str, Any]:
        """The directory as it was given (JSON-able)."""
        return {"tenants": list(self._raw.values())}


def load_directory_file(path: str | Path) -> dict[str, Any]:
    """Read a directory from a .json, .yaml or .yml file."""
    text = Path(path).read_text(encoding="utf-8")
    if str(path).endswith(".json"):
        return json.loads(text)
    return yaml.safe_load(text)
