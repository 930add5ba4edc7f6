"""Credential check: acquire a client-credentials token from the tenant's authority with MSAL.

Used on save (a configuration is stored only if Entra ID issues a token for it) and by Send test.
The credential is a client secret or a certificate; transport.entra builds the MSAL app and turns its
errors into TokenError (with the AADSTS code) or TransientError (`AuthorityUnreachable`). MSAL
blocks, so callers run `acquire_token` in an executor. No token cache is shared: a check must ask
Entra ID.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from shared.certificates import client_credential
from shared.clouds import Cloud
from transport.entra import TimeoutSession, acquire_for_client, confidential_app


@dataclass(frozen=True, slots=True)
class Credentials:
    """What Entra ID needs to issue a token for an app; the credential never prints."""

    azure_tenant: str
    client_id: str
    cloud: Cloud
    credential: str = field(repr=False)
    credential_type: str = "secret"


def acquire_token(creds: Credentials, *, ca_bundle: str | None, timeout_s: float) -> str:
    """A Graph access token for `creds`; raises TokenError or TransientError. Blocking."""
    with TimeoutSession(timeout_s, ca_bundle or True) as http:
        app = confidential_app(creds.client_id, client_credential(creds.credential_type, creds.credential),
                               creds.azure_tenant, creds.cloud, http)
        return str(acquire_for_client(app, creds.cloud)["access_token"])
