"""The MSAL boundary shared by the workers (worker.tokens) and the API's credential check
(api.credentials): the HTTP session MSAL is given, and how MSAL's error dicts become our errors."""

from __future__ import annotations

from typing import Any

import requests

from shared.errors import TokenError, TransientError

_TRANSIENT_ERRORS = {"temporarily_unavailable", "server_error"}


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


def token_error(result: dict[str, Any]) -> TokenError | TransientError:
    """The error for an MSAL result without an access token: `AADSTS<n>` when Entra gave codes."""
    codes = result.get("error_codes") or []
    code = f"AADSTS{codes[0]}" if codes else str(result.get("error"))
    text = str(result.get("error_description", "")).split("\r\n")[0]
    cls = TransientError if result.get("error") in _TRANSIENT_ERRORS else TokenError
    return cls(text or str(result.get("error")), code=code, request_id=result.get("trace_id"),
               client_request_id=result.get("correlation_id"))
