"""What a sender (or a tenant) sent in a window, from the database: how lost Redis counters are rebuilt.

The Redis counters (transport.quota_windows) are the fast path; this is the record they are rebuilt
from after Redis lost them. It counts, per time bucket, every attempt that may have reached Exchange
(`sent` and `ambiguous` attempts for recipients; every attempt with an HTTP status for requests) and,
at "now", every row still `sending` (its outcome is not written yet, and it may be on the wire). So
the rebuilt counter is never below what Exchange counted: after a FLUSHALL nothing goes over a limit.

Recipients are counted as Exchange counts them: distinct addresses across to, cc and bcc
(`shared.message.recipient_addresses`). "External" means a domain none of the tenant's senders uses
(we do not know the tenant's accepted domains; its senders' domains are the part we do).
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import Engine, func, or_, select

from shared.message import message_from_stored, recipient_addresses
from shared.models import DeliveryAttempt, Notification, State

_A = DeliveryAttempt.__table__  # type: ignore[attr-defined]
_N = Notification.__table__  # type: ignore[attr-defined]
MAY_HAVE_REACHED = ("sent", "ambiguous")


def recipients_of(payload: Mapping[str, Any]) -> set[str]:
    """The distinct recipient addresses (lowercased) of a stored notification."""
    m = message_from_stored(payload)
    return recipient_addresses(m.to, m.cc, m.bcc)


def external_count(payload: Mapping[str, Any], internal_domains: Iterable[str]) -> int:
    """How many of its distinct recipients are outside `internal_domains`."""
    internal = {d.lower() for d in internal_domains}
    return sum(1 for a in recipients_of(payload) if a.rsplit("@", 1)[-1] not in internal)


@dataclass(frozen=True, slots=True)
class Span:
    """Where to count: a tenant, one of its mailboxes (None: all), the window back from `now_ms`, the
    counter's bucketing, and the claim of the asking batch (its own `sending` rows are not yet sent)."""

    tenant_id: str
    mailbox: str | None
    window_s: float
    now_ms: int
    bucket_of: Callable[[int], int]
    own_claim: str | None = None


def mailbox_recipients(engine: Engine, span: Span) -> dict[int, int]:
    """Recipients sent from the span's mailbox in the window, by bucket."""
    return _counts(engine, span, lambda p: len(recipients_of(p)))


def mailbox_requests(engine: Engine, span: Span) -> dict[int, int]:
    """sendMail requests to the span's mailbox in the window (every attempt Graph answered), by bucket."""
    return _counts(engine, span, lambda _p: 1, requests=True)


def tenant_external(engine: Engine, span: Span, internal_domains: Iterable[str]) -> dict[int, int]:
    """External recipients the tenant sent from any of its mailboxes in the window, by bucket."""
    domains = list(internal_domains)
    return _counts(engine, span, lambda p: external_count(p, domains))


def _counts(engine: Engine, span: Span, weight: Callable[[Mapping[str, Any]], int], *,
            requests: bool = False) -> dict[int, int]:
    tenant_id, mailbox, now_ms, bucket_of = span.tenant_id, span.mailbox, span.now_ms, span.bucket_of
    since = datetime.fromtimestamp(now_ms / 1000, UTC) - timedelta(seconds=span.window_s)
    reached = _A.c.http_status.is_not(None) if requests else _A.c.outcome.in_(MAY_HAVE_REACHED)
    attempts = (select(_A.c.started_at, _N.c.payload).join(_N, _N.c.id == _A.c.notification_id)
                .where(_A.c.tenant_id == tenant_id, _A.c.started_at >= since, reached))
    sending = select(_N.c.payload).where(_N.c.tenant_id == tenant_id, _N.c.state == State.SENDING.value)
    if span.own_claim is not None:
        sending = sending.where(_N.c.claimed_by != span.own_claim)
    if mailbox is not None:
        attempts = attempts.where(func.lower(_A.c.mailbox) == mailbox.lower())
        sending = sending.where(or_(func.lower(_N.c.sender) == mailbox.lower(), _N.c.sender.is_(None)))
    counts: Counter[int] = Counter()
    with engine.connect() as conn:
        for started_at, payload in conn.execute(attempts):
            at = started_at if started_at.tzinfo else started_at.replace(tzinfo=UTC)
            counts[bucket_of(int(at.timestamp() * 1000))] += weight(payload)
        for (payload,) in conn.execute(sending):
            counts[bucket_of(now_ms)] += weight(payload)
    return {b: n for b, n in counts.items() if n > 0}
