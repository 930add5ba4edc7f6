"""The demo directory of the quick start and a generator of many deterministic tenants."""

from __future__ import annotations

import uuid
from typing import Any

DEMO_TENANT_ID = "6f1c2d3e-4a5b-4c6d-8e7f-0a1b2c3d4e5f"
DEMO_CLIENT_ID = "0c0ffee0-aaaa-4bbb-8ccc-000000000001"
DEMO_CLIENT_SECRET = "demo-secret-value-contoso"
DEMO_EXPIRED_SECRET = "demo-secret-value-expired"
DEMO_SENDER = "governance@contoso.example"
DEMO_CEO = "ceo@contoso.example"
DEMO_UNLICENSED = "former.employee@contoso.example"
DEMO_GROUP = "mail-senders@contoso.example"

PLATFORM_TENANT_ID = "7a2b3c4d-5e6f-4a7b-9c8d-1e2f3a4b5c6d"
PLATFORM_CLIENT_ID = "0c0ffee0-aaaa-4bbb-8ccc-000000000002"
PLATFORM_CLIENT_SECRET = "demo-secret-value-platform"
PLATFORM_SENDER = "notifications@platform.example"
PLATFORM_NO_REPLY = "no-reply@platform.example"

_NAMESPACE = uuid.UUID("5b0c1c1e-0d6a-4a59-9a57-2f1f4e3b7c11")


def demo_directory() -> dict[str, Any]:
    """Two tenants: Contoso (access policy scoping the app to governance@) and a platform tenant."""
    contoso = {
        "id": DEMO_TENANT_ID,
        "display_name": "Contoso",
        "domains": ["contoso.onmicrosoft.example", "contoso.example"],
        "apps": [
            {
                "client_id": DEMO_CLIENT_ID,
                "display_name": "tenantmail (Contoso)",
                "secrets": [
                    {"id": "s1", "value": DEMO_CLIENT_SECRET, "expires_at": "2099-01-01T00:00:00Z"},
                    {"id": "s0", "value": DEMO_EXPIRED_SECRET, "expires_at": "2020-01-01T00:00:00Z"},
                ],
                "certificates": [],
                "roles": ["Mail.Send"],
                "admin_consent": True,
            }
        ],
        "mailboxes": [
            {
                "id": "1d8a6a0e-0000-4000-8000-000000000001",
                "address": DEMO_SENDER,
                "display_name": "Governance",
            },
            {"id": "1d8a6a0e-0000-4000-8000-000000000002", "address": DEMO_CEO, "display_name": "CEO"},
            {"id": "1d8a6a0e-0000-4000-8000-000000000003", "address": DEMO_UNLICENSED, "licensed": False},
        ],
        "groups": [{"address": DEMO_GROUP, "members": [DEMO_SENDER]}],
        "access_policies": [
            {"app_id": DEMO_CLIENT_ID, "scope": DEMO_GROUP, "access_right": "RestrictAccess"}
        ],
        "send_as": [],
    }
    return {"tenants": [contoso, _platform_tenant()]}


def _platform_tenant() -> dict[str, Any]:
    return {
        "id": PLATFORM_TENANT_ID,
        "display_name": "Platform",
        "domains": ["platform.onmicrosoft.example", "platform.example"],
        "apps": [
            {
                "client_id": PLATFORM_CLIENT_ID,
                "display_name": "tenantmail (Platform)",
                "secrets": [
                    {"id": "p1", "value": PLATFORM_CLIENT_SECRET, "expires_at": "2099-01-01T00:00:00Z"}
                ],
                "roles": ["Mail.Send"],
                "admin_consent": True,
            }
        ],
        "mailboxes": [
            {"id": "2e9b7b1f-0000-4000-8000-000000000001", "address": PLATFORM_SENDER},
            {"id": "2e9b7b1f-0000-4000-8000-000000000002", "address": PLATFORM_NO_REPLY},
            {
                "id": "2e9b7b1f-0000-4000-8000-000000000003",
                "address": "onprem@platform.example",
                "on_premises": True,
            },
        ],
        "groups": [],
        "access_policies": [],
        "send_as": [{"mailbox": PLATFORM_SENDER, "can_send_as": [PLATFORM_NO_REPLY]}],
    }


def tenant_id_for(index: int) -> str:
    """The GUID `make_tenant(index)` uses."""
    return str(uuid.uuid5(_NAMESPACE, f"tenant-{index}"))


def client_id_for(index: int) -> str:
    """The client id `make_tenant(index)` uses."""
    return str(uuid.uuid5(_NAMESPACE, f"app-{index}"))


def make_tenant(
    index: int,
    *,
    mailboxes: int = 1,
    secret: str | None = None,
    roles: tuple[str, ...] = ("Mail.Send",),
    admin_consent: bool = True,
    domain: str | None = None,
) -> dict[str, Any]:
    """A tenant dict derived only from `index`: GUIDs, domain `tenant{index}.example`,
    mailboxes `sender{n}@<domain>`, one app whose secret defaults to `secret-{index}`.
    """
    domain = domain or f"tenant{index}.example"
    return {
        "id": tenant_id_for(index),
        "display_name": f"Tenant {index}",
        "domains": [domain],
        "apps": [
            {
                "client_id": client_id_for(index),
                "display_name": f"tenantmail ({index})",
                "secrets": [
                    {"id": "s1", "value": secret or f"secret-{index}", "expires_at": "2099-01-01T00:00:00Z"}
                ],
                "roles": list(roles),
                "admin_consent": admin_consent,
            }
        ],
        "mailboxes": [
            {"id": str(uuid.uuid5(_NAMESPACE, f"mailbox-{index}-{n}")), "address": f"sender{n}@{domain}"}
            for n in range(mailboxes)
        ],
        "groups": [],
        "access_policies": [],
        "send_as": [],
    }
