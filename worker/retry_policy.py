"""The one retry policy: which failures retry, which never do, and when the next try is due.

    202                                    -> sent
    401 InvalidAuthenticationToken         -> AuthenticationExpired (new token, resend once)
    429 / 503 / 500 / 502 / connect error  -> retry with Retry-After, else exponential backoff
    504 / timeout / reset after sending    -> ambiguous: `ambiguous_policy` decides
    ErrorAccessDenied, ErrorInvalidUser, MailboxNotEnabledForRESTAPI, ErrorInvalidRecipients,
    ErrorSendAsDenied, ErrorMessageSizeExceeded, other 4xx, AADSTS token errors -> failed, never retried

The platform default's SMTP relay (transport.smtp maps its replies into the same tree):

    250                                    -> sent
    4xx, connection refused or lost before DATA -> retry with exponential backoff
    5xx, AUTH refused                      -> failed, never retried
    connection lost once DATA began        -> ambiguous: `ambiguous_policy` decides

`compute_backoff` is pure; attempts are capped by `max_attempts` and by `max_age_s`.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

from shared.errors import (
    AmbiguousOutcome,
    AuthenticationExpired,
    DeliveryError,
    PermanentError,
    Throttled,
    TransientError,
)
from shared.models import State
from shared.settings import Settings
from transport.graph import GraphResponse

_TRANSIENT_STATUSES = {408, 429, 500, 502, 503}
_AMBIGUOUS_STATUSES = {504}


def compute_backoff(attempt: int, *, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> int:
    """Full-jitter exponential backoff in ms for the given 1-based attempt number."""
    ceiling = min(cap_ms, base_ms * (2 ** max(0, min(attempt - 1, 30))))
    return int((rng or random).uniform(ceiling / 2, ceiling))


def classify(resp: GraphResponse) -> DeliveryError | None:
    """None for success, else the error in our tree that this response means."""
    if resp.status == 202 or 200 <= resp.status < 300:
        return None
    kwargs = dict(status=resp.status, code=resp.code, request_id=resp.request_id,
                  client_request_id=resp.client_request_id, retry_after_s=resp.retry_after_s)
    message = resp.message or f"HTTP {resp.status}"
    if resp.status == 401:
        return AuthenticationExpired(message, **kwargs)  # type: ignore[arg-type]
    if resp.status == 429:
        return Throttled(message, **kwargs)  # type: ignore[arg-type]
    if resp.status in _AMBIGUOUS_STATUSES:
        return AmbiguousOutcome(message, **kwargs)  # type: ignore[arg-type]
    if resp.status in _TRANSIENT_STATUSES:
        return TransientError(message, **kwargs)  # type: ignore[arg-type]
    return PermanentError(message, **kwargs)  # type: ignore[arg-type]


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with a notification after an attempt."""

    state: State
    next_attempt_ms: int
    possible_duplicate: bool = False
    ambiguous_count: int = 0


def decide(
    error: DeliveryError | None,
    *,
    attempts: int,
    ambiguous_count: int,
    age_s: float,
    now_ms: int,
    settings: Settings,
    rng: random.Random | None = None,
) -> Decision:
    """The next state for a notification whose latest attempt ended with `error`."""
    if error is None:
        return Decision(State.SENT, now_ms, ambiguous_count=ambiguous_count)
    if isinstance(error, AmbiguousOutcome):
        if (settings.ambiguous_policy == "retry_once" and ambiguous_count == 0 and age_s < settings.max_age_s
                and attempts < settings.max_attempts):
            delay = compute_backoff(1, base_ms=settings.backoff_base_ms, cap_ms=settings.backoff_cap_ms, rng=rng)
            return Decision(State.RETRY_WAIT, now_ms + delay, True, ambiguous_count + 1)
        return Decision(State.AMBIGUOUS, now_ms, True, ambiguous_count + 1)
    if isinstance(error, PermanentError) or not isinstance(error, TransientError | AuthenticationExpired):
        return Decision(State.FAILED, now_ms, ambiguous_count=ambiguous_count)
    if attempts >= settings.max_attempts or age_s >= settings.max_age_s:
        return Decision(State.FAILED, now_ms, ambiguous_count=ambiguous_count)
    return Decision(State.RETRY_WAIT, now_ms + retry_delay_ms(error, attempts, settings, rng),
                    ambiguous_count=ambiguous_count)


def retry_delay_ms(error: DeliveryError, attempts: int, settings: Settings, rng: random.Random | None = None) -> int:
    """Retry-After when the service gave one (never less), else exponential backoff."""
    if error.retry_after_s is not None:
        return int(min(error.retry_after_s, settings.max_age_s) * 1000) + 1
    return compute_backoff(attempts, base_ms=settings.backoff_base_ms, cap_ms=settings.backoff_cap_ms, rng=rng)
