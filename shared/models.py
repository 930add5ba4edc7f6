"""Tables: notification (the transactional outbox), delivery_attempt, provider_config, and the API's
api_key, provider_history, activity_event and expiry_reminder.

Hot-path times are epoch milliseconds (`*_ms`, BigInteger) so that claims and the dispatcher
compare integers the same way on PostgreSQL and SQLite; dashboard times are timestamps.

Notification states:

    queued ──claim──> sending ──> sent
       ^                 │  ├───> failed        (permanent error, or transient errors past the maximum age)
       │                 │  ├───> ambiguous     (may have been sent; policy says stop)
       │                 │  ├───> held ──> queued when a provider version is saved; failed past hold_max_s
       └── retry_wait <──┘  └───> retry_wait    (transient error, throttled, or ambiguous retried once)

A `held` row waits for its tenant's configuration to be fixed (wrong or expired credential, consent,
Access Policy or RBAC refusal of its sender); its `next_attempt_ms` is when the hold expires, its
`last_error_code` the code that placed it, which with its `sender` says what the hold stops (the whole
tenant, or that sender: `shared.holds.hold_scope`). The dispatcher publishes only queued and
retry_wait rows, so never a held one.
"""

from __future__ import annotations

from datetime import datetime
from enum import StrEnum
from typing import Any

from sqlalchemy import JSON, BigInteger, Column, DateTime, Index, Integer, LargeBinary, UniqueConstraint, text
from sqlmodel import Field, SQLModel

# BIGINT on PostgreSQL, INTEGER on SQLite (where only INTEGER PRIMARY KEY autoincrements).
_BIGID = BigInteger().with_variant(Integer(), "sqlite")


class State(StrEnum):
    """Where a notification is in its life."""

    QUEUED = "queued"
    SENDING = "sending"
    SENT = "sent"
    FAILED = "failed"
    RETRY_WAIT = "retry_wait"
    AMBIGUOUS = "ambiguous"
    HELD = "held"


class WaitReason(StrEnum):
    """Why a `retry_wait` (or `held`) row waits, when it is not its own last error: an open circuit
    breaker of the service it goes through (worker.breakers), a Retry-After, a hold, or the sender's
    Exchange sending budget (worker.quota_gate)."""

    GRAPH_OUTAGE = "graph_outage"
    ENTRA_OUTAGE = "entra_outage"
    MAILBOX_OUTAGE = "mailbox_outage"
    RELAY_OUTAGE = "relay_outage"
    THROTTLED = "throttled"
    HELD = "held"
    QUOTA = "quota"


ACTIVE_STATES = (State.QUEUED.value, State.RETRY_WAIT.value)
TERMINAL_STATES = (State.SENT.value, State.FAILED.value, State.AMBIGUOUS.value)


class Notification(SQLModel, table=True):
    """One message a producer handed us; the row is the source of truth."""

    __tablename__ = "notification"
    __table_args__ = (
        UniqueConstraint("tenant_id", "idempotency_key", name="uq_notification_tenant_idem"),
        Index("ix_notification_tenant_created", "tenant_id", "created_at"),
        Index("ix_notification_state", "state"),
        Index("ix_notification_tenant_rank", "tenant_id", "fair_rank"),
        Index("ix_notification_error_code", "last_error_code"),
        Index(
            "ix_notification_dispatch",
            "fair_rank",
            postgresql_where=text("state IN ('queued', 'retry_wait')"),
            sqlite_where=text("state IN ('queued', 'retry_wait')"),
        ),
        Index(
            "ix_notification_dispatch_lease",
            "dispatch_lease_until_ms",
            postgresql_where=text("state IN ('queued', 'retry_wait')"),
            sqlite_where=text("state IN ('queued', 'retry_wait')"),
        ),
        Index(
            "ix_notification_send_lease",
            "send_lease_until_ms",
            postgresql_where=text("state = 'sending'"),
            sqlite_where=text("state = 'sending'"),
        ),
    )

    id: str = Field(primary_key=True, max_length=32)
    tenant_id: str = Field(max_length=64)
    idempotency_key: str | None = Field(default=None, max_length=200)
    state: str = Field(default=State.QUEUED.value, max_length=16)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    sent_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    # Set when a resend or a hold's release put the row back: the maximum age counts from here, not created_at.
    age_from: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    fair_rank: int = Field(sa_column=Column(BigInteger, nullable=False))
    next_attempt_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    # Published and not yet claimed: the broker may have lost it once this passes (queued, retry_wait).
    dispatch_lease_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    # Why the row waits (WaitReason): an outage's open breaker, a Retry-After, a hold, its sender's spent
    # Exchange budget (until next_attempt_ms); None otherwise. Cleared by any other outcome.
    wait_reason: str | None = Field(default=None, max_length=32)
    # Claimed: the worker renews this while it sends; once it passes the sweeper takes over (sending).
    send_lease_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    claimed_by: str | None = Field(default=None, max_length=100)
    attempts: int = 0
    ambiguous_count: int = 0
    possible_duplicate: bool = False
    provider_version: int | None = None
    sender: str | None = Field(default=None, max_length=320)
    last_status: int | None = None
    last_error_code: str | None = Field(default=None, max_length=100)
    last_error_message: str | None = Field(default=None, max_length=2000)
    graph_request_id: str | None = Field(default=None, max_length=64)
    # A message with uploaded attachments goes through a Graph draft: the draft this row's latest attempt
    # created and has not deleted yet (and its mailbox), so the next attempt deletes it and starts again.
    draft_id: str | None = Field(default=None, max_length=512)
    draft_mailbox: str | None = Field(default=None, max_length=320)


class DeliveryAttempt(SQLModel, table=True):
    """One call to Graph or one SMTP transaction (or one decision not to make it) for a notification.

    Graph attempts fill `http_status`, `request_id` (Graph's request-id) and `client_request_id`;
    SMTP attempts fill `smtp_status` (the relay's reply code), `request_id` (the relay's final
    reply, e.g. "2.0.0 Ok: queued as 4BC9D2E3F") and `client_request_id` (the Message-ID we sent).
    """

    __tablename__ = "delivery_attempt"
    __table_args__ = (
        Index("ix_attempt_notification", "notification_id"),
        Index("ix_attempt_tenant_time", "tenant_id", "started_at"),
        Index("ix_attempt_error_code", "error_code"),
    )

    id: int | None = Field(default=None, sa_column=Column(_BIGID, primary_key=True, autoincrement=True))
    notification_id: str = Field(max_length=32)
    tenant_id: str = Field(max_length=64)
    attempt_no: int
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    latency_ms: float | None = None
    outcome: str = Field(max_length=16)
    http_status: int | None = None
    error_code: str | None = Field(default=None, max_length=100)
    error_message: str | None = Field(default=None, max_length=2000)
    request_id: str | None = Field(default=None, max_length=64)
    client_request_id: str | None = Field(default=None, max_length=255)
    retry_after_s: float | None = None
    mailbox: str | None = Field(default=None, max_length=320)
    worker: str | None = Field(default=None, max_length=100)
    smtp_status: int | None = None


class ProviderConfig(SQLModel, table=True):
    """A tenant's email provider, versioned; the highest active version is in force.

    `secret_enc` holds the encrypted credential of a "graph" row: the client secret when
    `credential_type` is "secret", the PEM private key and certificate when it is "certificate".
    `secret_expires_at` is that credential's expiry: as entered for a secret, the certificate's
    notAfter for a certificate; the expiry reminders read it.
    """

    __tablename__ = "provider_config"
    __table_args__ = (UniqueConstraint("tenant_id", "version", name="uq_provider_tenant_version"),)

    id: int | None = Field(default=None, sa_column=Column(_BIGID, primary_key=True, autoincrement=True))
    tenant_id: str = Field(max_length=64, index=True)
    version: int
    active: bool = True
    kind: str = Field(max_length=16)  # "graph" | "platform"
    sender_name: str | None = Field(default=None, max_length=200)
    sender_address: str | None = Field(default=None, max_length=320)
    reply_to: str | None = Field(default=None, max_length=320)
    azure_tenant: str | None = Field(default=None, max_length=255)
    client_id: str | None = Field(default=None, max_length=64)
    secret_enc: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    secret_last4: str | None = Field(default=None, max_length=4)
    secret_expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    # Where that expiry came from: "entered" by the admin, read from "graph", the "certificate"'s notAfter,
    # "kept" from the version before (same stored secret); None: unknown, so no reminders.
    expiry_source: str | None = Field(default=None, max_length=16)
    credential_type: str | None = Field(default=None, max_length=16)  # "secret" | "certificate"
    cert_thumbprint: str | None = Field(default=None, max_length=40)  # SHA-1 hex, as Entra shows it
    admin_contact_email: str | None = Field(default=None, max_length=320)
    cloud: str = Field(default="global", max_length=16)
    # Named senders (shared.senders), the whole map including "default"; None: a version saved before
    # named senders existed, whose only sender is the three sender columns above.
    senders: dict[str, Any] | None = Field(default=None, sa_column=Column(JSON))
    # Exchange's tenant external recipient rate limit, kept ahead per rolling 24 h; None: not enforced.
    daily_external_recipient_limit: int | None = None
    # Whether the token of the save held Mail.ReadWrite (drafts and upload sessions for large attachments);
    # None: not known (saved before it was looked at, or the platform default).
    mail_readwrite: bool | None = None
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    created_by: str | None = Field(default=None, max_length=200)


class ApiKey(SQLModel, table=True):
    """An API key: its public prefix, the sha256 of the whole key, one tenant and one role.

    A `service` or `platform_viewer` key is not bound to one tenant: its `tenant_id` is "*" and `tenants`
    lists the tenants it may act for (null: all of them); each request names one (X-Tenant-Id), except a
    platform viewer's reads of the cross-tenant time series.
    """

    __tablename__ = "api_key"

    id: str = Field(primary_key=True, max_length=16)  # the public prefix shown in `tm_<id>_…`
    tenant_id: str = Field(max_length=64, index=True)
    role: str = Field(max_length=16)  # "admin" | "sender" | "viewer" | "service" | "platform_viewer"
    key_sha256: str = Field(max_length=64)
    label: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    revoked_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    expires_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    last_used_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    tenants: list[str] | None = Field(default=None, sa_column=Column(JSON))


class ProviderHistory(SQLModel, table=True):
    """One change of a tenant's provider: who, when, which fields (names only, never values of secrets)."""

    __tablename__ = "provider_history"
    __table_args__ = (Index("ix_provider_history_tenant", "tenant_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(_BIGID, primary_key=True, autoincrement=True))
    tenant_id: str = Field(max_length=64)
    version: int
    action: str = Field(max_length=16)  # "saved" | "reverted" | "restored"
    changed_fields: list[str] = Field(sa_column=Column(JSON, nullable=False))
    restored_from: int | None = None  # the version a restore copied
    actor: str | None = Field(default=None, max_length=200)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ActivityEvent(SQLModel, table=True):
    """Something that happened to a tenant's email setup: a config change, a test send, a reminder."""

    __tablename__ = "activity_event"
    __table_args__ = (Index("ix_activity_event_tenant", "tenant_id", "created_at"),)

    id: int | None = Field(default=None, sa_column=Column(_BIGID, primary_key=True, autoincrement=True))
    tenant_id: str = Field(max_length=64)
    kind: str = Field(max_length=32)  # provider_saved, provider_reverted, provider_check_failed, test_sent, ...
    code: str | None = Field(default=None, max_length=100)
    detail: str | None = Field(default=None, max_length=1000)
    request_id: str | None = Field(default=None, max_length=64)
    actor: str | None = Field(default=None, max_length=200)
    # The sender address the event concerns (a hold of one sender: shared.holds); None: the whole tenant.
    sender: str | None = Field(default=None, max_length=320)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class ExpiryReminder(SQLModel, table=True):
    """One expiry reminder of one provider version at one threshold (30 or 7 days before).

    The unique constraint is what makes a reminder go out once, however many beat runs or task
    retries reach it: the row, its activity event and its email are inserted in one transaction.
    """

    __tablename__ = "expiry_reminder"
    __table_args__ = (UniqueConstraint("tenant_id", "config_version", "threshold_days", name="uq_expiry_reminder"),)

    id: int | None = Field(default=None, sa_column=Column(_BIGID, primary_key=True, autoincrement=True))
    tenant_id: str = Field(max_length=64)
    config_version: int
    threshold_days: int
    expires_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    notification_id: str | None = Field(default=None, max_length=32)  # the email, when one was sent
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class WebhookEndpoint(SQLModel, table=True):
    """A tenant's webhook endpoint: where events go and the secret that signs them (encrypted).

    A rotation keeps the previous secret (`previous_secret_enc`) signing beside the new one until
    `previous_valid_until`, so receivers can switch over without losing a message.
    """

    __tablename__ = "webhook_endpoint"
    __table_args__ = (Index("ix_webhook_endpoint_tenant", "tenant_id"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=64)
    url: str = Field(max_length=2048)
    description: str | None = Field(default=None, max_length=200)
    event_types: list[str] = Field(sa_column=Column(JSON, nullable=False))
    secret_enc: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
    previous_secret_enc: bytes | None = Field(default=None, sa_column=Column(LargeBinary))
    previous_valid_until: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))
    enabled: bool = True
    disabled_reason: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    updated_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class WebhookEvent(SQLModel, table=True):
    """One event (the webhook outbox): inserted in the transaction of what caused it; `id` is the
    `webhook-id` every delivery of it carries, so receivers can drop duplicates."""

    __tablename__ = "webhook_event"
    __table_args__ = (Index("ix_webhook_event_tenant", "tenant_id", "created_at"),)

    id: str = Field(primary_key=True, max_length=40)
    tenant_id: str = Field(max_length=64)
    type: str = Field(max_length=64)
    payload: dict[str, Any] = Field(sa_column=Column(JSON, nullable=False))
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))


class WebhookDelivery(SQLModel, table=True):
    """One event for one endpoint: pending → delivering (leased) → delivered, or failed after the retry window."""

    __tablename__ = "webhook_delivery"
    __table_args__ = (
        Index("ix_webhook_delivery_endpoint", "endpoint_id", "created_at"),
        Index("ix_webhook_delivery_due", "next_attempt_ms",
              postgresql_where=text("state = 'pending'"), sqlite_where=text("state = 'pending'")),
    )

    id: str = Field(primary_key=True, max_length=32)
    event_id: str = Field(max_length=40)
    endpoint_id: str = Field(max_length=40)
    tenant_id: str = Field(max_length=64)
    state: str = Field(default="pending", max_length=16)  # pending | delivered | failed
    attempts: int = 0
    next_attempt_ms: int = Field(sa_column=Column(BigInteger, nullable=False))
    lease_until_ms: int | None = Field(default=None, sa_column=Column(BigInteger))
    claimed_by: str | None = Field(default=None, max_length=100)
    window_start_ms: int = Field(sa_column=Column(BigInteger, nullable=False))  # retries end webhook_retry_for_s after
    last_status: int | None = None
    last_error: str | None = Field(default=None, max_length=500)
    created_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    delivered_at: datetime | None = Field(default=None, sa_column=Column(DateTime(timezone=True)))


class WebhookAttempt(SQLModel, table=True):
    """One HTTP request of a delivery: the endpoint's status code (or why there was none), how long it took."""

    __tablename__ = "webhook_attempt"
    __table_args__ = (Index("ix_webhook_attempt_delivery", "delivery_id"),)

    id: int | None = Field(default=None, sa_column=Column(_BIGID, primary_key=True, autoincrement=True))
    delivery_id: str = Field(max_length=32)
    tenant_id: str = Field(max_length=64)
    started_at: datetime = Field(sa_column=Column(DateTime(timezone=True), nullable=False))
    status_code: int | None = None
    error: str | None = Field(default=None, max_length=500)
    latency_ms: float | None = None
    worker: str | None = Field(default=None, max_length=100)


class NotificationRecipient(SQLModel, table=True):
    """One normalized (trimmed, lower-cased) address of a notification's to, cc or bcc, written by the
    producer with the notification: the activity's recipient filter is an exact, indexed match on it."""

    __tablename__ = "notification_recipient"
    __table_args__ = (Index("ix_notification_recipient_lookup", "tenant_id", "address"),)

    notification_id: str = Field(primary_key=True, max_length=32)
    address: str = Field(primary_key=True, max_length=320)
    tenant_id: str = Field(max_length=64)


class NotificationAttachment(SQLModel, table=True):
    """The bytes of one uploaded attachment (UPLOAD_MIN_BYTES or more) of a notification, kept apart from its
    row so that the payload the claim reads stays small; written by the producer with the notification."""

    __tablename__ = "notification_attachment"

    notification_id: str = Field(primary_key=True, max_length=32)
    position: int = Field(primary_key=True)  # its index among the message's attachments
    size_bytes: int = Field(sa_column=Column(BigInteger, nullable=False))
    sha256: str = Field(max_length=64)
    content: bytes = Field(sa_column=Column(LargeBinary, nullable=False))
