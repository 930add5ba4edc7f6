"""Per (app, mailbox) throttles like Exchange Online's: concurrency, request rate, daily recipients, and
the tenant-wide external recipient rate limit (TERRL).

The recipient limits answer the way Exchange does: the request is accepted (202) and the message would
bounce later with a non-delivery report, which the outbox records (`would_bounce`, `ndr`). Recipients
are counted once per message however many of to, cc and bcc name them."""

from __future__ import annotations

import math
from collections import defaultdict, deque
from collections.abc import Callable

from emulator.config import EmulatorConfig

WINDOW_S = 600.0

Key = tuple[str, str]  # (app id, canonical mailbox address)


class Limits:
    """In-flight counts, a sliding 10-minute request window and a 24-hour recipient window.

    Everything runs on the event loop thread, so no locks. Times come from the emulator clock.
    """

    def __init__(self, config: Callable[[], EmulatorConfig], now: Callable[[], float]) -> None:
        self._config = config
        self._now = now
        self.reset()

    def reset(self) -> None:
        """Forget all throttle state."""
        self.in_flight: dict[Key, int] = defaultdict(int)
        self.max_in_flight: dict[Key, int] = {}
        self._window: dict[Key, deque[float]] = defaultdict(deque)
        self._retry_window: dict[Key, tuple[float, float]] = {}
        self._recipients: dict[str, deque[tuple[float, int]]] = defaultdict(deque)
        self._recipient_totals: dict[str, int] = defaultdict(int)
        self._uploads: dict[Key, deque[tuple[float, int]]] = defaultdict(deque)

    def inside_retry_after(self, key: Key, sent_at: float | None = None) -> str | None:
        """Whether a request for `key`, sent at `sent_at` (default now), fell inside a Retry-After
        window we had announced for it: "violation", "in_flight" (within the grace after the 429
        left, so probably sent before the client could read it) or None."""
        window = self._retry_window.get(key)
        at = self._now() if sent_at is None else sent_at
        if window is None or not window[0] <= at < window[1]:
            return None
        return "in_flight" if at < window[0] + self._config().retry_after_grace_ms / 1000 else "violation"

    def note_retry_after(self, key: Key, retry_after: str | None) -> None:
        """Remember a Retry-After sent for `key`."""
        if retry_after is None:
            return
        try:
            seconds = float(retry_after)
        except ValueError:
            return
        now = self._now()
        start, end = self._retry_window.get(key, (now, 0.0))
        if end <= now:
            start = now
        self._retry_window[key] = (start, max(end, now + seconds))

    def enter(self, key: Key) -> tuple[str, str | None] | None:
        """Admit a request, or return (problem, retry_after) for a 429.

        Every request counts against the 10-minute window, admitted or not (Graph keeps counting
        while you are throttled).
        """
        config = self._config()
        now = self._now()
        window = self._window[key]
        window.append(now)
        while window and window[0] <= now - WINDOW_S:
            window.popleft()
        if self.in_flight[key] >= config.mailbox_concurrency:
            return "mailbox_concurrency", config.concurrency_retry_after
        if len(window) > config.requests_per_10min:
            wait_s = max(1, math.ceil(window[0] + WINDOW_S - now))
            return "request_rate", str(wait_s)
        count = self.in_flight[key] + 1
        self.in_flight[key] = count
        if count > self.max_in_flight.get(key, 0):
            self.max_in_flight[key] = count
        return None

    def leave(self, key: Key) -> None:
        """Mark an admitted request finished."""
        self.in_flight[key] -= 1

    def add_recipients(self, mailbox: str, count: int) -> bool:
        """Count recipients sent by `mailbox`; True when the rolling total is over the limit
        (Exchange accepts the message and would bounce it with an NDR)."""
        return self._add(mailbox, count) > self._config().recipients_per_day

    def add_external(self, tenant_id: str, count: int) -> bool:
        """Count external recipients of `tenant_id`; True when over the tenant's external limit
        (accepted, then an NDR 550 5.7.233)."""
        limit = self._config().external_recipients_per_day
        total = self._add(f"tenant:{tenant_id}", count)
        return limit is not None and count > 0 and total > limit

    def _add(self, key: str, count: int) -> int:
        now = self._now()
        log = self._recipients[key]
        while log and log[0][0] <= now - self._config().recipient_window_s:
            self._recipient_totals[key] -= log.popleft()[1]
        log.append((now, count))
        self._recipient_totals[key] += count
        return self._recipient_totals[key]

    def add_upload(self, key: Key, size_bytes: int) -> str | None:
        """Count bytes uploaded for `key` in the rolling upload window; the Retry-After (seconds) of a 429
        when they do not fit, and then nothing is counted."""
        config = self._config()
        now = self._now()
        log = self._uploads[key]
        while log and log[0][0] <= now - config.upload_window_s:
            log.popleft()
        total = sum(n for _, n in log)
        if total + size_bytes > config.upload_bytes_per_window:
            freed, wait_s = 0, config.upload_window_s
            for at, n in log:  # the moment enough of the window's bytes have left it
                freed += n
                if total - freed + size_bytes <= config.upload_bytes_per_window:
                    wait_s = at + config.upload_window_s - now
                    break
            return str(max(1, math.ceil(wait_s)))
        log.append((now, size_bytes))
        return None
