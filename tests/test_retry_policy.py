"""worker.retry_policy: every rule of its docstring, as pure functions (no I/O)."""

from __future__ import annotations

import random

import pytest

from shared.errors import (
    AmbiguousOutcome,
    AuthenticationExpired,
    DeliveryError,
    PermanentError,
    Throttled,
    TokenError,
    TransientError,
)
from shared.models import State
from shared.settings import Settings
from transport.graph import GraphResponse, parse_retry_after
from worker.retry_policy import (
    HOLD_CODES,
    Attempted,
    Decision,
    HoldExpired,
    Requeued,
    Stage,
    WorkerLost,
    attempt_label,
    classify,
    compute_backoff,
    decide,
    retry_delay_ms,
)
from worker.sendmarks import Evidence

NOW_MS = 1_700_000_000_000
BASE_MS = 100
CAP_MS = 1_600


def _settings(**overrides: object) -> Settings:
    values: dict[str, object] = dict(backoff_base_ms=BASE_MS, backoff_cap_ms=CAP_MS, max_attempts=4,
                                     max_age_s=60.0, ambiguous_policy="retry_once")
    values.update(overrides)
    return Settings(**values)  # type: ignore[arg-type]


def _resp(status: int, code: str | None = None, retry_after: str | None = None) -> GraphResponse:
    return GraphResponse(status=status, request_id="req-1", client_request_id="crid-1", code=code,
                         message=f"{code or status} happened" if status >= 400 else None,
                         retry_after_s=parse_retry_after(retry_after), retry_after_present=retry_after is not None,
                         latency_ms=1.0)


def _decide(error: DeliveryError | None, *, attempts: int = 1, ambiguous_count: int = 0, age_s: float = 1.0,
            settings: Settings | None = None, seed: int = 7) -> Decision:
    return decide(Attempted(error), attempts=attempts, ambiguous_count=ambiguous_count, age_s=age_s,
                  now_ms=NOW_MS, settings=settings or _settings(), rng=random.Random(seed))


# --- classify -------------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [200, 202])
def test_classify_success_is_none(status: int) -> None:
    assert classify(_resp(status)) is None


def test_classify_401_is_authentication_expired_with_fields() -> None:
    err = classify(_resp(401, "InvalidAuthenticationToken"))

    assert type(err) is AuthenticationExpired
    assert (err.status, err.code, err.request_id, err.client_request_id) == (
        401, "InvalidAuthenticationToken", "req-1", "crid-1")


def test_classify_401_no_permissions_in_token_is_permanent_not_a_token_to_renew() -> None:
    # No new token can carry a permission the app was never given: held like the other access errors
    err = classify(_resp(401, "NoPermissionsInAccessToken"))

    assert type(err) is PermanentError and err.code == "NoPermissionsInAccessToken"
    assert _decide(err, attempts=1).state is State.HELD


def test_classify_429_is_throttled_carrying_retry_after() -> None:
    err = classify(_resp(429, "ApplicationThrottled", retry_after="2.128"))

    assert isinstance(err, Throttled) and isinstance(err, TransientError)
    assert err.retry_after_s == pytest.approx(2.128)
    assert err.code == "ApplicationThrottled"


@pytest.mark.parametrize("status", [408, 500, 502, 503])
def test_classify_server_errors_are_transient_not_throttled(status: int) -> None:
    err = classify(_resp(status, f"HTTP{status}"))

    assert type(err) is TransientError
    assert err.status == status


def test_classify_504_is_ambiguous() -> None:
    err = classify(_resp(504, "GatewayTimeout"))

    assert type(err) is AmbiguousOutcome
    assert err.status == 504


@pytest.mark.parametrize(("status", "code"), [
    (403, "ErrorAccessDenied"), (404, "ErrorInvalidUser"), (404, "MailboxNotEnabledForRESTAPI"),
    (400, "ErrorInvalidRecipients"), (403, "ErrorSendAsDenied"), (400, "ErrorMessageSizeExceeded"),
    (413, "RequestEntityTooLarge"), (400, "BadRequest"), (409, "Conflict"),
])
def test_classify_other_4xx_is_permanent_with_code(status: int, code: str) -> None:
    err = classify(_resp(status, code))

    assert type(err) is PermanentError
    assert (err.status, err.code, err.request_id) == (status, code, "req-1")


def test_classify_message_falls_back_to_http_status() -> None:
    resp = GraphResponse(500, None, "c", None, None, None, False, 1.0)

    err = classify(resp)

    assert err is not None and err.message == "HTTP 500"


# --- decide -----------------------------------------------------------------------------------------


def test_decide_success_is_sent_now_keeping_ambiguous_count() -> None:
    d = _decide(None, ambiguous_count=1)

    assert (d.state, d.next_attempt_ms, d.ambiguous_count, d.possible_duplicate) == (State.SENT, NOW_MS, 1, False)


@pytest.mark.parametrize("error", [
    PermanentError("bad recipient", status=400, code="ErrorInvalidRecipients"),
    PermanentError("too big", status=413, code="ErrorMessageSizeExceeded"),
    PermanentError("no such user", status=404, code="ErrorInvalidUser"),
    TokenError("tenant not found", code="AADSTS90002"),
])
def test_decide_permanent_fails_on_first_attempt(error: PermanentError) -> None:
    d = _decide(error, attempts=1)

    assert d.state is State.FAILED
    assert d.next_attempt_ms == NOW_MS


@pytest.mark.parametrize("error", [
    TokenError("invalid client secret", code="AADSTS7000215"),
    TokenError("client secret expired", code="AADSTS7000222"),
    TokenError("app not found", code="AADSTS700016"),
    TokenError("consent missing", code="AADSTS65001"),
    TokenError("app disabled", code="AADSTS7000112"),
    PermanentError("denied [RAOP]", status=403, code="ErrorAccessDenied"),
    PermanentError("send as denied", status=403, code="ErrorSendAsDenied"),
    PermanentError("not enabled", status=404, code="MailboxNotEnabledForRESTAPI"),
    PermanentError("ErrorAccessDenied: [RAOP]", status=403, code="AccessPolicyDenied"),
    PermanentError("ErrorAccessDenied: denied", status=403, code="RbacScopeDenied"),
    PermanentError("ErrorAccessDenied: denied", status=403, code="RbacPropagating"),
])
def test_decide_configuration_error_holds_until_hold_max(error: PermanentError) -> None:
    d = _decide(error, attempts=1, settings=_settings(hold_max_s=7_200.0))

    assert d.state is State.HELD
    assert d.next_attempt_ms == NOW_MS + 7_200_000
    assert d.label == attempt_label(Attempted(error)) and d.code is None  # the service's code stands


def test_hold_codes_each_have_a_diagnosis() -> None:
    from shared.diagnosis import diagnose

    assert [c for c in sorted(HOLD_CODES) if diagnose(c, "") is None] == []


def test_decide_hold_expired_fails_keeping_the_rows_code() -> None:
    d = decide(HoldExpired(), attempts=0, ambiguous_count=0, age_s=0.0, now_ms=NOW_MS,
               settings=_settings(hold_max_s=3_600.0))

    assert (d.state, d.next_attempt_ms, d.label, d.code) == (State.FAILED, NOW_MS, None, None)
    assert d.message and "1 h" in d.message


def test_decide_token_endpoint_transient_error_retries() -> None:
    d = _decide(TransientError("Entra ID error", code="TokenServiceError"), attempts=1)

    assert d.state is State.RETRY_WAIT
    assert NOW_MS < d.next_attempt_ms <= NOW_MS + BASE_MS


@pytest.mark.parametrize(("header", "expected_delay_ms"), [("2", 2_001), ("2.128", 2_129), ("0", 1)])
def test_decide_throttled_obeys_retry_after(header: str, expected_delay_ms: int) -> None:
    error = classify(_resp(429, "ApplicationThrottled", retry_after=header))

    d = _decide(error, attempts=1)

    assert d.state is State.RETRY_WAIT
    assert d.next_attempt_ms - NOW_MS == expected_delay_ms
    assert d.next_attempt_ms - NOW_MS >= float(header) * 1000  # never earlier than the service asked


def test_decide_retry_after_wins_over_backoff_cap() -> None:
    error = classify(_resp(503, "ServiceUnavailable", retry_after="30"))

    d = _decide(error, attempts=1)

    assert d.next_attempt_ms - NOW_MS == 30_001 > CAP_MS


def test_decide_without_retry_after_uses_seeded_backoff() -> None:
    error = classify(_resp(429, "ApplicationThrottled"))

    d = _decide(error, attempts=3, seed=42)

    expected = compute_backoff(3, base_ms=BASE_MS, cap_ms=CAP_MS, rng=random.Random(42))
    assert d.state is State.RETRY_WAIT
    assert d.next_attempt_ms == NOW_MS + expected
    assert 1 <= expected <= BASE_MS * 4


def test_decide_authentication_expired_retries() -> None:
    d = _decide(AuthenticationExpired("expired", status=401, code="InvalidAuthenticationToken"), attempts=1)

    assert d.state is State.RETRY_WAIT


@pytest.mark.parametrize("error", [
    TransientError("down", status=503, code="HTTP503"),
    TransientError("refused", code="ConnectionRefused"),
    TransientError("Entra ID error", code="TokenServiceError"),
    Throttled("slow down", status=429, code="ApplicationThrottled"),
    AuthenticationExpired("expired", status=401, code="InvalidAuthenticationToken"),
])
@pytest.mark.parametrize("attempts", [4, 8, 50, 10_000])
def test_decide_transient_retries_past_any_attempt_count_within_max_age(error: DeliveryError, attempts: int) -> None:
    d = _decide(error, attempts=attempts, age_s=59.9)

    assert d.state is State.RETRY_WAIT
    assert NOW_MS < d.next_attempt_ms <= NOW_MS + CAP_MS


def test_decide_transient_backoff_is_capped_at_any_attempt_count() -> None:
    settings = _settings(backoff_cap_ms=600_000, max_age_s=86_400.0)
    delays = [_decide(TransientError("down", status=503), attempts=n, age_s=3_600.0, settings=settings,
                      seed=n).next_attempt_ms - NOW_MS for n in range(1, 200)]

    assert all(1 <= delay <= 600_000 for delay in delays)
    assert max(delays) > 300_000  # the cap, not the attempt count, bounds the wait


def test_decide_transient_fails_past_max_age_keeping_its_own_code() -> None:
    d = _decide(TransientError("down", status=503, code="HTTP503"), attempts=2, age_s=60.0)

    assert (d.state, d.label, d.code) == (State.FAILED, "retry", None)


def test_settings_default_to_time_based_retries() -> None:
    s = Settings()

    assert (s.max_age_s, s.backoff_cap_ms) == (86_400.0, 600_000)


def test_decide_transient_is_capped_by_max_age() -> None:
    error = Throttled("slow down", status=429, retry_after_s=1.0)

    young = _decide(error, age_s=59.9)
    old = _decide(error, age_s=60.0)

    assert young.state is State.RETRY_WAIT
    assert old.state is State.FAILED


def test_decide_ambiguous_retry_once_retries_first_time_flagged() -> None:
    d = _decide(AmbiguousOutcome("timeout", code="Timeout"), ambiguous_count=0, seed=3)

    assert d.state is State.RETRY_WAIT
    assert d.possible_duplicate is True
    assert d.ambiguous_count == 1
    assert d.next_attempt_ms == NOW_MS + compute_backoff(1, base_ms=BASE_MS, cap_ms=CAP_MS, rng=random.Random(3))


def test_decide_ambiguous_retry_once_stops_second_time() -> None:
    d = _decide(AmbiguousOutcome("504", status=504), ambiguous_count=1)

    assert (d.state, d.possible_duplicate, d.ambiguous_count) == (State.AMBIGUOUS, True, 2)


def test_decide_ambiguous_give_up_stops_at_once() -> None:
    d = _decide(AmbiguousOutcome("reset", code="ConnectionReset"), settings=_settings(ambiguous_policy="give_up"))

    assert (d.state, d.possible_duplicate, d.ambiguous_count, d.next_attempt_ms) == (
        State.AMBIGUOUS, True, 1, NOW_MS)


def test_decide_ambiguous_retry_once_respects_max_age() -> None:
    d = _decide(AmbiguousOutcome("504", status=504), ambiguous_count=0, age_s=60.0)

    assert d.state is State.AMBIGUOUS


def test_decide_ambiguous_retry_once_respects_max_attempts() -> None:
    d = _decide(AmbiguousOutcome("504", status=504), attempts=4, ambiguous_count=0)

    assert d.state is State.AMBIGUOUS


def test_decide_survives_non_finite_retry_after() -> None:
    error = classify(_resp(429, "ApplicationThrottled", retry_after="inf"))

    d = _decide(error, attempts=1)

    assert d.state in (State.RETRY_WAIT, State.FAILED)


def test_decide_requeued_waits_the_delay_without_recording_an_attempt() -> None:
    d = decide(Requeued(250), attempts=2, ambiguous_count=1, age_s=1.0, now_ms=NOW_MS, settings=_settings())

    assert (d.state, d.next_attempt_ms, d.label, d.ambiguous_count, d.possible_duplicate) == (
        State.RETRY_WAIT, NOW_MS + 250, None, 1, False)


def test_decide_requeued_past_the_maximum_age_fails_with_its_own_code() -> None:
    d = decide(Requeued(250), attempts=1, ambiguous_count=0, age_s=60.0, now_ms=NOW_MS, settings=_settings())

    assert (d.state, d.label, d.code) == (State.FAILED, "failed", "MaxAgeExceeded")


@pytest.mark.parametrize(("evidence", "ambiguous_count", "expected"), [
    (Evidence.NEVER_STARTED, 0, (State.QUEUED, None, None, False, 0)),
    (Evidence.ACCEPTED, 0, (State.SENT, "sent", None, False, 0)),
    (Evidence.MAYBE_SENT, 0, (State.RETRY_WAIT, "ambiguous", "WorkerLost", True, 1)),
    (Evidence.MAYBE_SENT, 1, (State.AMBIGUOUS, "ambiguous", "WorkerLost", True, 2)),
])
def test_decide_worker_lost_follows_the_send_mark(evidence: Evidence, ambiguous_count: int,
                                                  expected: tuple[object, ...]) -> None:
    d = decide(WorkerLost(evidence), attempts=1, ambiguous_count=ambiguous_count, age_s=1.0, now_ms=NOW_MS,
               settings=_settings())

    assert (d.state, d.label, d.code, d.possible_duplicate, d.ambiguous_count) == expected
    assert d.next_attempt_ms == NOW_MS  # due at once, as the sweeper always did


@pytest.mark.parametrize(("event", "label"), [
    (Attempted(None), "sent"),
    (Attempted(TransientError("Entra ID error", code="TokenServiceError"), Stage.TOKEN), "token_error"),
    (Attempted(TokenError("bad secret", code="AADSTS7000215"), Stage.TOKEN), "token_error"),
    (Attempted(Throttled("slow down", status=429)), "throttled"),
    (Attempted(AuthenticationExpired("expired", status=401)), "retry"),
    (Attempted(TransientError("refused", code="ConnectionRefused")), "retry"),
    (Attempted(AmbiguousOutcome("reset", code="ConnectionReset")), "ambiguous"),
    (Attempted(PermanentError("denied", status=403)), "failed"),
    (Attempted(DeliveryError("unusable provider", code="ProviderError")), "failed"),
])
def test_attempt_label_by_error_and_stage(event: Attempted, label: str) -> None:
    assert attempt_label(event) == label


# --- compute_backoff / retry_delay_ms ------------------------------------------------------------------


def test_compute_backoff_doubles_within_jitter_band() -> None:
    rng = random.Random(1)

    delays = [compute_backoff(a, base_ms=BASE_MS, cap_ms=100_000, rng=rng) for a in range(1, 6)]

    for attempt, delay in enumerate(delays, start=1):
        ceiling = BASE_MS * 2 ** (attempt - 1)
        assert 1 <= delay <= ceiling


def test_compute_backoff_is_capped() -> None:
    rng = random.Random(2)

    delays = [compute_backoff(a, base_ms=BASE_MS, cap_ms=CAP_MS, rng=rng) for a in (5, 6, 10, 100, 10_000)]

    assert all(1 <= d <= CAP_MS for d in delays)


def test_compute_backoff_attempt_zero_counts_as_first() -> None:
    assert 1 <= compute_backoff(0, base_ms=BASE_MS, cap_ms=CAP_MS, rng=random.Random(0)) <= BASE_MS


def test_compute_backoff_is_full_jitter_reaching_below_half_the_ceiling() -> None:
    rng = random.Random(4)

    delays = [compute_backoff(10, base_ms=BASE_MS, cap_ms=CAP_MS, rng=rng) for _ in range(200)]

    assert min(delays) < CAP_MS // 4 and max(delays) > CAP_MS * 3 // 4


def test_compute_backoff_is_deterministic_with_seeded_rng() -> None:
    a = [compute_backoff(4, base_ms=BASE_MS, cap_ms=CAP_MS, rng=random.Random(9)) for _ in range(3)]

    assert len(set(a)) == 1


def test_compute_backoff_jitters_without_seed() -> None:
    delays = {compute_backoff(5, base_ms=1_000, cap_ms=100_000) for _ in range(50)}

    assert len(delays) > 1


def test_retry_delay_ms_absent_retry_after_is_backoff_of_attempts() -> None:
    error = TransientError("refused", code="ConnectionRefused")

    delay = retry_delay_ms(error, 2, _settings(), random.Random(5))

    assert delay == compute_backoff(2, base_ms=BASE_MS, cap_ms=CAP_MS, rng=random.Random(5))


@pytest.mark.parametrize(("header", "expected"), [
    ("2", 2.0), ("2.128", 2.128), (" 3 ", 3.0), ("0", 0.0), (None, None), ("soon", None), ("-1", None),
    ("nan", None), ("Wed, 21 Oct 2015 07:28:00 GMT", None),
])
def test_parse_retry_after_integers_and_fractions(header: str | None, expected: float | None) -> None:
    assert parse_retry_after(header) == (pytest.approx(expected) if expected is not None else None)
