"""The Entra ID (ESTS) error catalogue and envelope.

Texts follow docs/reference §2.3. Statuses marked UNVERIFIED there come from EmulatorConfig.
"""

from __future__ import annotations

import datetime as dt
from typing import Any

# problem key -> (HTTP status or config field name, OAuth2 error, AADSTS code, description template)
CATALOGUE: dict[str, tuple[int | str, str, int, str]] = {
    "tenant_not_found": (
        400,
        "invalid_request",
        90002,
        "AADSTS90002: Tenant '{tenant}' not found. Check to make sure you have the correct tenant ID and are "
        "signing into the correct cloud. Check with your subscription administrator, this may happen if "
        "there "
        "are no active subscriptions for the tenant.",
    ),
    "tenant_empty_guid": (
        400,
        "invalid_request",
        90002,
        "AADSTS90002: Requested tenant identifier '00000000-0000-0000-0000-000000000000' is not valid. "
        "Tenant identifiers may not be an empty GUID.",
    ),
    "tenant_malformed": (
        400,
        "invalid_request",
        900023,
        "AADSTS900023: Specified tenant identifier '{tenant}' is neither a valid DNS name, nor a valid "
        "external domain.",
    ),
    "grant_type": (
        400,
        "unsupported_grant_type",
        70003,
        "AADSTS70003: The app requested an unsupported grant type '{grant_type}'.",
    ),
    "missing_param": (
        400,
        "invalid_request",
        900144,
        "AADSTS900144: The request body must contain the following parameter: '{param}'.",
    ),
    "missing_scope": (
        400,
        "invalid_request",
        90014,
        "AADSTS90014: The required field 'scope' is missing from the credential. Ensure that you have all "
        "the "
        "necessary parameters for the login request.",
    ),
    "scope_not_default": (
        400,
        "invalid_scope",
        1002012,
        "AADSTS1002012: The provided value for scope {scope} is not valid. Client credential flows must "
        "have a "
        "scope value with /.default suffixed to the resource identifier (application ID URI).",
    ),
    "unknown_resource": (
        400,
        "invalid_resource",
        500011,
        "AADSTS500011: The resource principal named {resource} was not found in the tenant named "
        "{tenant_name}. "
        "This can happen if the application has not been installed by the administrator of the tenant or "
        "consented to by any user in the tenant. You might have sent your authentication request to the "
        "wrong "
        "tenant.",
    ),
    "app_not_found": (
        "unauthorized_client_status",
        "unauthorized_client",
        700016,
        "AADSTS700016: Application with identifier '{client_id}' was not found in the directory "
        "'{tenant_name}'. This can happen if the application has not been installed by the administrator of "
        "the tenant or consented to by any user in the tenant. You may have sent your authentication request "
        "to the wrong tenant.",
    ),
    "no_credential": (
        401,
        "invalid_client",
        7000218,
        "AADSTS7000218: The request body must contain the following parameter: 'client_assertion' or "
        "'client_secret'.",
    ),
    "wrong_secret": (
        401,
        "invalid_client",
        7000215,
        "AADSTS7000215: Invalid client secret provided. Ensure the secret being sent in the request is the "
        "client secret value, not the client secret ID, for a secret added to app '{client_id}'.",
    ),
    "expired_secret": (
        401,
        "invalid_client",
        7000222,
        "AADSTS7000222: The provided client secret keys for app '{client_id}' are expired. Visit the Azure "
        "portal to create new keys for your app: https://aka.ms/NewClientSecret, or consider using "
        "certificate credentials for added security: https://aka.ms/certCreds.",
    ),
    "assertion_signature": (
        "assertion_failure_status",
        "invalid_client",
        700027,
        "AADSTS700027: Client assertion failed signature validation.",
    ),
    # UNVERIFIED texts and codes below (reference §7 item 6).
    "assertion_key_not_found": (
        "assertion_failure_status",
        "invalid_client",
        700027,
        "AADSTS700027: Client assertion failed signature validation. [Reason - The key was not found.]",
    ),
    "assertion_key_expired": (
        "assertion_failure_status",
        "invalid_client",
        700027,
        "AADSTS700027: Client assertion failed signature validation. [Reason - The key used is expired.]",
    ),
    "assertion_malformed": (
        "assertion_failure_status",
        "invalid_client",
        50027,
        "AADSTS50027: JWT token is invalid or malformed.",
    ),
    "assertion_audience": (
        "assertion_failure_status",
        "invalid_client",
        700021,
        "AADSTS700021: Client assertion audience claim does not match Realm issuer.",
    ),
    "assertion_expired": (
        "assertion_failure_status",
        "invalid_client",
        700024,
        "AADSTS700024: Client assertion is not within its valid time range.",
    ),
    "assertion_subject": (
        "assertion_failure_status",
        "invalid_client",
        700023,
        "AADSTS700023: Client assertion subject or issuer does not match the client id.",
    ),
    "throttled": (
        429,
        "temporarily_unavailable",
        90055,
        "AADSTS90055: The request was throttled. Please try again later.",
    ),
    "unavailable": (
        503,
        "temporarily_unavailable",
        90033,
        "AADSTS90033: A transient error has occurred. Please try again.",
    ),
    "server_error": (
        500,
        "server_error",
        90006,
        "AADSTS90006: An internal server error occurred.",
    ),
}


def ests_error(
    problem: str,
    *,
    config: Any,
    trace_id: str,
    correlation_id: str,
    now: float,
    host: str,
    **fields: Any,
) -> tuple[int, dict[str, Any]]:
    """Build (status, body) for a catalogue entry in ESTS's envelope."""
    status_or_field, error, code, template = CATALOGUE[problem]
    status = status_or_field if isinstance(status_or_field, int) else int(getattr(config, status_or_field))
    stamp = dt.datetime.fromtimestamp(now, dt.UTC).strftime("%Y-%m-%d %H:%M:%SZ")
    text = template.format(**fields)
    description = f"{text}\r\nTrace ID: {trace_id}\r\nCorrelation ID: {correlation_id}\r\nTimestamp: {stamp}"
    body = {
        "error": error,
        "error_description": description,
        "error_codes": [code],
        "timestamp": stamp,
        "trace_id": trace_id,
        "correlation_id": correlation_id,
        "error_uri": f"https://{host}/error?code={code}",
    }
    return status, body
