"""Settings of one emulator instance, built once and passed in."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from typing import Any

# Fields a running emulator lets you change through POST /_emulator/config.
MUTABLE_FIELDS = frozenset(
    {
        "latency_ms",
        "rbac_propagation_s",
        "rbac_denied_status",
        "rbac_denied_code",
        "rbac_denied_message",
        "no_permissions_in_token",
        "directory_self_read",
        "token_lifetime_s",
        "refresh_in_s",
        "mailbox_concurrency",
        "concurrency_retry_after",
        "requests_per_10min",
        "recipients_per_day",
        "recipient_window_s",
        "external_recipients_per_day",
        "max_request_bytes",
        "max_internet_headers",
        "unauthorized_client_status",
        "assertion_failure_status",
        "request_too_large_status",
        "request_log_size",
        "advertised_base_url",
        "retry_after_grace_ms",
        "smtp_credentials",
        "upload_bytes_per_window",
        "upload_window_s",
        "upload_min_bytes",
        "upload_max_chunk_bytes",
        "upload_session_ttl_s",
        "upload_rejects_authorization",
    }
)


@dataclass
class EmulatorConfig:
    """Everything that shapes one emulator; `port=0` picks a free port.

    Values marked UNVERIFIED in the reference (statuses, limits) are fields here so tests can
    change them.
    """

    host: str = "127.0.0.1"
    port: int = 0
    tls: bool = True
    directory: dict[str, Any] | None = None
    latency_ms: float = 0.0
    seed: int | None = None
    token_lifetime_s: int = 3599
    refresh_in_s: int | None = None
    mailbox_concurrency: int = 4
    # None means the MailboxConcurrency 429 carries no Retry-After header (UNVERIFIED item 13).
    concurrency_retry_after: str | None = "1"
    requests_per_10min: int = 10_000
    recipients_per_day: int = 10_000
    # The rolling window both recipient limits count in (Exchange: 24 h; settable so tests use seconds).
    recipient_window_s: float = 86_400.0
    # Exchange's tenant external recipient rate limit (TERRL) for every tenant; None: not enforced. Its
    # real value depends on licences (UNVERIFIED): set it per test.
    external_recipients_per_day: int | None = None
    max_request_bytes: int = 4 * 1024 * 1024
    max_internet_headers: int = 5
    unauthorized_client_status: int = 400
    assertion_failure_status: int = 401
    request_too_large_status: int = 413
    request_log_size: int = 5_000
    # A request that reaches us this soon after we sent a 429 was most likely already on its way
    # (the client cannot have read the 429 yet; our single loop serves accepts and handshakes in
    # turn). Such arrivals are counted apart from real Retry-After violations.
    retry_after_grace_ms: float = 100.0
    # Base URL put in discovery documents; None = scheme and Host of the request. Set it to
    # "https://login.microsoftonline.com" when clients reach the emulator through a URL-rewriting session.
    advertised_base_url: str | None = None
    state_dir: str | None = None
    ca_path: str | None = None
    # Extra names the server certificate covers beside 127.0.0.1 and localhost, e.g. the service name
    # "emulator" that other containers of a compose stack reach it by.
    tls_hostnames: tuple[str, ...] = ()
    # The local SMTP relay (emulator.smtp) for the platform default provider: on by default, on
    # `smtp_port` (0 = a free one). "starttls" offers STARTTLS when `tls` is on; "tls" is implicit
    # TLS; "none" plain text. `smtp_credentials` ({user: password}) makes AUTH mandatory.
    smtp: bool = True
    smtp_port: int = 0
    smtp_security: str = "starttls"
    smtp_credentials: dict[str, str] | None = None
    # RBAC for Applications (emulator.exchange): a new role assignment takes effect after this much
    # emulator time (Microsoft documents 30 min to 2 h of caching). The answer a mailbox outside the
    # scope gets is UNVERIFIED (field reports show the generic ErrorAccessDenied): configurable here.
    rbac_propagation_s: float = 0.0
    rbac_denied_status: int = 403
    rbac_denied_code: str = "ErrorAccessDenied"
    rbac_denied_message: str = "Access is denied. Check credentials and try again."
    # A token with no application permission at all and no RBAC grant: 403 ErrorAccessDenied (False) or
    # 401 NoPermissionsInAccessToken (True; listed in error-code lists, UNVERIFIED for sendMail).
    no_permissions_in_token: bool = False
    # Graph's applications and servicePrincipals routes: Microsoft documents that an app may read its own
    # objects without any application permission (serviceprincipal-get); off = Application.Read.All needed.
    directory_self_read: bool = False
    # Large attachments (emulator.drafts): Graph's 150 MB of uploads per 5 minutes per (app, mailbox), then
    # 429 ApplicationThrottled "IncomingBytes"; the smallest attachment an upload session takes (Graph says
    # 3 MB; whether MB or MiB is UNVERIFIED), the largest chunk (documented "less than 4 MB"), how long an
    # upload URL lives (UNVERIFIED), and whether an upload PUT that carries an Authorization header is
    # refused (Microsoft says not to send one; the refusal's form is UNVERIFIED). The message size limit is
    # each mailbox's `max_send_size_kb` (Exchange's default MaxSendSize, 35 MB, UNVERIFIED).
    upload_bytes_per_window: int = 150_000_000
    upload_window_s: float = 300.0
    upload_min_bytes: int = 3 * 1024 * 1024
    upload_max_chunk_bytes: int = 4 * 1024 * 1024
    upload_session_ttl_s: float = 900.0
    upload_rejects_authorization: bool = True
    extra: dict[str, Any] = field(default_factory=dict)

    def updated(self, changes: dict[str, Any]) -> EmulatorConfig:
        """Return a copy with `changes` applied; only MUTABLE_FIELDS may change at run time."""
        unknown = set(changes) - MUTABLE_FIELDS
        if unknown:
            raise ValueError(f"not changeable at run time: {sorted(unknown)}")
        return dataclasses.replace(self, **changes)
