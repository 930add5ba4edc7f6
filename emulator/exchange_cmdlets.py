"""Exchange Online PowerShell cmdlets applied to the emulated directory: POST /_emulator/exchange/{tenant}/cmdlet.

Body `{"cmdlet": "New-ManagementRoleAssignment", "params": {"App": "...", "Role": "Application Mail.Send",
"CustomResourceScope": "..."}}`; parameter names as in PowerShell, without the dash, any case. Supported:
New-ServicePrincipal, New-ManagementScope, New-ManagementRoleAssignment, New-ApplicationAccessPolicy,
Test-ServicePrincipalAuthorization, Test-ApplicationAccessPolicy. Writes change the tenant's spec (so
GET /_emulator/directory shows them) and stamp role assignments with the emulator clock, from which
their propagation delay runs.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.directory import Directory, Tenant
from emulator.exchange import CmdletError, assignments, in_scope


def run_cmdlet(directory: Directory, tenant_ident: str, cmdlet: str, params: dict[str, Any], now_s: float) -> Any:
    """Apply one cmdlet; returns what PowerShell would output (as JSON). CmdletError on refusal."""
    tenant = directory.tenant(tenant_ident)
    if tenant is None:
        raise KeyError(f"no tenant {tenant_ident!r}")
    handler = _CMDLETS.get(cmdlet.lower())
    if handler is None:
        raise CmdletError(f"The term '{cmdlet}' is not recognized by this emulator.")
    p = {str(k).lower().lstrip("-"): v for k, v in params.items()}
    spec = directory.raw_tenant(tenant.id)
    result = handler(tenant, spec, p, now_s)
    if cmdlet.lower().startswith("new-"):
        directory.put_tenant(spec)
    return result


def _need(p: dict[str, Any], name: str) -> str:
    value = p.get(name.lower())
    if not value:
        raise CmdletError(f"Cannot process command because of one or more missing mandatory parameters: {name}.")
    return str(value)


def _new_service_principal(tenant: Tenant, spec: dict[str, Any], p: dict[str, Any], _now: float) -> Any:
    row = {"app_id": _need(p, "AppId").lower(), "object_id": _need(p, "ObjectId").lower(),
           "display_name": str(p.get("displayname") or p.get("appid"))}
    spec.setdefault("exchange", {}).setdefault("service_principals", []).append(row)
    return {"AppId": row["app_id"], "ObjectId": row["object_id"], "DisplayName": row["display_name"]}


def _new_management_scope(tenant: Tenant, spec: dict[str, Any], p: dict[str, Any], _now: float) -> Any:
    row = {"name": _need(p, "Name"), "filter": _need(p, "RecipientRestrictionFilter")}
    spec.setdefault("exchange", {}).setdefault("management_scopes", []).append(row)
    return {"Name": row["name"], "RecipientFilter": row["filter"], "ScopeRestrictionType": "RecipientScope"}


def _new_role_assignment(tenant: Tenant, spec: dict[str, Any], p: dict[str, Any], now_s: float) -> Any:
    app_id = _need(p, "App").lower()
    if not any(sp["app_id"] == app_id for sp in tenant.exchange.get("service_principals", [])):
        raise CmdletError(f"The operation couldn't be performed because object '{app_id}' couldn't be found. "
                          "Create it first with New-ServicePrincipal.")
    role = _need(p, "Role")
    if p.get("customresourcescope"):
        scope_type, scope = "CustomRecipientScope", str(p["customresourcescope"])
        if not any(s["name"].lower() == scope.lower() for s in tenant.exchange.get("management_scopes", [])):
            raise CmdletError(f"The management scope '{scope}' couldn't be found.")
    elif p.get("recipientadministrativeunitscope"):
        scope_type, scope = "AdministrativeUnit", str(p["recipientadministrativeunitscope"])
    else:
        scope_type, scope = "Organization", ""
    row = {"name": str(p.get("name") or f"{role}-{app_id}"), "app_id": app_id, "role": role,
           "scope_type": scope_type, "scope": scope, "created_at": now_s}
    spec.setdefault("exchange", {}).setdefault("role_assignments", []).append(row)
    return {"Name": row["name"], "Role": role, "RoleAssigneeName": app_id, "CustomResourceScope": scope}


def _new_access_policy(tenant: Tenant, spec: dict[str, Any], p: dict[str, Any], _now: float) -> Any:
    row = {"app_id": _need(p, "AppId").lower(), "scope": _need(p, "PolicyScopeGroupId").lower(),
           "access_right": str(p.get("accessright") or "RestrictAccess")}
    spec.setdefault("access_policies", []).append(row)
    return {"AppId": row["app_id"], "ScopeName": row["scope"], "AccessRight": row["access_right"]}


def _test_authorization(tenant: Tenant, _spec: dict[str, Any], p: dict[str, Any], _now: float) -> Any:
    app = tenant.apps.get(_need(p, "Identity").lower())
    resource = str(p.get("resource") or "")
    box = tenant.mailbox(resource) if resource else None
    if resource and box is None:
        raise CmdletError(f"The resource '{resource}' couldn't be found.")
    return [{"RoleName": r["role"], "GrantedPermissions": r["role"].removeprefix("Application "),
             "AllowedResourceScope": r["scope"] or "Organization", "ScopeType": r["scope_type"],
             "InScope": in_scope(tenant, r, box) if box is not None else "Not Run"}
            for r in assignments(tenant, app)]


def _test_access_policy(tenant: Tenant, _spec: dict[str, Any], p: dict[str, Any], _now: float) -> Any:
    identity, app_id = _need(p, "Identity"), _need(p, "AppId")
    box = tenant.mailbox(identity)
    address = box.address if box is not None else identity.lower()
    granted = tenant.policy_allows(app_id, address)
    return {"AppId": app_id.lower(), "Mailbox": address, "AccessCheckResult": "Granted" if granted else "Denied"}


_CMDLETS: dict[str, Callable[[Tenant, dict[str, Any], dict[str, Any], float], Any]] = {
    "new-serviceprincipal": _new_service_principal,
    "new-managementscope": _new_management_scope,
    "new-managementroleassignment": _new_role_assignment,
    "new-applicationaccesspolicy": _new_access_policy,
    "test-serviceprincipalauthorization": _test_authorization,
    "test-applicationaccesspolicy": _test_access_policy,
}
