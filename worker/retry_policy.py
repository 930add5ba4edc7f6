"""The one retry policy: which failures retry, which never do, and when the next try is due.

    202                                    -> sent
    401 InvalidAuthenticationToken         -> AuthenticationExpired (new token, resend once)
    429 / 503 / 500 / 502 / connect error  -> retry with Retry-After, else capped exponential backoff,
                                              until `max_age_s` (no attempt count ends them)
    504 / timeout / reset after sending    -> ambiguous: `ambiguous_policy` decides
    AADSTS7000215/7000222/700016/65001/7000112/…, ErrorAccessDenied (recorded as AccessPolicyDenied,
    RbacScopeDenied or RbacPropagating when the token tells which), 401 NoPermissionsInAccessToken,
    ErrorSendAsDenied, MailboxNotEnabledForRESTAPI (the tenant's configuration is broken)
                                           -> held until a provider save, failed past `hold_max_s`;
                                              a refusal of one sender mailbox holds that sender, a
                                              credential or consent error the whole tenant
                                              (`shared.holds.hold_scope`)
    ErrorInvalidUser, ErrorInvalidRecipients, ErrorMessageSizeExceeded, other 4xx, other AADSTS token
    errors                                 -> failed, never retried

The platform default's SMTP relay (transport.smtp maps its replies into the same tree):

    250                                    -> sent
    4xx, connection refused or lost before DATA -> retry with exponential backoff
    5xx, AUTH refused                      -> failed, never retried
    connection lost once DATA began        -> ambiguous: `ambiguous_policy` decides

`compute_backoff` is pure (full jitter under a cap). Transient failures (throttling included) retry
until the row is `max_age_s` old: an outage of Graph or Entra ID of any length shorter than that fails
nothing. Only the ambiguous rule still counts attempts (`max_attempts`).

Outcome policy: `decide()` is the one place that maps what happened to a row (an `Event`) to its
next state, when it is due again and how the attempt is labelled. Delivery, the relay path and the
sweeper all ask it; none of them decides on its own. Holds and time-based retries live here;
new rules (breakers, quotas) go here too.

    Attempted(error)          a token was asked for or a request went out; `error` None = accepted
    Requeued(delay_ms, reason) the row never left (no slot in time, mailbox blocked, Redis down, an
                              open circuit breaker): retry_wait after the delay, no attempt spent, its
                              `wait_reason` shown; failed past the maximum age
    WorkerLost(evidence)      the sweeper found its worker dead; the send marks say how far it got:
                              never started -> queued; accepted -> sent; maybe sent -> ambiguous rule
    HoldExpired()             the sweeper found a held row past `hold_max_s`: failed, its code kept
    QuotaSpent(next_free_ms)  the sender's Exchange budget (recipients per 24 h, requests per 10 min, the
                              tenant's external recipients) has no room: retry_wait until it has, reason
                              `quota`, no attempt spent and never failed for it (`next_free_ms` -1: the
                              message alone is over the limit, failed RecipientLimitTooLow)
"""

from __future__ import annotations

import dataclasses
import random
from dataclasses import dataclass
from enum import StrEnum

from shared.codes import Code
from shared.errors import (
    AmbiguousOutcome,
    AuthenticationExpired,
    DeliveryError,
    PermanentError,
    Throttled,
    TokenError,
    TransientError,
)
from shared.models import State, WaitReason
from shared.settings import Settings
from transport.graph import GraphResponse
from worker.sendmarks import Evidence

_TRANSIENT_STATUSES = {408, 429, 500, 502, 503}
_AMBIGUOUS_STATUSES = {504}
# Configuration errors: every notification of the tenant (or, for a refusal of one mailbox, of that sender:
# shared.holds.SENDER_HOLD_CODES) would fail the same way until an admin fixes the app, its credential, its
# consent or the mailbox's permissions, so they wait instead of failing.
HOLD_CODES = frozenset({
    "AADSTS7000215",  # invalid client secret (often the secret's ID pasted instead of its Value)
    "AADSTS7000222",  # client secret expired
    "AADSTS700027",   # certificate assertion refused (expired or unknown certificate)
    "AADSTS700016",   # application not found in the tenant
    "AADSTS65001",    # admin consent missing
    "AADSTS7000112",  # application disabled
    "AADSTS7000229",  # no service principal for the app in the tenant
    "AADSTS500011",   # resource principal (Graph) not found in the tenant
    "ErrorAccessDenied", "ErrorSendAsDenied", "MailboxNotEnabledForRESTAPI",
    "NoPermissionsInAccessToken",  # 401, but no new token can help: no application permission at all
    Code.ACCESS_POLICY_DENIED.value, Code.RBAC_SCOPE_DENIED.value, Code.RBAC_PROPAGATING.value,
})


def compute_backoff(attempt: int, *, base_ms: int, cap_ms: int, rng: random.Random | None = None) -> int:
    """Full-jitter exponential backoff in ms for the given 1-based attempt number: uniform in
    [1, min(cap, base * 2^(attempt-1))], so retries of many rows after one outage spread out."""
    ceiling = min(cap_ms, base_ms * (2 ** max(0, min(attempt - 1, 30))))
    return max(1, int((rng or random).uniform(0, ceiling)))


def classify(resp: GraphResponse) -> DeliveryError | None:
    """None for success, else the error in our tree that this response means."""
    if resp.status == 202 or 200 <= resp.status < 300:
        return None
    kwargs = dict(status=resp.status, code=resp.code, request_id=resp.request_id,
                  client_request_id=resp.client_request_id, retry_after_s=resp.retry_after_s)
    message = resp.message or f"HTTP {resp.status}"
    if resp.status == 401 and resp.code != "NoPermissionsInAccessToken":
        return AuthenticationExpired(message, **kwargs)  # type: ignore[arg-type]
    if resp.status == 429:
        return Throttled(message, **kwargs)  # type: ignore[arg-type]
    if resp.status in _AMBIGUOUS_STATUSES:
        return AmbiguousOutcome(message, **kwargs)  # type: ignore[arg-type]
    if resp.status in _TRANSIENT_STATUSES:
        return TransientError(message, **kwargs)  # type: ignore[arg-type]
    return PermanentError(message, **kwargs)  # type: ignore[arg-type]


class Stage(StrEnum):
    """Where an attempt ended: asking Entra ID for a token, or sending the message."""

    TOKEN = "token"
    SEND = "send"


@dataclass(frozen=True, slots=True)
class Attempted:
    """An attempt ran to an answer; `error` None means the message was accepted."""

    error: DeliveryError | None
    stage: Stage = Stage.SEND


@dataclass(frozen=True, slots=True)
class Requeued:
    """The row goes back without having left: due again after `delay_ms`; `reason` says why it waits
    (a Retry-After block, an open circuit breaker), None when it is only a moment's wait for a slot."""

    delay_ms: int
    reason: WaitReason | None = None


@dataclass(frozen=True, slots=True)
class WorkerLost:
    """The row's worker died while it was `sending`; `evidence` is what its send mark says."""

    evidence: Evidence


@dataclass(frozen=True, slots=True)
class HoldExpired:
    """A held row's configuration was not fixed within `hold_max_s`."""


@dataclass(frozen=True, slots=True)
class QuotaSpent:
    """The sender's sending budget is spent until `next_free_ms` (-1: the message alone exceeds it)."""

    next_free_ms: int


Event = Attempted | Requeued | WorkerLost | HoldExpired | QuotaSpent


@dataclass(frozen=True, slots=True, kw_only=True)
class Decision:
    """What to do with a notification after an event.

    `label` is the outcome of the attempt to record (`sent`, `retry`, `throttled`, `token_error`,
    `ambiguous`, `failed`), None when no attempt is recorded. `code` and `message` are set when the
    policy itself says why (MaxAgeExceeded, WorkerLost); otherwise the error's own code stands.
    `possible_duplicate` says whether this event may have sent a copy (the row's earlier flag is
    the caller's to keep).
    """

    state: State
    next_attempt_ms: int
    possible_duplicate: bool = False
    ambiguous_count: int = 0
    label: str | None = None
    code: str | None = None
    message: str | None = None
    wait_reason: WaitReason | None = None


def decide(
    event: Event,
    *,
    attempts: int,
    ambiguous_count: int,
    age_s: float,
    now_ms: int,
    settings: Settings,
    rng: random.Random | None = None,
) -> Decision:
    """The next state of a notification after `event`; `attempts` counts the attempts so far,
    this event's included."""
    if isinstance(event, QuotaSpent):
        return _quota_spent(event, ambiguous_count, now_ms)
    if isinstance(event, Requeued):
        return _requeued(event, ambiguous_count, age_s, now_ms, settings)
    if isinstance(event, WorkerLost):
        return _worker_lost(event, attempts, ambiguous_count, now_ms, settings)
    if isinstance(event, HoldExpired):
        return Decision(state=State.FAILED, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count,
                        message=f"held {settings.hold_max_s / 3600:g} h without the configuration being fixed")
    error = event.error
    label = attempt_label(event)
    if error is None:
        return Decision(state=State.SENT, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count, label=label)
    if isinstance(error, AmbiguousOutcome):
        return _ambiguous(label, attempts, ambiguous_count, age_s, now_ms, settings, rng)
    if isinstance(error, PermanentError) and error.code in HOLD_CODES:
        return Decision(state=State.HELD, next_attempt_ms=now_ms + int(settings.hold_max_s * 1000),
                        ambiguous_count=ambiguous_count, label=label, wait_reason=WaitReason.HELD)
    if isinstance(error, PermanentError) or not isinstance(error, TransientError | AuthenticationExpired):
        return Decision(state=State.FAILED, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count, label=label)
    if age_s >= settings.max_age_s:  # time-based: however many attempts a transient failure took
        return Decision(state=State.FAILED, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count, label=label)
    return Decision(state=State.RETRY_WAIT, next_attempt_ms=now_ms + retry_delay_ms(error, attempts, settings, rng),
                    ambiguous_count=ambiguous_count, label=label,
                    wait_reason=WaitReason.THROTTLED if isinstance(error, Throttled) else None)


def attempt_label(event: Attempted) -> str:
    """How an attempt is recorded in delivery_attempt.outcome (also for an attempt that is not
    the row's last, such as the 401 before a resend)."""
    error = event.error
    if error is None:
        return "sent"
    if event.stage is Stage.TOKEN or isinstance(error, TokenError):
        return "token_error"
    if isinstance(error, Throttled):
        return "throttled"
    if isinstance(error, AmbiguousOutcome):
        return "ambiguous"
    return "retry" if isinstance(error, TransientError | AuthenticationExpired) else "failed"


def _ambiguous(label: str, attempts: int, ambiguous_count: int, age_s: float, now_ms: int, settings: Settings,
               rng: random.Random | None, *, capped: bool = True, backoff: bool = True) -> Decision:
    # The one ambiguous rule. A worker lost mid-send is retried due now and without the age and
    # attempt caps (capped=False, backoff=False), as the sweeper always did.
    within_caps = not capped or (age_s < settings.max_age_s and attempts < settings.max_attempts)
    if settings.ambiguous_policy == "retry_once" and ambiguous_count == 0 and within_caps:
        delay = compute_backoff(1, base_ms=settings.backoff_base_ms, cap_ms=settings.backoff_cap_ms,
                                rng=rng) if backoff else 0
        return Decision(state=State.RETRY_WAIT, next_attempt_ms=now_ms + delay, possible_duplicate=True,
                        ambiguous_count=ambiguous_count + 1, label=label)
    return Decision(state=State.AMBIGUOUS, next_attempt_ms=now_ms, possible_duplicate=True,
                    ambiguous_count=ambiguous_count + 1, label=label)


def _quota_spent(event: QuotaSpent, ambiguous_count: int, now_ms: int) -> Decision:
    if event.next_free_ms < 0:
        return Decision(state=State.FAILED, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count, label="failed",
                        code=Code.RECIPIENT_LIMIT_TOO_LOW,
                        message="the message has more recipients than its sender may send in a day")
    return Decision(state=State.RETRY_WAIT, next_attempt_ms=max(now_ms + 1, event.next_free_ms),
                    ambiguous_count=ambiguous_count, wait_reason=WaitReason.QUOTA)


def _requeued(event: Requeued, ambiguous_count: int, age_s: float, now_ms: int, settings: Settings) -> Decision:
    if age_s >= settings.max_age_s:
        return Decision(state=State.FAILED, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count, label="failed",
                        code=Code.MAX_AGE_EXCEEDED, message="mailbox stayed throttled past the maximum age")
    return Decision(state=State.RETRY_WAIT, next_attempt_ms=now_ms + max(1, event.delay_ms),
                    ambiguous_count=ambiguous_count, wait_reason=event.reason)


def _worker_lost(event: WorkerLost, attempts: int, ambiguous_count: int, now_ms: int,
                 settings: Settings) -> Decision:
    if event.evidence is Evidence.NEVER_STARTED:
        return Decision(state=State.QUEUED, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count)
    if event.evidence is Evidence.ACCEPTED:
        return Decision(state=State.SENT, next_attempt_ms=now_ms, ambiguous_count=ambiguous_count, label="sent",
                        message="recorded by the sweeper: Graph accepted it, then its worker died")
    decision = _ambiguous("ambiguous", attempts, ambiguous_count, 0.0, now_ms, settings, None,
                          capped=False, backoff=False)
    return dataclasses.replace(decision, code=Code.WORKER_LOST,
                               message="the worker sending this died; the message may have been sent")


def retry_delay_ms(error: DeliveryError, attempts: int, settings: Settings, rng: random.Random | None = None) -> int:
    """Retry-After when the service gave one (never less), else exponential backoff."""
    if error.retry_after_s is not None:
        return int(min(error.retry_after_s, settings.max_age_s) * 1000) + 1
    return compute_backoff(attempts, base_ms=settings.backoff_base_ms, cap_ms=settings.backoff_cap_ms, rng=rng)
