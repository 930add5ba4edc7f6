"""What a delivery error means and how to fix it, for admins and operators.

Keyed on the recorded code (never on its message text): our own (`shared.codes.Code`) or the
service's, passed through (Graph, Entra ID, the SMTP relay's reply class); except where Microsoft
uses one code for two causes: ErrorAccessDenied is an Application Access Policy refusal when the message carries the
policy marker "[RAOP]" / "AccessPolicy", and a missing Mail.Send permission otherwise.
"""

from __future__ import annotations

from dataclasses import dataclass

from shared.codes import Code


@dataclass(frozen=True, slots=True)
class Diagnosis:
    """A one-line cause and the fix."""

    cause: str
    fix: str

    def __str__(self) -> str:
        return f"{self.cause} Fix: {self.fix}"


_BUG = Diagnosis("Microsoft refused the shape of tenantmail's own request.",
                 "This is a tenantmail bug (or a proxy altering requests); report it with the request id.")

_BY_SERVICE_CODE: dict[str, Diagnosis] = {
    "ErrorAccessDenied": Diagnosis(
        "The app lacks the Mail.Send application permission, or admin consent was not granted.",
        "In Entra ID > App registrations > API permissions, add Microsoft Graph > Application "
        "permissions > Mail.Send and click 'Grant admin consent'."),
    "ErrorInvalidUser": Diagnosis(
        "The sender mailbox does not exist in the tenant (or is a group, not a mailbox).",
        "Check the sender email address; it must be a user mailbox in the Microsoft 365 tenant."),
    "MailboxNotEnabledForRESTAPI": Diagnosis(
        "The sender mailbox is unlicensed, inactive, soft-deleted or hosted on-premises.",
        "Assign an Exchange Online licence to the sender, or choose a cloud mailbox."),
    "ErrorSendAsDenied": Diagnosis(
        "The mailbox used to send has no Send As right on the From address.",
        "Grant Send As on the From mailbox (Add-RecipientPermission) or send from that mailbox itself."),
    "ErrorInvalidRecipients": Diagnosis(
        "Graph refused a recipient address.", "Correct the recipient addresses of the notification."),
    "ErrorMessageSizeExceeded": Diagnosis(
        "The message exceeds the mailbox's maximum send size.", "Send smaller attachments or raise MaxSendSize."),
    "InvalidInternetMessageHeader": Diagnosis(
        "A custom header does not start with 'X-'.", "Name custom headers X-Something."),
    "InvalidAuthenticationToken": Diagnosis(
        "Graph rejected the access token twice in a row.", "Check the system clock and the tenant's cloud setting."),
    "AADSTS90002": Diagnosis(
        "The Azure tenant ID was not found in this cloud.",
        "Copy the Directory (tenant) ID from the app's Overview page, and check the cloud "
        "(global, GCC High, DoD, China)."),
    "AADSTS900023": Diagnosis(
        "The Azure tenant ID is malformed (neither a GUID nor a domain).",
        "Paste the Directory (tenant) ID GUID from the app's Overview page."),
    "AADSTS700016": Diagnosis(
        "The application (client) ID is not registered in that tenant.",
        "Copy the Application (client) ID from the app's Overview page, and check the tenant ID matches."),
    "AADSTS65001": Diagnosis(
        "An administrator has not consented to the app's Mail.Send application permission in this tenant.",
        "In API permissions, click 'Grant admin consent for <tenant>' (a Global or Privileged Role Administrator)."),
    "AADSTS7000112": Diagnosis(
        "The application is disabled in this tenant.",
        "In Enterprise applications, open the app's Properties and set 'Enabled for users to sign-in' to Yes."),
    "AADSTS7000229": Diagnosis(
        "The app has no service principal (enterprise application) in this tenant.",
        "Have a tenant administrator grant admin consent to the app, which creates its service principal."),
    "AADSTS7000215": Diagnosis(
        "The client secret is wrong; often the secret's ID was pasted instead of its Value.",
        "Create a new client secret and paste its Value (shown only once) into the settings."),
    "AADSTS7000222": Diagnosis(
        "The client secret has expired.",
        "Create a new client secret in Certificates & secrets and save it here; rotate 30 days before expiry."),
    "AADSTS7000218": Diagnosis(
        "No client secret or certificate was sent.", "Enter the client secret (or certificate) in the settings."),
    "AADSTS700027": Diagnosis(
        "Entra ID could not verify the certificate: the app has no certificate with this thumbprint, "
        "the key does not match it, or it has expired.",
        "In Entra ID > App registrations > your app > Certificates & secrets > Certificates, upload the "
        "certificate's public part (the .cer/.pem, never the private key); check its thumbprint there matches "
        "the one shown here and that it has not expired; then save the matching private key and certificate "
        "here."),
    "AADSTS700024": Diagnosis(
        "Entra ID refused the certificate's signed assertion as outside its valid time range: this server's "
        "clock is off.",
        "Synchronise the clock of the machines running tenantmail (NTP), then save again."),
    "AADSTS1002012": _BUG,
    "AADSTS500011": Diagnosis(
        "Microsoft Graph was not found in the tenant for this cloud: usually the wrong cloud is selected "
        "(a GCC High, DoD or China tenant configured as global, or the reverse).",
        "Choose the cloud the tenant lives in (global, US Government GCC High, DoD, China) and save again."),
    "AADSTS50027": Diagnosis(
        "Entra ID could not read the certificate's signed assertion.",
        "Save the private key and certificate again as PEM; if it persists, report it as a tenantmail bug."),
    "AADSTS700021": Diagnosis(
        "The certificate's signed assertion was made for another authority: the cloud or the tenant ID does "
        "not match where the app lives.",
        "Check the Directory (tenant) ID and the cloud, then save again."),
    "AADSTS700023": Diagnosis(
        "The certificate's signed assertion names another application than the client ID.",
        "Check the Application (client) ID is the app the certificate was uploaded to."),
    "AADSTS90055": Diagnosis(
        "Entra ID is throttling token requests for this app.",
        "Nothing to do: tenantmail backs off and retries (one token per tenant per lifetime); if it persists, "
        "look for other software requesting tokens with the same app registration."),
    "AADSTS90033": Diagnosis(
        "Entra ID is temporarily unavailable.",
        "Nothing to do: it is retried; if it lasts, check Microsoft 365 service health."),
    "AADSTS90006": Diagnosis(
        "Entra ID had an internal error.", "Nothing to do: it is retried; if it lasts, check service health."),
    "AADSTS70003": _BUG, "AADSTS900144": _BUG, "AADSTS90014": _BUG,
    "RequestEntityTooLarge": Diagnosis(
        "The request to Graph is over its 4 MB limit (attachments count about a third more once encoded).",
        "Keep attachments under 3 MB in all, or send a link instead."),
    "BadRequest": _BUG, "ErrorInvalidRequest": _BUG, "ErrorInvalidRange": _BUG,
    "ErrorAttachmentSizeShouldNotBeLessThanMinimumSize": _BUG,
    "ErrorItemNotFound": Diagnosis(
        "A draft or upload session of a large attachment was gone (deleted in the mailbox, or its upload URL "
        "expired) before the upload finished.",
        "Nothing to do: the next attempt starts again with a new draft; if it lasts, check nothing in the mailbox "
        "deletes drafts."),
    "InvalidInternetMessageHeaderCollection": Diagnosis(
        "Graph refused the custom headers: an empty list, or more than 5 (Graph's limit).",
        "Send at most 5 custom X- headers per notification."),
    "ApplicationThrottled": Diagnosis(
        "Exchange throttled the app on this mailbox (more than 4 requests at once, too many in 10 minutes, or "
        "over 150 MB of large-attachment uploads in 5 minutes).",
        "Nothing to do: the mailbox is held for the Retry-After and the notification rescheduled; for sustained "
        "volume set TENANTMAIL_MAILBOX_PACING_MS or spread the load over more sender mailboxes."),
    "TooManyRequests": Diagnosis(
        "Graph is throttling this tenant or app.", "Nothing to do: the Retry-After is obeyed and it is retried."),
    "InternalServerError": Diagnosis("Graph had an internal error.", "Nothing to do: it is retried with backoff."),
    "SMTP535": Diagnosis(
        "The SMTP relay refused the platform's username or password.",
        "Fix TENANTMAIL_SMTP_USERNAME / TENANTMAIL_SMTP_PASSWORD and restart the workers."),
    "SMTP530": Diagnosis(
        "The SMTP relay requires authentication.", "Set TENANTMAIL_SMTP_USERNAME and TENANTMAIL_SMTP_PASSWORD."),
    "SMTP552": Diagnosis(
        "The message is larger than the SMTP relay accepts.", "Send smaller attachments or raise the relay's limit."),
}

# Ours: every member of Code has one (tests/test_diagnosis.py walks the enum).
_BY_CODE: dict[Code, Diagnosis] = {
    Code.NO_PROVIDER_CONFIGURED: Diagnosis(
        "The tenant has no email provider and the platform default (an SMTP relay) is not configured.",
        "Configure the tenant's provider, or set TENANTMAIL_SMTP_HOST (and _SMTP_PORT, _SMTP_SECURITY, "
        "_SMTP_USERNAME, _SMTP_PASSWORD) for the platform's no-reply sender."),
    Code.SMTP_NOT_SUPPORTED: Diagnosis(
        "The SMTP relay does not offer what the settings ask for (STARTTLS or AUTH).",
        "Check TENANTMAIL_SMTP_SECURITY (starttls on 587, tls on 465) against the relay."),
    Code.TLS_ERROR: Diagnosis(
        "TLS with the SMTP relay failed (certificate not trusted or wrong name).",
        "Trust the relay's CA (TENANTMAIL_CA_BUNDLE) or fix TENANTMAIL_SMTP_HOST; it is retried."),
    Code.AUTHORITY_UNREACHABLE: Diagnosis(
        "Entra ID could not be reached.", "Check outbound HTTPS to the cloud's login host; it is retried."),
    Code.WORKER_LOST: Diagnosis(
        "The worker sending this died mid-send; it may or may not have been delivered.",
        "Nothing to do: it is flagged possible_duplicate; check message trace if a copy matters."),
    Code.TIMEOUT: Diagnosis(
        "Graph did not answer in time; the message may have been accepted.",
        "Nothing to do: it is retried once and flagged possible_duplicate."),
    Code.CONNECTION_RESET: Diagnosis(
        "The connection to Graph (or the SMTP relay) broke after sending; the message may have been accepted.",
        "Nothing to do: it is retried once and flagged possible_duplicate."),
    Code.CONNECTION_REFUSED: Diagnosis("Graph (or the SMTP relay) could not be reached.",
                                   "Check outbound HTTPS (or SMTP to the relay); it is retried."),
    Code.MAX_AGE_EXCEEDED: Diagnosis(
        "The mailbox stayed throttled until the notification's maximum age.",
        "Lower the sending rate for this mailbox (TENANTMAIL_MAILBOX_PACING_MS) or raise the maximum age."),
    Code.CONNECT_TIMEOUT: Diagnosis(
        "Connecting to Graph timed out before anything was sent.",
        "Check outbound HTTPS to the cloud's Graph host; it is retried."),
    Code.TOKEN_LOCK_TIMEOUT: Diagnosis(
        "Another worker held this tenant's token lock too long (Entra ID slow to answer it).",
        "Nothing to do: it is retried; if it lasts, check the workers can reach the cloud's login host."),
    Code.TOKEN_SERVICE_ERROR: Diagnosis(
        "Entra ID's token endpoint failed or answered with something other than JSON.",
        "Nothing to do: it is retried; if it lasts, check a proxy is not rewriting the login host's answers."),
    Code.UNKNOWN_SENDER: Diagnosis(
        "The notification names a sender the tenant's provider no longer has (removed after it was queued).",
        "Add the sender back under the provider's senders and resend it, or resend it from another sender."),
    Code.LARGE_ATTACHMENT_UNSUPPORTED: Diagnosis(
        "The notification has an attachment of 3 MiB or more, and the tenant's provider in force can no longer "
        "send it (it was switched to the platform default after the notification was queued).",
        "Save the tenant's own Graph app again (with Mail.ReadWrite granted) and resend it."),
    Code.RECIPIENT_LIMIT_TOO_LOW: Diagnosis(
        "The message has more distinct recipients than its sender's daily recipient limit allows in all.",
        "Raise the sender's daily_recipient_limit, or split the message; it was not sent."),
    Code.PROVIDER_ERROR: Diagnosis(
        "The tenant's saved provider settings cannot be used (they no longer decrypt or parse).",
        "Save the tenant's provider settings again; check TENANTMAIL_ENCRYPTION_KEYS still holds the key "
        "they were saved with."),
    Code.INTERNAL_ERROR: Diagnosis(
        "tenantmail hit an unexpected error while sending (its log has the traceback).",
        "It is retried (once, flagged possible_duplicate, if the request may have left); report the log entry "
        "as a tenantmail bug."),
    Code.REDIS_UNAVAILABLE: Diagnosis(
        "Redis (tokens, mailbox slots, send marks) could not be reached; nothing was sent.",
        "Nothing to do for the message: it waits and is retried; check Redis is up and reachable."),
    Code.DATABASE_UNAVAILABLE: Diagnosis(
        "The database could not be reached or dropped the connection.",
        "Nothing to do for the message: it is retried; check the database is up and reachable."),
}

# Exchange RBAC for Applications (chosen by shared.access_diagnosis from the token's roles and the
# configuration's age, since Graph answers these with the same generic ErrorAccessDenied).
_BY_CODE.update({
    Code.RBAC_SCOPE_DENIED: Diagnosis(
        "The app has no Mail.Send in Entra ID, so only an Exchange RBAC for Applications role assignment can let "
        "it send, and the sender mailbox is outside that assignment's scope (or there is no assignment).",
        "Run Test-ServicePrincipalAuthorization -Identity <client id> -Resource <sender>: no row means no "
        "assignment (New-ManagementRoleAssignment -App <client id> -Role \"Application Mail.Send\" "
        "-CustomResourceScope <scope>); InScope False means widen the scope's recipient filter or use a sender "
        "inside it; InScope True means the change is still propagating (up to 2 hours). Held notifications go "
        "out when the settings are saved again."),
    Code.RBAC_PROPAGATING: Diagnosis(
        "The app's Exchange RBAC for Applications grant was changed recently and Exchange still caches the old "
        "one (30 minutes for an idle app, up to 2 hours for an active one).",
        "Check with Test-ServicePrincipalAuthorization -Identity <client id> -Resource <sender> (it bypasses the "
        "cache): InScope True means wait and Send test again, then save the settings to send what is held; "
        "InScope False means fix the scope."),
    Code.MAIL_SEND_TENANT_WIDE: Diagnosis(
        "Mail.Send is consented tenant-wide in Entra ID: Exchange RBAC for Applications grants add to it, so an "
        "RBAC scope restricts nothing and the app can send as any mailbox.",
        "Remove the Microsoft Graph Mail.Send application permission (and its consent) and rely on the RBAC role "
        "assignment, or scope with an Application Access Policy (checked with Test-ApplicationAccessPolicy)."),
})

_BY_SERVICE_CODE.update({
    "NoPermissionsInAccessToken": Diagnosis(
        "The app has no application permission at all: no Mail.Send consented in Entra ID and no Exchange RBAC "
        "for Applications role assignment.",
        "Assign it with RBAC for Applications (recommended): New-ServicePrincipal, New-ManagementScope, "
        "New-ManagementRoleAssignment -Role \"Application Mail.Send\"; check with "
        "Test-ServicePrincipalAuthorization -Identity <client id> -Resource <sender>."),
    # Answers of Graph's directory routes (GET /applications(appId=…), read for a secret's expiry).
    "Authorization_RequestDenied": Diagnosis(
        "The app may not read its own registration (no Application.Read.All), so the secret's expiry could not "
        "be read from Microsoft Graph.",
        "Enter the secret's expiry date in the settings, or add Microsoft Graph > Application permissions > "
        "Application.Read.All with admin consent and save again."),
    "Request_ResourceNotFound": Diagnosis(
        "Microsoft Graph does not know this application (client) ID in the tenant.",
        "Check the Application (client) ID on the app's Overview page."),
})

_POLICY = Diagnosis(
    "The sender mailbox is outside the app's Application Access Policy.",
    "Add the sender to the policy's mail-enabled security group (or use a sender inside it), then check with "
    "Test-ApplicationAccessPolicy -Identity <sender> -AppId <client id>; changes can take an hour to apply.")
_BY_CODE[Code.ACCESS_POLICY_DENIED] = _POLICY  # the worker records the refusal under this code


def diagnose(code: str | None, message: str | None = None) -> Diagnosis | None:
    """The diagnosis for a recorded error code, or None when there is nothing to say."""
    if not code:
        return None
    if code == "ErrorAccessDenied" and message and ("RAOP" in message or "AccessPolicy" in message):
        return _POLICY
    if code == "BadRequest" and message and "request length" in message.lower():
        return _BY_SERVICE_CODE["RequestEntityTooLarge"]  # how Graph said "over 4 MB" before it answered 413
    if code.startswith("HTTP5") or code in ("ServiceUnavailable", "MailboxInfoStale", "UnknownError"):
        return Diagnosis("Graph had a transient failure.", "Nothing to do: it is retried with backoff.")
    return _ours(code) or _BY_SERVICE_CODE.get(code) or _smtp(code)


def _ours(code: str) -> Diagnosis | None:
    try:
        return _BY_CODE.get(Code(code))
    except ValueError:  # not one of ours: a service's code
        return None


def _smtp(code: str) -> Diagnosis | None:
    # SMTP replies of the platform default's relay: 4xx is "try later", 5xx "never".
    if code.startswith("SMTP4"):
        return Diagnosis("The SMTP relay deferred the message (a temporary refusal).",
                         "Nothing to do: it is retried with backoff.")
    if code.startswith("SMTP5"):
        return Diagnosis("The SMTP relay refused the message permanently (see its reply for why: unknown "
                         "recipient, policy, content).",
                         "Correct the recipient or content the relay's reply names; it is not retried.")
    return None
