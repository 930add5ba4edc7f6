"""Settings: the one place that reads the environment.

Built once at process start (`Settings.from_env()`) and passed in; nothing else reads `os.environ`.
Every duration carries its unit in its name, and the short ones exist so tests can run the
retry and lease machinery at milliseconds.
"""

from __future__ import annotations

from ipaddress import ip_address
from pathlib import Path
from typing import Literal

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

AmbiguousPolicy = Literal["retry_once", "give_up"]
SmtpSecurity = Literal["starttls", "tls", "none"]


class Settings(BaseSettings):
    """Typed settings of every tenantmail process; env vars are prefixed `TENANTMAIL_`
    except the conventional `DATABASE_URL`, `REDIS_URL` and `BROKER_URL`."""

    model_config = SettingsConfigDict(env_prefix="TENANTMAIL_", extra="ignore", frozen=True)

    # Storage and transport. None means "embedded": SQLite under state_dir, private redis-server.
    database_url: str | None = Field(default=None, validation_alias="DATABASE_URL")
    redis_url: str | None = Field(default=None, validation_alias="REDIS_URL")
    broker_url: str | None = Field(default=None, validation_alias="BROKER_URL")
    state_dir: Path = Path("var")

    # Encryption of secrets at rest (client secrets, cached tokens): Fernet keys, newest first.
    encryption_keys: str | None = None

    # Where Entra ID and Graph live. Overrides point every cloud at one host (the emulator).
    authority_override: str | None = None
    graph_base_override: str | None = None
    ca_bundle: str | None = None

    # Platform default provider: the platform's no-reply sender through an SMTP relay. `smtp_security`
    # is "starttls" (upgrade after connecting, usually port 587), "tls" (implicit TLS, usually 465) or
    # "none" (a relay on a trusted local network only). Unset `smtp_host`: no platform default.
    platform_sender: str = "no-reply@platform.example"
    platform_sender_name: str = "Notifications"
    smtp_host: str | None = None
    smtp_port: int = 587
    smtp_security: SmtpSecurity = "starttls"
    smtp_username: str | None = None
    smtp_password: SecretStr | None = None
    smtp_timeout_s: float = 30.0
    smtp_pool_size: int = 4  # connections per worker process, reused between messages

    # Worker and dispatcher.
    worker_concurrency: int = 32
    batch_size: int = 200
    tenant_window: int = 16
    tenant_affinity: bool = True
    dispatch_interval_ms: int = 50
    dispatch_page: int = 2000
    dispatch_lease_ms: int = 30_000
    send_lease_ms: int = 120_000
    fair_spacing_ms: int = 50
    provider_cache_ttl_ms: int = 3_000
    http_timeout_s: float = 30.0
    http_connect_timeout_s: float = 10.0
    token_timeout_s: float = 30.0
    max_connections: int = 512

    # Throttling shared through Redis, per (app, mailbox).
    mailbox_concurrency: int = 4
    mailbox_pacing_ms: int = 0
    slot_wait_max_ms: int = 1_500
    slot_requeue_ms: int = 250
    # A send that waited longer than this since the throttle admitted it (for a connection, for a starved
    # event loop) asks Redis again for the mailbox's Retry-After block before it is written (transport.send_gate).
    mailbox_block_recheck_ms: int = 20
    # Exchange Online's sending limits, kept per (app, mailbox) in Redis before Graph is asked
    # (worker.quota_gate): recipients per rolling window (24 h; a sender's daily_recipient_limit
    # overrides the default) and requests per 10 minutes. The windows are settable so tests can use seconds.
    daily_recipient_limit: int = 10_000
    recipient_window_s: float = 24 * 3600.0
    mailbox_requests_per_window: int = 10_000
    request_window_s: float = 600.0
    # Large attachments (worker.uploads): Graph's 150 MB of uploads per 5 minutes per (app, mailbox), kept
    # ahead like the limits above; chunks under 4 MB in multiples of 320 KiB; a failed chunk is resumed from
    # where the upload session says, at most `upload_chunk_retries` times per attachment, then the attempt
    # fails (transient) and the next one starts again with a new draft.
    upload_bytes_per_window: int = 150_000_000
    upload_window_s: float = 300.0
    upload_chunk_bytes: int = 12 * 320 * 1024
    upload_chunk_retries: int = 3

    # Retry policy. Transient failures retry until a row is `max_age_s` old, with full-jitter backoff
    # doubling from base to cap; `max_attempts` bounds only the ambiguous rule (retry_once).
    max_attempts: int = 8
    max_age_s: float = 24 * 3600.0
    backoff_base_ms: int = 1_000
    backoff_cap_ms: int = 600_000
    ambiguous_policy: AmbiguousPolicy = "retry_once"
    # A configuration error (credential, consent, Access Policy, RBAC) holds a tenant's notifications this
    # long, waiting for a provider save; past it they fail with the code that placed the hold.
    hold_max_s: float = 72 * 3600.0
    # Circuit breakers (worker.breakers), per Graph host, Entra ID authority, (app, mailbox) and SMTP relay:
    # `breaker_failure_threshold` transport failures in a row in one process (each within
    # `breaker_run_window_s` of the last) open a scope; its rows wait in the database and one probe per
    # `breaker_probe_interval_ms` goes out fleet-wide; once one is answered, at most `breaker_ramp_start`
    # rows of the scope are in flight, doubling every `breaker_ramp_step_ms` up to `breaker_ramp_max`.
    breaker_enabled: bool = True
    breaker_failure_threshold: int = 5
    breaker_run_window_s: float = 60.0
    breaker_probe_interval_ms: int = 10_000
    breaker_refresh_ms: int = 500
    breaker_ramp_start: int = 4
    breaker_ramp_step_ms: int = 2_000
    breaker_ramp_max: int = 512
    token_refresh_margin_s: float = 300.0

    metrics_port: int | None = None
    # Liveness: a worker holding batches with no outcome for this long is reported not live.
    liveness_stall_s: float = 120.0
    liveness_interval_s: float = 5.0
    # A background loop (dispatcher, liveness, beat) that raises is restarted after a full-jitter backoff
    # doubling from base to cap (worker.supervision).
    loop_restart_base_ms: int = 500
    loop_restart_cap_ms: int = 15_000

    # Retention: finished notifications older than this are purged by the beat process.
    retention_days: float = 90.0
    purge_interval_s: float = 3600.0
    # How often the beat process looks for credentials 30 and 7 days before their recorded expiry.
    expiry_check_interval_s: float = 3600.0
    # HTTP API and admin page.
    api_host: str = "127.0.0.1"
    api_port: int = 8080
    api_max_body_bytes: int = 5 * 1024 * 1024
    # POST /v1/notifications alone: a message with attachments up to 150 MB is about 200 MB of base64 JSON.
    api_max_notification_bytes: int = 210 * 1024 * 1024
    api_test_sends_per_minute: int = 5
    api_notifications_per_minute: int = 6000  # per tenant, through POST /v1/notifications and :batch
    api_test_send_timeout_s: float = 20.0
    api_cookie_secure: bool = False

    # Webhooks (shared.webhooks, worker.webhook_delivery): every worker runs the delivery loop; rows are
    # claimed with conditional updates, so workers share it. A delivery is retried with backoff for
    # `webhook_retry_for_s`, then its endpoint is disabled. Plain http and private, loopback and
    # link-local addresses are refused unless allowed here (tests allow them for a loopback receiver).
    webhook_retry_for_s: float = 24 * 3600.0
    webhook_backoff_base_ms: int = 5_000
    webhook_backoff_cap_ms: int = 3_600_000
    webhook_poll_interval_ms: int = 500
    webhook_lease_ms: int = 60_000
    webhook_batch_size: int = 50
    webhook_timeout_s: float = 10.0
    webhook_response_max_bytes: int = 64 * 1024
    webhook_rotation_grace_s: float = 24 * 3600.0
    webhook_allow_http: bool = False
    webhook_allow_private_addresses: bool = False
    # Sender-domain checks (SPF, DKIM, DMARC). The resolver is the server's choice, never a tenant's:
    # "host:port" of a DNS server (an IP address), or None for the system resolver.
    dns_resolver: str | None = None
    dns_timeout_s: float = 3.0
    domain_check_cache_s: float = 600.0
    # The SPF include the platform default's relay needs in its sender domain (e.g. "spf.relay.example").
    platform_spf_include: str | None = None

    log_level: str = "INFO"
    log_json: bool = True

    @field_validator("smtp_host", "smtp_username", "smtp_password", "dns_resolver", "platform_spf_include",
                     mode="before")
    @classmethod
    def _empty_is_unset(cls, value: object) -> object:
        # docker-compose passes `${VAR:-}` through as an empty string: that means "not set".
        return None if value == "" else value

    @field_validator("batch_size", "tenant_window", "mailbox_concurrency", "worker_concurrency", "smtp_pool_size",
                     "breaker_failure_threshold", "breaker_ramp_start", "breaker_probe_interval_ms")
    @classmethod
    def _positive(cls, value: int) -> int:
        if value < 1:
            raise ValueError("must be at least 1")
        return value

    @field_validator("dns_resolver")
    @classmethod
    def _host_port(cls, value: str | None) -> str | None:
        if value is None:
            return None
        host, _, port = value.rpartition(":")
        try:
            ip_address(host.strip("[]"))
        except ValueError:
            raise ValueError("must be host:port with an IP address host, like 127.0.0.1:53") from None
        if not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError("must be host:port with a port from 1 to 65535") from None
        return value

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Read the environment once; keyword overrides win (used by the CLI and tests)."""
        return cls(**overrides)  # type: ignore[arg-type]

    @property
    def effective_broker_url(self) -> str | None:
        """The Celery broker: BROKER_URL, else the Redis URL."""
        return self.broker_url or self.redis_url

    def sqlite_url(self) -> str:
        """The embedded database location under state_dir."""
        return f"sqlite:///{(self.state_dir / 'tenantmail.db').resolve()}"
