"""Credential check: acquire a client-credentials token from the tenant's authority with MSAL.

Used on save (a configuration is stored only if Entra ID issues a token for it) and by Send test.
This is the API's boundary for MSAL: its error dicts and exceptions become TokenError (with the
AADSTS code) or TransientError (`AuthorityUnreachable`). MSAL blocks, so callers run
`acquire_token` in an executor. No token cache is shared: a check must ask Entra ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import msal
import requests

from shared.clouds import Cloud
from shared.entra import TimeoutSession, token_error
from shared.errors import TokenError, TransientError


@dataclass(frozen=True, slots=True)
class Credentials:
    """What Entra ID needs to issue a token for an app; the secret never prints."""

    azure_tenant: str
    client_id: str
    cloud: Cloud
    client_secret: str = field(repr=False)


def acquire_token(creds: Credentials, *, ca_bundle: str | None, timeout_s: float) -> str:
    """A Graph access token for `creds`; raises TokenError or TransientError. Blocking."""
    with TimeoutSession(timeout_s, ca_bundle or True) as http:
        try:
            app = msal.ConfidentialClientApplication(
                creds.client_id, client_credential=creds.client_secret,
                authority=f"{creds.cloud.authority_host}/{creds.azure_tenant}",
                instance_discovery=False, azure_region=False, http_client=http, token_cache=msal.TokenCache(),
            )
            result = app.acquire_token_for_client(scopes=[creds.cloud.scope])
        except requests.RequestException as exc:
            raise TransientError(f"Entra ID ({creds.cloud.authority_host}) could not be reached: "
                                 f"{type(exc).__name__}", code="AuthorityUnreachable") from exc
        except ValueError as exc:  # OIDC discovery refused the tenant, or a non-JSON answer
            detail = f"{exc} {exc.__context__ or ''}"
            code = "AADSTS900023" if "900023" in detail else "AADSTS90002"
            raise TokenError(f"tenant '{creds.azure_tenant}' not found in the {creds.cloud.name} cloud",
                             code=code) from exc
        except msal.exceptions.MsalServiceError as exc:
            raise TransientError(f"Entra ID error: {exc}", code="TokenServiceError") from exc
    if "access_token" not in result:
        raise token_error(result)
    return str(result["access_token"])
