"""The one error tree of tenantmail.

    TenantmailError
    ├── ValidationFailed            bad input from a producer or an admin; names the field
    ├── ConfigurationError          our own settings are wrong or missing
    │   └── SecretsUndecryptable    stored credentials no configured encryption key opens
    ├── ProviderError               a tenant's provider cannot be used
    │   └── NoProviderConfigured
    ├── RequestWithheld             a sendMail stopped before it was written: its mailbox got blocked
    │                               (Retry-After) while it waited for a connection; no attempt
    └── DeliveryError               something went wrong on the way to a message being accepted
        ├── TransientError          retry later (429, 503, connection refused, token endpoint 5xx)
        │   ├── Throttled           429 or a mailbox blocked by an earlier Retry-After
        │   ├── RedisUnavailable    Redis (tokens, throttle, send marks) unreachable or timed out
        │   └── DatabaseUnavailable the database unreachable, or the connection dropped
        ├── PermanentError          never retried (ErrorAccessDenied, ErrorInvalidUser, AADSTS7000215 ...)
        │   └── TokenError          Entra refused to issue a token (carries the AADSTS code)
        ├── AuthenticationExpired   Graph 401 InvalidAuthenticationToken: drop the token, resend once
        └── AmbiguousOutcome        the request may have reached Graph (504, timeout, reset after send)

Every DeliveryError carries the HTTP status, a code, its message and the service's request id, so
callers branch on `code` and `status`, never on message text. The code is one of ours
(`shared.codes.Code`) or the service's, passed through (`ErrorAccessDenied`, `AADSTS7000215`,
`SMTP550`). Third-party exceptions are translated into this tree at one boundary each:

    aiohttp      -> transport.graph         (TransientError, AmbiguousOutcome)
    aiosmtplib   -> transport.smtp          (TransientError, PermanentError, AmbiguousOutcome)
    MSAL         -> transport.entra         (TokenError, TransientError)
    redis-py     -> transport.redis_errors  (RedisUnavailable), used by the token cache, the throttle
                                            and the send marks
    SQLAlchemy   -> worker.store            (DatabaseUnavailable), once its own retries are spent
"""

from __future__ import annotations


class TenantmailError(Exception):
    """Base of every error tenantmail raises on purpose."""


class ValidationFailed(TenantmailError, ValueError):
    """Input was rejected; `field` is the dotted path of the offending field."""

    def __init__(self, field: str, reason: str) -> None:
        super().__init__(f"{field}: {reason}")
        self.field = field
        self.reason = reason


class ConfigurationError(TenantmailError):
    """A setting of tenantmail itself is missing or inconsistent."""


class SecretsUndecryptable(ConfigurationError):
    """Stored credentials that no key in TENANTMAIL_ENCRYPTION_KEYS opens; `versions` lists (tenant, version),
    the version a provider version's number or a named secret such as "webhook endpoint ep_…"."""

    def __init__(self, versions: list[tuple[str, int]] | list[tuple[str, str]]) -> None:
        named = ", ".join(f"tenant {tenant} version {version}" if isinstance(version, int)
                          else f"tenant {tenant} {version}" for tenant, version in versions)
        super().__init__(f"no configured encryption key opens the stored credential of {named}; nothing was "
                         "re-encrypted. Put the key that encrypted it back in TENANTMAIL_ENCRYPTION_KEYS, or save "
                         "that configuration again")
        self.versions = versions


class ProviderError(TenantmailError):
    """A tenant's email provider configuration cannot be used."""


class NoProviderConfigured(ProviderError):
    """The tenant has no provider and the platform default is not configured."""


class RequestWithheld(TenantmailError):
    """A Graph request stopped after its connection was acquired and before it was written, because its
    mailbox is now blocked for `wait_ms` (transport.send_gate). It never left: no attempt, nothing to retry
    but the row itself, after the block."""

    def __init__(self, wait_ms: int) -> None:
        super().__init__(f"withheld: the mailbox is blocked for {wait_ms} ms")
        self.wait_ms = wait_ms


class DeliveryError(TenantmailError):
    """A failure reported by, or on the way to, Entra ID or Microsoft Graph."""

    def __init__(
        self,
        message: str,
        *,
        status: int | None = None,
        code: str | None = None,
        request_id: str | None = None,
        client_request_id: str | None = None,
        retry_after_s: float | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.code = code
        self.request_id = request_id
        self.client_request_id = client_request_id
        self.retry_after_s = retry_after_s

    def __str__(self) -> str:
        parts = [p for p in (str(self.status) if self.status else None, self.code) if p]
        prefix = " ".join(parts)
        return f"{prefix}: {self.message}" if prefix else self.message


class TransientError(DeliveryError):
    """Worth retrying after a backoff; the request is known not to have been processed."""


class Throttled(TransientError):
    """429 from Graph or Entra, or a mailbox still inside a Retry-After window."""


class PermanentError(DeliveryError):
    """Retrying cannot help: the tenant's configuration or the message must change."""


class TokenError(PermanentError):
    """Entra ID refused to issue a token; `code` is `AADSTS<n>`."""


class AuthenticationExpired(DeliveryError):
    """Graph answered 401 InvalidAuthenticationToken: acquire a new token and resend once."""


class AmbiguousOutcome(DeliveryError):
    """The request may have been accepted (504, timeout, reset after the body was sent)."""


class RedisUnavailable(TransientError):
    """Redis did not answer (refused, dropped or timed out); `code` is `Code.REDIS_UNAVAILABLE`."""


class DatabaseUnavailable(TransientError):
    """The database did not answer or dropped the connection; `code` is `Code.DATABASE_UNAVAILABLE`."""
