"""The error codes tenantmail records on its own account, as one type.

A recorded `error_code` is either one of these or a service's code passed through as it came:
Graph's (`ErrorAccessDenied`, `HTTP503` when Graph gave none), Entra ID's (`AADSTS7000215`) and the
SMTP relay's reply class (`SMTP550`). A `StrEnum`, so a stored value is the same string it always
was and `Code.WORKER_LOST == "WorkerLost"`. `shared.diagnosis` keys its table on this type, and a
test walks every member, so a code added here without a diagnosis fails the suite.
"""

from __future__ import annotations

from enum import StrEnum


class Code(StrEnum):
    """A failure that tenantmail itself observed or decided (not a service's answer)."""

    # on the way to Graph or the SMTP relay
    CONNECTION_REFUSED = "ConnectionRefused"
    CONNECT_TIMEOUT = "ConnectTimeout"
    TIMEOUT = "Timeout"
    CONNECTION_RESET = "ConnectionReset"
    TLS_ERROR = "TLSError"
    SMTP_NOT_SUPPORTED = "SMTPNotSupported"
    # tokens
    TOKEN_LOCK_TIMEOUT = "TokenLockTimeout"
    TOKEN_SERVICE_ERROR = "TokenServiceError"
    AUTHORITY_UNREACHABLE = "AuthorityUnreachable"
    # the tenant's provider
    PROVIDER_ERROR = "ProviderError"
    NO_PROVIDER_CONFIGURED = "NoProviderConfigured"
    UNKNOWN_SENDER = "UnknownSender"
    RECIPIENT_LIMIT_TOO_LOW = "RecipientLimitTooLow"
    LARGE_ATTACHMENT_UNSUPPORTED = "LargeAttachmentUnsupported"
    # decided by the outcome policy or the sweeper
    WORKER_LOST = "WorkerLost"
    MAX_AGE_EXCEEDED = "MaxAgeExceeded"
    INTERNAL_ERROR = "InternalError"
    # Which kind of ErrorAccessDenied (chosen by shared.access_diagnosis): an Application Access Policy,
    # or Exchange RBAC for Applications
    ACCESS_POLICY_DENIED = "AccessPolicyDenied"
    RBAC_SCOPE_DENIED = "RbacScopeDenied"
    RBAC_PROPAGATING = "RbacPropagating"
    MAIL_SEND_TENANT_WIDE = "MailSendTenantWide"
    # our own infrastructure
    REDIS_UNAVAILABLE = "RedisUnavailable"
    DATABASE_UNAVAILABLE = "DatabaseUnavailable"
