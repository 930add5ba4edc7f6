"""Exchange's sending limits, kept before Graph is asked: the gate a batch passes before it is sent.

Exchange Online accepts mail over a mailbox's daily recipient limit with a 202 and bounces it later
with a non-delivery report, so the limit must be kept on our side. For each (app, mailbox) group of a
batch, in order, the gate takes from three fleet-wide counters (transport.quota_windows) in one Redis
call: the sender's recipients per rolling 24 h (its `daily_recipient_limit`, else the platform's),
sendMail requests per 10 minutes, and, when the tenant set one, its external recipients per 24 h.
Rows that fit are sent; the first that does not, and every later one that needs the same counter, wait
(`QuotaSpent`: retry_wait, reason `quota`, due when the counters will have room) without an attempt and
without ever failing for it (internal mail still goes while the external budget is spent).
After the send, what was taken for a row that never reached Exchange is given back.

A counter Redis lost is rebuilt from the database first (shared.quota_usage), so a FLUSHALL never
reads as "nothing sent". Redis down: the rows go back to the database untouched (`Requeued`).
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import structlog
from sqlalchemy import Engine

from shared import quota_usage
from shared.attachments import uploaded_bytes
from shared.errors import ProviderError, RedisUnavailable
from shared.providers import Provider, ResolvedProvider
from shared.senders import DEFAULT_SENDER
from shared.settings import Settings
from transport.quota_windows import (
    EXTERNAL,
    RECIPIENTS,
    REQUESTS,
    TAKEN,
    UPLOADS,
    WAITS,
    QuotaWindows,
    Window,
    sender_windows,
    upload_window,
)
from worker.retry_policy import Event, QuotaSpent, Requeued, decide
from worker.store import AttemptRecord, ClaimedRow, RowOutcome

log = structlog.get_logger(__name__)


@dataclass(slots=True)
class _Taken:
    """What one admitted row took: the counters, the bucket each took it in, and the counts."""

    windows: tuple[Window, ...]
    buckets: tuple[int, ...]
    counts: tuple[int, ...]


@dataclass(slots=True)
class Gated:
    """The rows to send now, the outcomes of those that wait, and what the sent ones took."""

    to_send: list[ClaimedRow] = field(default_factory=list)
    waiting: list[RowOutcome] = field(default_factory=list)
    taken: dict[str, _Taken] = field(default_factory=dict)


def quota_windows_for(provider: ResolvedProvider, settings: Settings) -> tuple[Window, ...]:
    """The counters a send from this provider's sender passes (the upload volume last)."""
    return (*sender_windows(tenant_id=provider.tenant_id, client_id=provider.client_id,
                            address=provider.sender_address, daily_recipient_limit=provider.daily_recipient_limit,
                            daily_external_recipient_limit=provider.daily_external_recipient_limit,
                            settings=settings),
            upload_window(client_id=provider.client_id, address=provider.sender_address, settings=settings))


def internal_domains(provider: ResolvedProvider) -> set[str]:
    """The domains counted as internal for the external-recipient budget: those of the tenant's senders."""
    return {s.address.rsplit("@", 1)[-1].lower() for s in provider.senders.values()} or {
        provider.sender_address.rsplit("@", 1)[-1].lower()}


class QuotaGate:
    """Admits a batch's Graph rows under their senders' limits (runs in the task thread)."""

    def __init__(self, windows: QuotaWindows, engine: Engine, settings: Settings, *, claim: str) -> None:
        self._claim = claim  # this batch's claimed_by: its own `sending` rows are not sent yet
        self._windows = windows
        self._engine = engine
        self._settings = settings

    def admit(self, rows: Sequence[ClaimedRow], providers: dict[str, Provider | ProviderError]) -> Gated:
        """Split `rows` into those that may be sent now and the outcomes of those that must wait."""
        gated = Gated()
        groups: dict[str, list[tuple[ClaimedRow, ResolvedProvider]]] = {}
        for row in rows:
            provider = providers[row.tenant_id]
            named = provider.for_sender(row.payload.get("sender", DEFAULT_SENDER)) \
                if isinstance(provider, ResolvedProvider) else None
            if named is None:  # the platform relay, no provider, an unknown sender: delivery decides
                gated.to_send.append(row)
            else:
                groups.setdefault(named.mailbox_key, []).append((row, named))
        pending = list(groups.values())
        while pending:
            group = pending.pop(0)
            try:
                self._admit_group(group, gated)
            except RedisUnavailable:  # this group and the rest go back untouched, without asking again
                log.warning("quota.redis_unavailable", mailbox=group[0][1].mailbox_key, exc_info=True)
                for left in (group, *pending):
                    gated.waiting += [self._outcome(row, p, Requeued(self._settings.slot_requeue_ms))
                                      for row, p in left]
                break
        return gated

    def give_back_unsent(self, gated: Gated, outcomes: Sequence[RowOutcome]) -> None:
        """Return what rows took that never reached Exchange: recipients unless an attempt may have been
        delivered, the request unless Graph answered one. One Redis call per counter and bucket; with
        Redis gone it stops at once and keeps the counts (overstating is the safe side)."""
        returned: Counter[tuple[Window, int]] = Counter()
        for o in outcomes:
            taken = gated.taken.get(o.row.id)
            if taken is None:
                continue
            reached = any(a.outcome in quota_usage.MAY_HAVE_REACHED for a in o.attempts)
            answered = any(a.http_status is not None for a in o.attempts)
            for window, bucket, count in zip(taken.windows, taken.buckets, taken.counts, strict=True):
                if not (answered if window.key.startswith((REQUESTS, UPLOADS)) else reached):
                    returned[(window, bucket)] += count
        try:
            for (window, bucket), count in returned.items():
                self._windows.give_back(window, bucket, count)
        except RedisUnavailable:
            log.warning("quota.give_back_failed", counters=len(returned), exc_info=True)

    def _admit_group(self, group: list[tuple[ClaimedRow, ResolvedProvider]], gated: Gated) -> None:
        provider = group[0][1]
        windows = quota_windows_for(provider, self._settings)
        domains = internal_domains(provider)
        wanted = [self._wanted(row, windows, domains, self._settings) for row, _ in group]
        admission = self._windows.admit(windows, wanted, _now_ms())
        for _ in windows:  # a counter Redis lost is rebuilt from the database, then asked again
            if admission.unseeded is None:
                break
            self._rebuild(admission.unseeded, provider, domains)
            admission = self._windows.admit(windows, wanted, _now_ms())
        if admission.unseeded is not None:
            raise RedisUnavailable("quota counters lost again while being rebuilt")
        for (row, named), flag, counts in zip(group, admission.flags, wanted, strict=True):
            if flag == TAKEN:
                gated.to_send.append(row)
                gated.taken[row.id] = _Taken(windows, admission.buckets, tuple(counts))
            else:  # WAITS until the budget has room; NEVER: over a limit on its own, failed
                next_free_ms = admission.next_free_ms if flag == WAITS else -1
                gated.waiting.append(self._outcome(row, named, QuotaSpent(next_free_ms)))
        if admission.admitted < len(group):
            log.info("quota.spent", mailbox=provider.mailbox_key, waiting=len(group) - admission.admitted,
                     next_free_ms=admission.next_free_ms)

    @staticmethod
    def _wanted(row: ClaimedRow, windows: Sequence[Window], domains: set[str], settings: Settings) -> list[int]:
        """One count per window: recipients, requests (a large message makes one per chunk and step),
        external recipients when kept, bytes to upload."""
        size = uploaded_bytes(row.payload)
        counts = [len(quota_usage.recipients_of(row.payload)), upload_requests(row.payload, settings) if size else 1]
        if any(w.key.startswith(EXTERNAL) for w in windows):
            counts.append(quota_usage.external_count(row.payload, domains))
        return [*counts, size]

    def _rebuild(self, window: Window, provider: ResolvedProvider, domains: set[str]) -> None:
        if window.key.startswith(UPLOADS):  # not in the database: Graph's own 429 covers a lost count
            self._windows.seed(window, {})
            return
        mailbox = None if window.key.startswith(EXTERNAL) else provider.sender_address
        span = quota_usage.Span(provider.tenant_id, mailbox, window.window_ms / 1000, _now_ms(), window.bucket_of,
                                own_claim=self._claim)
        if window.key.startswith(RECIPIENTS):
            counts = quota_usage.mailbox_recipients(self._engine, span)
        elif window.key.startswith(REQUESTS):
            counts = quota_usage.mailbox_requests(self._engine, span)
        else:
            counts = quota_usage.tenant_external(self._engine, span, domains)
        seeded = self._windows.seed(window, counts)
        log.info("quota.rebuilt", counter=window.key, from_database=sum(counts.values()), written=seeded)

    def _outcome(self, row: ClaimedRow, provider: ResolvedProvider, event: Event) -> RowOutcome:
        now = time.time()
        d = decide(event, attempts=row.attempts, ambiguous_count=row.ambiguous_count,
                   age_s=now - row.age_start.astimezone(UTC).timestamp(), now_ms=int(now * 1000),
                   settings=self._settings)
        records: tuple[AttemptRecord, ...] = ()
        if d.label is not None:  # RecipientLimitTooLow: the one case recorded as an attempt
            records = (AttemptRecord(started_at=datetime.now(UTC), outcome=d.label, error_code=d.code,
                                     error_message=d.message, mailbox=provider.sender_address),)
        return RowOutcome(row, d.state, d.next_attempt_ms, records, row.possible_duplicate, d.ambiguous_count,
                          provider.version, provider.sender_address, wait_reason=d.wait_reason)


def upload_requests(payload: dict[str, Any], settings: Settings) -> int:
    """The Graph requests a large message makes when nothing fails: the draft, a session and its chunks per
    uploaded attachment, the send."""
    chunks = sum(1 + -(-int(a.get("stored_size") or 0) // settings.upload_chunk_bytes)
                 for a in payload.get("attachments") or () if a.get("stored_size"))
    return 2 + chunks


def _now_ms() -> int:
    return int(time.time() * 1000)
