"""Which senders the dispatcher holds back after a 429, read from the database.

A 429 blocks one (app, mailbox) in Redis; the database keeps the same fact (a `retry_wait` row with
`last_status` 429 and its Retry-After in `next_attempt_ms`) so a Redis data loss cannot lift it. A
tenant with several named senders must not stop sending from all of them because one mailbox is
throttled, so the hold is per (tenant, sender address): every row carries its sender's address from
enqueue (`notification.sender`, stamped by the producer). A row stored without one (before named
senders, or a platform-default row) stands for the whole tenant, as it did before.
"""

from __future__ import annotations

from dataclasses import dataclass

from sqlalchemy import Connection, func, select

from shared.models import Notification, State

_N = Notification.__table__  # type: ignore[attr-defined]


@dataclass(frozen=True, slots=True)
class ThrottledMailboxes:
    """Senders waiting out a recorded Retry-After: (tenant, lowercased address), and whole tenants."""

    mailboxes: frozenset[tuple[str, str]]
    tenants: frozenset[str]

    def holds(self, tenant_id: str, sender: str | None) -> bool:
        """Whether a due row of `tenant_id` sending from `sender` must wait."""
        if tenant_id in self.tenants:
            return True
        return sender is not None and (tenant_id, sender.lower()) in self.mailboxes


def throttled_mailboxes(conn: Connection, now_ms: int) -> ThrottledMailboxes:
    """The senders with a row waiting out a 429 at `now_ms`."""
    rows = conn.execute(
        select(_N.c.tenant_id, func.lower(_N.c.sender)).distinct()
        .where(_N.c.state == State.RETRY_WAIT.value, _N.c.last_status == 429, _N.c.next_attempt_ms > now_ms)
    ).all()
    return ThrottledMailboxes(frozenset((t, s) for t, s in rows if s is not None),
                              frozenset(t for t, s in rows if s is None))
