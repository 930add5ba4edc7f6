"""The setup guide of one tenant: its exact steps to send through its own Microsoft 365, with its values filled in.

Written from the product document's Steps 1-5 and Microsoft's "RBAC for Applications in Exchange Online"
(reference: exchange-rbac-and-limits.md §1). RBAC for Applications is the recommended scope; the
Application Access Policy is kept as the legacy alternative. Each step's `commands` are PowerShell lines,
one command per line, ready to paste; what the admin must still look up stays an `<UPPERCASE>` placeholder
(the enterprise application's object id is shown only in the portal).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from shared.clouds import CLOUDS

SCOPE_NAME = "tenantmail senders"
ENTERPRISE_APP_OBJECT_ID = "<ENTERPRISE_APP_OBJECT_ID>"
APP_PLACEHOLDER, SENDER_PLACEHOLDER = "<APP_CLIENT_ID>", "<SENDER_MAILBOX>"
# Per cloud: where apps are registered (Microsoft Learn, "National clouds": each has its own portal) and
# Exchange Online PowerShell's environment name.
_PORTAL = {"global": "https://entra.microsoft.com", "usgov_high": "https://portal.azure.us",
           "usgov_dod": "https://portal.azure.us", "china": "https://portal.azure.cn"}
_EXCHANGE_ENVIRONMENT = {"usgov_high": "O365USGovGCCHigh", "usgov_dod": "O365USGovDoD", "china": "O365China"}


@dataclass(frozen=True, slots=True)
class Step:
    """One step: what to do, and the PowerShell lines to run (none for portal steps)."""

    id: str
    title: str
    text: list[str]
    commands: list[str] = field(default_factory=list)


def setup_guide(client_id: str | None, senders: list[str], cloud: str) -> dict[str, Any]:
    """The guide for an app id, its sender mailbox(es) and a cloud name (from shared.clouds)."""
    app = client_id or APP_PLACEHOLDER
    boxes = senders or [SENDER_PLACEHOLDER]
    portal, graph = _PORTAL[cloud], CLOUDS[cloud].graph_base.removesuffix("/v1.0")
    steps = [_register(portal), _permission(portal, graph), _credential(portal), _rbac(app, boxes, cloud),
             _access_policy(app, boxes, cloud), _propagation(app, boxes[0])]
    return {"client_id": app, "senders": boxes, "cloud": cloud, "portal": portal, "graph_host": graph,
            "steps": [asdict(s) for s in steps]}


def _register(portal: str) -> Step:
    return Step("register", "1. Register an app in Entra ID", [
        f"Sign in to {portal} as an Application Administrator or Global Administrator.",
        "Identity > Applications > App registrations > New registration: name it \"tenantmail sender\", "
        "Accounts in this organizational directory only (single tenant), no redirect URI; Register.",
        "From its Overview copy the Application (client) ID and the Directory (tenant) ID for the form below.",
        "Then open Identity > Applications > Enterprise applications > the same app and copy its Object ID: "
        "this enterprise application (service principal) id, not the app registration's Object ID, is "
        f"{ENTERPRISE_APP_OBJECT_ID} in step 4."])


def _permission(portal: str, graph: str) -> Step:
    return Step("permission", "2. The Mail.Send application permission", [
        "With RBAC for Applications (step 4, recommended) Exchange grants Mail.Send: grant nothing in Entra ID. "
        "If Mail.Send was consented already, remove it (API permissions > Mail.Send > Remove permission, or "
        f"Enterprise applications > the app > Permissions > Revoke) in {portal}.",
        "Warning: a tenant-wide Mail.Send admin consent that remains cancels the scope: Exchange adds its grants "
        "to Entra's, so the app could still send as every mailbox. Send test warns when the token carries it.",
        "With an Application Access Policy (step 5, legacy) instead: API permissions > Add a permission > "
        f"Microsoft Graph ({graph}) > Application permissions (not Delegated) > Mail.Send > Add permissions, "
        "then Grant admin consent; the policy then restricts it."])


def _credential(portal: str) -> Step:
    return Step("credential", "3. A client secret or a certificate", [
        f"Secret: in {portal}, the app registration > Certificates & secrets > Client secrets > New client secret; "
        "choose an expiry (24 months at most, shorter is better) and copy its Value (not its Secret ID) at once: "
        "it is shown only then.",
        "Enter the secret's expiry date in the form (Secret expiry date) so reminders go out 30 and 7 days "
        "before; or grant the app Application.Read.All and tenantmail reads it from Microsoft Graph on save.",
        "Certificate (instead of a secret): create a key and a certificate, upload tenantmail.crt under "
        "Certificates & secrets > Certificates, and paste tenantmail.key followed by tenantmail.crt into the "
        "certificate field; its notAfter is the expiry reminders use."],
        ["openssl req -x509 -newkey rsa:2048 -nodes -keyout tenantmail.key -out tenantmail.crt -days 365 "
         "-subj \"/CN=tenantmail sender\""])


def _connect(cloud: str) -> str:
    environment = _EXCHANGE_ENVIRONMENT.get(cloud)
    return "Connect-ExchangeOnline" + (f" -ExchangeEnvironmentName {environment}" if environment else "")


def _rbac(app: str, boxes: list[str], cloud: str) -> Step:
    recipients = " -or ".join(f"PrimarySmtpAddress -eq '{b}'" for b in boxes)
    return Step("rbac", "4. Scope the app to its sender(s) with RBAC for Applications (recommended)", [
        "In Exchange Online PowerShell (Install-Module ExchangeOnlineManagement once), as an Exchange "
        f"administrator; replace {ENTERPRISE_APP_OBJECT_ID} with the enterprise application's Object ID (step 1).",
        "Instead of a management scope you may use an Entra administrative unit holding the sender mailbox(es): "
        "New-ManagementRoleAssignment -App … -Role \"Application Mail.Send\" -RecipientAdministrativeUnitScope "
        "<ADMINISTRATIVE_UNIT_ID>.",
        "The check bypasses Exchange's cache: InScope True for the sender, False for any other mailbox."], [
        _connect(cloud),
        f'New-ServicePrincipal -AppId "{app}" -ObjectId "{ENTERPRISE_APP_OBJECT_ID}" -DisplayName "tenantmail sender"',
        f'New-ManagementScope -Name "{SCOPE_NAME}" -RecipientRestrictionFilter "{recipients}"',
        f'New-ManagementRoleAssignment -App "{app}" -Role "Application Mail.Send" -CustomResourceScope "{SCOPE_NAME}"',
        *(f'Test-ServicePrincipalAuthorization -Identity "{app}" -Resource "{b}"' for b in boxes)])


def _access_policy(app: str, boxes: list[str], cloud: str) -> Step:
    group = boxes[0] if len(boxes) == 1 else "<MAIL_ENABLED_SECURITY_GROUP>"
    several = ("" if len(boxes) == 1 else " For several senders, create a mail-enabled security group holding "
               f"{', '.join(boxes)} and use its address as <MAIL_ENABLED_SECURITY_GROUP>.")
    return Step("access_policy", "5. Or: an Application Access Policy (legacy)", [
        "Microsoft replaces these with RBAC for Applications and asks not to create new ones; use this only "
        "where RBAC for Applications is not available to you. It needs Mail.Send consented in Entra ID (step 2)."
        + several,
        "Test-ApplicationAccessPolicy answers AccessCheckResult Granted for the sender, Denied for any other "
        "mailbox."], [
        _connect(cloud),
        f'New-ApplicationAccessPolicy -AppId "{app}" -PolicyScopeGroupId "{group}" -AccessRight RestrictAccess '
        '-Description "Restrict tenantmail to its sender mailboxes"',
        *(f'Test-ApplicationAccessPolicy -Identity "{b}" -AppId "{app}"' for b in boxes)])


def _propagation(app: str, sender: str) -> Step:
    return Step("propagation", "6. Wait, then save and Send test", [
        "Exchange caches these permissions: a change takes effect after 30 minutes to 2 hours. Until then Send "
        "test may answer ErrorAccessDenied; the Test- cmdlets above already show the new state.",
        f"Then save here: Application (client) ID {app}, Sender email address {sender}, the Directory (tenant) "
        "ID and the secret or certificate; and use Send test."])
