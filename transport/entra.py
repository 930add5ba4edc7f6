"""The MSAL boundary shared by the workers (transport.tokens) and the API's credential check
(api.credentials): the HTTP session MSAL is given, the credential it is handed (a client secret, or
a certificate's private key and public certificate), and how MSAL's exceptions and error dicts
become our errors.
"""

from __future__ import annotations

from typing import Any

import msal
import requests

from shared.clouds import Cloud
from shared.codes import Code
from shared.errors import TokenError, TransientError

_TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error"}
CREDENTIAL_TYPES = ("secret", "certificate")


class TimeoutSession(requests.Session):
    """MSAL ignores its `timeout=` when given a session, so the session brings one. `trust_env` is
    off: REQUESTS_CA_BUNDLE would otherwise override `verify` (see the reference, section 1.3)."""

    def __init__(self, timeout_s: float, verify: str | bool) -> None:
        super().__init__()
        self.trust_env = False
        self.verify = verify
        self._timeout_s = timeout_s

    def request(self, *args: Any, **kwargs: Any) -> Any:
        kwargs.setdefault("timeout", self._timeout_s)
        return super().request(*args, **kwargs)


def confidential_app(client_id: str, credential: str | dict[str, str], azure_tenant: str, cloud: Cloud,
                     http: requests.Session) -> msal.ConfidentialClientApplication:
    """An MSAL app with its own token cache; raises TokenError (tenant unknown) or TransientError."""
    try:
        return msal.ConfidentialClientApplication(
            client_id, client_credential=credential, authority=f"{cloud.authority_host}/{azure_tenant}",
            instance_discovery=False, azure_region=False, http_client=http, token_cache=msal.TokenCache(),
        )
    except requests.RequestException as exc:
        raise _unreachable(cloud, exc) from exc
    except ValueError as exc:  # OIDC discovery refused the tenant
        detail = f"{exc} {exc.__context__ or ''}"
        code = "AADSTS900023" if "900023" in detail else "AADSTS90002"
        raise TokenError(f"tenant '{azure_tenant}' not found in the {cloud.name} cloud", code=code) from exc


def acquire_for_client(app: msal.ConfidentialClientApplication, cloud: Cloud) -> dict[str, Any]:
    """MSAL's client-credentials result with an access token; raises TokenError or TransientError."""
    try:
        result: dict[str, Any] = app.acquire_token_for_client(scopes=[cloud.scope])
    except requests.RequestException as exc:
        raise _unreachable(cloud, exc) from exc
    except msal.exceptions.MsalServiceError as exc:
        raise TransientError(f"Entra ID error: {exc}", code=Code.TOKEN_SERVICE_ERROR) from exc
    except ValueError as exc:  # a non-JSON body from the token endpoint
        raise TransientError("Entra ID answered with a non-JSON body", code=Code.TOKEN_SERVICE_ERROR) from exc
    if "access_token" not in result:
        raise token_error(result)
    return result


def token_error(result: dict[str, Any]) -> TokenError | TransientError:
    """The error for an MSAL result without an access token: `AADSTS<n>` when Entra gave codes."""
    codes = result.get("error_codes") or []
    code = f"AADSTS{codes[0]}" if codes else str(result.get("error"))
    text = str(result.get("error_description", "")).split("\r\n")[0]
    cls = TransientError if result.get("error") in _TRANSIENT_ERRORS else TokenError
    return cls(text or str(result.get("error")), code=code, request_id=result.get("trace_id"),
               client_request_id=result.get("correlation_id"))


def _unreachable(cloud: Cloud, exc: Exception) -> TransientError:
    return TransientError(f"Entra ID ({cloud.authority_host}) could not be reached: {type(exc).__name__}",
                          code=Code.AUTHORITY_UNREACHABLE)
