"""What the emulator saw: the outbox, a masked request log and counters."""

from __future__ import annotations

import re
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

_SECRET_FIELDS = frozenset({"client_secret", "client_assertion", "assertion", "password", "refresh_token"})
_MASKED = "***"
_BEARER = re.compile(r"^(bearer|basic)\s+.+$", re.IGNORECASE)


def mask_headers(headers: Any) -> dict[str, str]:
    """Headers with Authorization values replaced by their scheme and `***`."""
    out: dict[str, str] = {}
    for name, value in headers.items():
        if name.lower() == "authorization" and _BEARER.match(value):
            out[str(name)] = value.split(None, 1)[0] + " " + _MASKED
        else:
            out[str(name)] = value
    return out


def mask_form(form: dict[str, str]) -> dict[str, str]:
    """Form fields with secrets and assertions masked."""
    return {k: (_MASKED if k in _SECRET_FIELDS else v) for k, v in form.items()}


@dataclass
class Counters:
    """Counts since the last reset."""

    token_requests: Counter[str] = field(default_factory=Counter)
    token_requests_by_app: Counter[str] = field(default_factory=Counter)
    token_errors: Counter[str] = field(default_factory=Counter)
    tokens_issued: int = 0
    discovery_requests: int = 0
    send_requests: int = 0
    accepted: int = 0
    would_bounce: int = 0
    send_errors: Counter[str] = field(default_factory=Counter)
    throttled_429: int = 0
    throttled_by_reason: Counter[str] = field(default_factory=Counter)
    requests_inside_retry_after: int = 0
    requests_in_flight_at_429: int = 0
    reset_connections: int = 0
    faults_injected: int = 0
    upload_requests: int = 0  # upload PUTs (emulator.drafts)
    upload_bytes: int = 0  # bytes stored from them

    def as_dict(self, max_concurrency: dict[tuple[str, str], int]) -> dict[str, Any]:
        """JSON view; `max_concurrency` is keyed "appid/mailbox"."""
        out: dict[str, Any] = {}
        for name, value in self.__dict__.items():
            out[name] = dict(value) if isinstance(value, Counter) else value
        out["max_concurrency"] = {f"{app}/{box}": n for (app, box), n in max_concurrency.items()}
        return out


class Inspection:
    """The outbox, the request log (a bounded ring) and counters."""

    def __init__(self, log_size: int) -> None:
        self.outbox: list[dict[str, Any]] = []
        self.log: deque[dict[str, Any]] = deque(maxlen=log_size)
        self.counters = Counters()

    def reset(self, log_size: int | None = None) -> None:
        """Clear everything."""
        self.outbox = []
        self.log = deque(maxlen=log_size or self.log.maxlen)
        self.counters = Counters()


def matches(item: dict[str, Any], filters: dict[str, str]) -> bool:
    """Case-insensitive equality of each filter against the item's field of that name."""
    for name, wanted in filters.items():
        value = item.get(name)
        if value is None or str(value).lower() != str(wanted).lower():
            return False
    return True
