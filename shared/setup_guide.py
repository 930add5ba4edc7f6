"""The setup guide of one tenant: its exact steps to send through its own Microsoft 365, with its values filled in.

Written from the product document's Steps 1-5 and Microsoft's "RBAC for Applications in Exchange Online"
(reference: exchange-rbac-and-limits.md §1). RBAC for Applications is the recommended scope; the
Application Access Policy is kept as the legacy alternative. Each step's `commands` are PowerShell lines,
one command per line, ready to paste; what the admin must still look up stays an `<UPPERCASE>` placeholder.
The enterprise application's (service principal's) object id, which `New-ServicePrincipal -ObjectId` needs,
is filled in when tenantmail could read it from Graph (`GET /servicePrincipals(appId='…')`); otherwise step
1 says where to find it: the Enterprise applications blade, or `Get-MgServicePrincipal -Filter "appId eq
'…'"` in Microsoft Graph PowerShell.
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
# Microsoft Graph PowerShell's environment names (Get-MgEnvironment) for Connect-MgGraph -Environment.
_GRAPH_ENVIRONMENT = {"usgov_high": "USGov", "usgov_dod": "USGovDoD", "china": "China"}


@dataclass(frozen=True, slots=True)
class Step:
    """One step: what to do, and the PowerShell lines to run (none for portal steps)."""

    id: str
    title: str
    text: list[str]
    commands: list[str] = field(default_factory=list)


def setup_guide(client_id: str | None, senders: list[str], cloud: str, *,
                enterprise_app_id: str | None = None) -> dict[str, Any]:
    """The guide for an app id, its sender mailbox(es) and a cloud name (from shared.clouds); with the app's
    enterprise application object id when known (read from Graph), else a placeholder and how to find it."""
    app = client_id or APP_PLACEHOLDER
    boxes = senders or [SENDER_PLACEHOLDER]
    portal, graph = _PORTAL[cloud], CLOUDS[cloud].graph_base.removesuffix("/v1.0")
    steps = [_register(portal, app, cloud, enterprise_app_id), _permission(portal, graph), _credential(portal),
             _rbac(app, boxes, cloud, enterprise_app_id), _access_policy(app, boxes, cloud),
             _propagation(app, boxes[0])]
    return {"client_id": app, "senders": boxes, "cloud": cloud, "portal": portal, "graph_host": graph,
            "enterprise_app_object_id": enterprise_app_id, "steps": [asdict(s) for s in steps]}


def _register(portal: str, app: str, cloud: str, enterprise_app_id: str | None) -> Step:
    text = [
        f"Sign in to {portal} as an Application Administrator or Global Administrator.",
        "Identity > Applications > App registrations > New registration: name it \"tenantmail sender\", "
        "Accounts in this organizational directory only (single tenant), no redirect URI; Register.",
        "From its Overview copy the Application (client) ID and the Directory (tenant) ID for the form below."]
    if enterprise_app_id:
        return Step("register", "1. Register an app in Entra ID", [*text, (
            f"Its enterprise application (service principal) Object ID, {enterprise_app_id}, was read from "
            "Microsoft Graph when the settings were saved and is filled in step 4 (it is not the app "
            "registration's Object ID).")])
    environment = _GRAPH_ENVIRONMENT.get(cloud)
    return Step("register", "1. Register an app in Entra ID", [*text, (
        "Step 4 needs the Object ID of the app's enterprise application (its service principal), not the app "
        f"registration's Object ID: in {portal}, Identity > Applications > Enterprise applications, set "
        f"Application type to All applications, search for {app}, open it and copy Object ID from its "
        "Overview; or run the two lines below in Microsoft Graph PowerShell (Install-Module "
        "Microsoft.Graph.Applications once). Paste it over "
        f"{ENTERPRISE_APP_OBJECT_ID} in step 4."), (
        "tenantmail fills it in by itself after a save when the app may read its own service principal "
        "(Microsoft Graph Application.Read.All, with admin consent).")], [
        'Connect-MgGraph -Scopes "Application.Read.All"' + (f" -Environment {environment}" if environment else ""),
        f"(Get-MgServicePrincipal -Filter \"appId eq '{app}'\").Id"])


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


def _rbac(app: str, boxes: list[str], cloud: str, enterprise_app_id: str | None) -> Step:
    recipients = " -or ".join(f"PrimarySmtpAddress -eq '{b}'" for b in boxes)
    object_id = enterprise_app_id or ENTERPRISE_APP_OBJECT_ID
    replace = ("" if enterprise_app_id else
               f"; replace {ENTERPRISE_APP_OBJECT_ID} with the enterprise application's Object ID (step 1)")
    return Step("rbac", "4. Scope the app to its sender(s) with RBAC for Applications (recommended)", [
        "In Exchange Online PowerShell (Install-Module ExchangeOnlineManagement once), as an Exchange "
        f"administrator{replace}.",
        "Instead of a management scope you may use an Entra administrative unit holding the sender mailbox(es): "
        "New-ManagementRoleAssignment -App … -Role \"Application Mail.Send\" -RecipientAdministrativeUnitScope "
        "<ADMINISTRATIVE_UNIT_ID>.",
        "The check bypasses Exchange's cache: InScope True for the sender, False for any other mailbox."], [
        _connect(cloud),
        f'New-ServicePrincipal -AppId "{app}" -ObjectId "{object_id}" -DisplayName "tenantmail sender"',
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
