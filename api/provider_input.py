"""Validation of the email provider form (PUT /v1/email-provider) before any credential check.

Every text field is checked for format and for CR/LF and other control characters, which could
otherwise smuggle headers into mail or lines into logs. The cloud is a name from the fixed table
in shared.clouds, never a URL. The credential is a client secret or a certificate
(`certificate_pem`: a PEM private key and its PEM certificate, checked by shared.certificates),
never both; leaving both out keeps the stored credential. Named senders (`senders`) are checked
like the default one, and no two senders share an address.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import date, datetime
from typing import Any

from shared.certificates import CertificateCredential, parse_certificate_pem
from shared.clock import as_utc
from shared.clouds import CLOUDS
from shared.errors import ValidationFailed
from shared.message import check_address, check_line
from shared.senders import (
    DEFAULT_SENDER,
    MAX_SENDERS,
    SenderIdentity,
    check_daily_limit,
    check_sender_name,
)

PROVIDERS = ("customer", "platform")
SERVICES = ("microsoft_graph",)
_GUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DOMAIN = re.compile(r"^(?=.{3,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?\.)+[A-Za-z]{2,63}$")
_SECRET_MAX = 1024
_KEYS = frozenset({"provider", "service", "sender_name", "sender_address", "reply_to", "azure_tenant", "client_id",
                   "client_secret", "certificate_pem", "secret_expires_at", "cloud", "admin_contact_email", "senders",
                   "daily_external_recipient_limit"})
_SENDER_KEYS = frozenset({"address", "display_name", "reply_to", "daily_recipient_limit"})


@dataclass(frozen=True, slots=True)
class ProviderInput:
    """A validated customer-provided Graph configuration.

    At most one of `client_secret` and `certificate` is set; neither keeps the stored credential.
    """

    sender_address: str
    azure_tenant: str
    client_id: str
    cloud: str
    sender_name: str | None = None
    reply_to: str | None = None
    secret_expires_at: datetime | None = None
    admin_contact_email: str | None = None
    client_secret: str | None = field(default=None, repr=False)
    certificate: CertificateCredential | None = None
    senders: tuple[SenderIdentity, ...] = ()  # named senders; a `default` among them carries only its limit
    daily_external_recipient_limit: int | None = None  # the tenant's, across its senders; None: not kept


def parse_provider(data: object) -> ProviderInput | None:
    """The validated form, or None when it asks for the platform default provider."""
    if not isinstance(data, Mapping):
        raise ValidationFailed("body", "must be a JSON object")
    unknown = sorted(str(k) for k in data if k not in _KEYS)
    if unknown:
        raise ValidationFailed(unknown[0], "is not a known field")
    provider = _choice(data.get("provider", "customer"), "provider", PROVIDERS)
    if provider == "platform":
        return None
    _choice(data.get("service", "microsoft_graph"), "service", SERVICES)
    secret, pem = _optional(data, "client_secret"), _optional(data, "certificate_pem")
    if secret is not None and pem is not None:
        raise ValidationFailed("certificate_pem", "give either a client secret or a certificate, not both")
    default = SenderIdentity(
        DEFAULT_SENDER, display_name=check_line(_optional(data, "sender_name"), "sender_name", 200) or None,
        address=check_address(_required(data, "sender_address"), "sender_address"),
        reply_to=check_address(r, "reply_to") if (r := _optional(data, "reply_to")) else None)
    return ProviderInput(
        sender_name=default.display_name, sender_address=default.address, reply_to=default.reply_to,
        senders=parse_senders(data.get("senders"), default),
        daily_external_recipient_limit=check_daily_limit(data.get("daily_external_recipient_limit"),
                                                         "daily_external_recipient_limit"),
        azure_tenant=_azure_tenant(_required(data, "azure_tenant")),
        client_id=_guid(_required(data, "client_id"), "client_id"),
        client_secret=_secret(secret),
        certificate=parse_certificate_pem(pem) if pem is not None else None,
        secret_expires_at=_expiry(_optional(data, "secret_expires_at")),
        admin_contact_email=(check_address(a, "admin_contact_email")
                             if (a := _optional(data, "admin_contact_email")) else None),
        cloud=_choice(data.get("cloud", "global"), "cloud", tuple(CLOUDS)),
    )


def parse_senders(value: object, default: SenderIdentity) -> tuple[SenderIdentity, ...]:
    """The `senders` object: name → address, display_name, reply_to, daily_recipient_limit.

    `default` is the top-level sender (`sender_address`, `sender_name`, `reply_to`); under
    `senders.default` only its `daily_recipient_limit` may differ, so a GET's document saves back as is.
    """
    if value is None:
        return ()
    if not isinstance(value, Mapping):
        raise ValidationFailed("senders", "must be an object of sender name to sender")
    if len(value) > MAX_SENDERS:
        raise ValidationFailed("senders", f"at most {MAX_SENDERS} senders")
    out: list[SenderIdentity] = []
    addresses: dict[str, str] = {default.address.lower(): DEFAULT_SENDER}
    for raw_name, item in value.items():
        name = check_sender_name(raw_name, "senders")
        sender = _sender(name, item, default)
        if name != DEFAULT_SENDER and (other := addresses.setdefault(sender.address.lower(), name)) != name:
            raise ValidationFailed(f"senders.{name}.address", f"is already the address of sender {other!r}")
        out.append(sender)
    return tuple(out)


def _sender(name: str, item: object, default: SenderIdentity) -> SenderIdentity:
    prefix = f"senders.{name}"
    if not isinstance(item, Mapping):
        raise ValidationFailed(prefix, "must be an object with address, display_name, reply_to, daily_recipient_limit")
    unknown = sorted(str(k) for k in item if k not in _SENDER_KEYS)
    if unknown:
        raise ValidationFailed(f"{prefix}.{unknown[0]}", "is not a known field")
    limit = check_daily_limit(item.get("daily_recipient_limit"), f"{prefix}.daily_recipient_limit")
    if name == DEFAULT_SENDER:
        for key, top, mine in (("address", "sender_address", default.address),
                               ("display_name", "sender_name", default.display_name),
                               ("reply_to", "reply_to", default.reply_to)):
            if _optional(item, key) is not None and _optional(item, key) != mine:
                raise ValidationFailed(f"{prefix}.{key}", f"the default sender's is {top}; give it there")
        return SenderIdentity(DEFAULT_SENDER, default.address, default.display_name, default.reply_to, limit)
    return SenderIdentity(
        name, address=check_address(_required(item, "address", prefix), f"{prefix}.address"),
        display_name=check_line(_optional(item, "display_name"), f"{prefix}.display_name", 200) or None,
        reply_to=check_address(r, f"{prefix}.reply_to") if (r := _optional(item, "reply_to")) else None,
        daily_recipient_limit=limit)


def _optional(data: Mapping[str, Any], name: str) -> Any:
    value = data.get(name)
    return None if value == "" else value


def _required(data: Mapping[str, Any], name: str, prefix: str = "") -> Any:
    value = _optional(data, name)
    if value is None:
        raise ValidationFailed(f"{prefix}.{name}" if prefix else name, "is required")
    return value


def _choice(value: object, name: str, choices: tuple[str, ...]) -> str:
    if not isinstance(value, str) or value not in choices:
        raise ValidationFailed(name, f"must be one of {', '.join(choices)}")
    return value


def _text(value: object, name: str, max_chars: int) -> str:
    line = check_line(value, name, max_chars)
    if not line or line != line.strip():
        raise ValidationFailed(name, "must not be empty or have leading or trailing spaces")
    return line


def _guid(value: object, name: str) -> str:
    text = _text(value, name, 36)
    if not _GUID.fullmatch(text):
        raise ValidationFailed(name, "must be a GUID like 00000000-0000-0000-0000-000000000000")
    return text.lower()


def _azure_tenant(value: object) -> str:
    text = _text(value, "azure_tenant", 253)
    if _GUID.fullmatch(text):
        return text.lower()
    if _DOMAIN.fullmatch(text):
        return text.lower()
    raise ValidationFailed("azure_tenant", "must be the Directory (tenant) ID GUID or a verified domain")


def _secret(value: object) -> str | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed("client_secret", "must be a string")
    if len(value) > _SECRET_MAX or len(value) < 8:
        raise ValidationFailed("client_secret", f"must be 8-{_SECRET_MAX} characters (the secret's Value)")
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in value) or value != value.strip():
        raise ValidationFailed("client_secret", "must not contain line breaks, control characters or outer spaces")
    return value


def _expiry(value: object) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise ValidationFailed("secret_expires_at", "must be an ISO 8601 date")
    try:
        parsed = datetime.fromisoformat(value) if "T" in value else datetime.combine(
            date.fromisoformat(value), datetime.min.time())
    except ValueError:
        raise ValidationFailed("secret_expires_at", "must be an ISO 8601 date (YYYY-MM-DD)") from None
    return as_utc(parsed)
