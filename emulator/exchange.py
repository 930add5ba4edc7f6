"""Exchange Online RBAC for Applications, as the emulator models it, and the cmdlets that change it.

Model (Microsoft Learn, "Role Based Access Control for Applications in Exchange Online",
https://learn.microsoft.com/exchange/permissions-exo/application-rbac):

- An Exchange service principal points at the app's *enterprise application* (`New-ServicePrincipal
  -AppId <appId> -ObjectId <enterprise application object id>`). One created with another object id
  (the app registration's, a common mistake) is kept but grants nothing.
- A role assignment gives the app a role ("Application Mail.Send", "Application Mail Full Access")
  over a management scope (a recipient filter), an administrative unit, or the whole organisation.
- Grants are a union with Entra ID: a token carrying `Mail.Send` may send as any mailbox whatever
  the scope; RBAC grants never appear in the token's `roles`.
- A new assignment takes effect after `rbac_propagation_s` of emulator time (Microsoft documents
  30 minutes to 2 hours of caching); `Test-ServicePrincipalAuthorization` bypasses that cache.

Tenant spec keys: `admin_units: [{id, name, members}]`, `exchange: {service_principals: [{app_id,
object_id, display_name}], management_scopes: [{name, filter}], role_assignments: [{name, app_id, role,
scope_type, scope, created_at}]}`, and per mailbox `attributes: {CustomAttribute1: ..., Department: ...}`.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from emulator.directory import App, Mailbox, Tenant

SEND_ROLES = frozenset({"application mail.send", "application mail full access"})
_TOKEN = re.compile(r"\s*(\(|\)|-and\b|-or\b|-not\b|'(?:[^']|'')*'|\"[^\"]*\"|-[A-Za-z]+|[A-Za-z0-9_.@]+)", re.I)


class CmdletError(ValueError):
    """What Exchange PowerShell would print as an error for a cmdlet."""


def decide(tenant: Tenant, app: App | None, box: Mailbox, now_s: float, propagation_s: float) -> str:
    """`granted`, `propagating` (granted once the cache refreshes), `out_of_scope` or `none`."""
    rows = [r for r in assignments(tenant, app) if r["role"].lower() in SEND_ROLES]
    if not rows:
        return "none"
    inside = [r for r in rows if in_scope(tenant, r, box)]
    if not inside:
        return "out_of_scope"
    if any(float(r.get("created_at") or 0) + propagation_s <= now_s for r in inside):
        return "granted"
    return "propagating"


def assignments(tenant: Tenant, app: App | None) -> list[dict[str, Any]]:
    """The app's role assignments that work: only behind a service principal naming its enterprise app."""
    if app is None:
        return []
    exo = tenant.exchange
    principals = [p for p in exo.get("service_principals", []) if str(p["app_id"]).lower() == app.client_id]
    if not any(str(p.get("object_id", "")).lower() == app.service_principal_id.lower() for p in principals):
        return []
    return [r for r in exo.get("role_assignments", []) if str(r["app_id"]).lower() == app.client_id]


def in_scope(tenant: Tenant, assignment: dict[str, Any], box: Mailbox) -> bool:
    """Whether `box` is inside the assignment's scope."""
    kind, scope = assignment.get("scope_type", "Organization"), str(assignment.get("scope") or "")
    if kind == "Organization":
        return True
    if kind == "AdministrativeUnit":
        unit = next((u for u in tenant.admin_units if scope.lower() in (u["id"].lower(), u["name"].lower())), None)
        return unit is not None and box.address in {m.lower() for m in unit.get("members", [])}
    found = next((s for s in tenant.exchange.get("management_scopes", []) if s["name"].lower() == scope.lower()),
                 None)
    return found is not None and matches_filter(tenant, str(found["filter"]), box)


def matches_filter(tenant: Tenant, text: str, box: Mailbox) -> bool:
    """Evaluate an OPATH recipient filter (`-eq`, `-ne`, `-like`, `-and`, `-or`, `-not`, parentheses) on a
    mailbox; properties: PrimarySmtpAddress, WindowsEmailAddress, Alias, MemberOfGroup, and any attribute."""
    tokens = [t for t in _TOKEN.findall(text)]
    if "".join(tokens).replace(" ", "") != re.sub(r"\s+", "", text):
        raise CmdletError(f"The recipient filter {text!r} could not be parsed.")
    value, rest = _or(tenant, tokens, box)
    if rest:
        raise CmdletError(f"The recipient filter {text!r} has unexpected {rest[0]!r}.")
    return value


def _or(tenant: Tenant, tokens: list[str], box: Mailbox) -> tuple[bool, list[str]]:
    return _chain("-or", _and, tenant, tokens, box)


def _and(tenant: Tenant, tokens: list[str], box: Mailbox) -> tuple[bool, list[str]]:
    return _chain("-and", _term, tenant, tokens, box)


def _chain(op: str, operand: Any, tenant: Tenant, tokens: list[str], box: Mailbox) -> tuple[bool, list[str]]:
    # Left to right, every operand evaluated (OPATH has no side effects): `a op b op c`.
    value, tokens = operand(tenant, tokens, box)
    while tokens and tokens[0].lower() == op:
        right, tokens = operand(tenant, tokens[1:], box)
        value = (value or right) if op == "-or" else (value and right)
    return value, tokens


def _term(tenant: Tenant, tokens: list[str], box: Mailbox) -> tuple[bool, list[str]]:
    if not tokens:
        raise CmdletError("The recipient filter ends too early.")
    if tokens[0].lower() == "-not":
        value, rest = _term(tenant, tokens[1:], box)
        return not value, rest
    if tokens[0] == "(":
        value, rest = _or(tenant, tokens[1:], box)
        if not rest or rest[0] != ")":
            raise CmdletError("The recipient filter misses a ')'.")
        return value, rest[1:]
    if len(tokens) < 3:
        raise CmdletError("The recipient filter ends too early.")
    prop, op, literal = tokens[0], tokens[1].lower(), tokens[2].strip("'\"").replace("''", "'")
    return _compare(tenant, box, prop, op, literal), tokens[3:]


def _compare(tenant: Tenant, box: Mailbox, prop: str, op: str, literal: str) -> bool:
    actual = _property(tenant, box, prop)
    wanted = literal.lower()
    if op == "-eq":
        return wanted in actual
    if op == "-ne":
        return wanted not in actual
    if op == "-like":
        pattern = re.compile("^" + re.escape(wanted).replace(r"\*", ".*") + "$")
        return any(pattern.match(a) for a in actual)
    raise CmdletError(f"The operator {op!r} is not supported in this recipient filter.")


def _property(tenant: Tenant, box: Mailbox, prop: str) -> set[str]:
    name = prop.lower()
    if name in ("primarysmtpaddress", "windowsemailaddress"):
        return {box.address}
    if name == "alias":
        return {box.address.split("@")[0]}
    if name == "memberofgroup":
        return {g for g, members in tenant.groups.items() if box.address in members}
    return {str(v).lower() for k, v in box.attributes.items() if k.lower() == name}
