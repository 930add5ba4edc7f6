"""Per (app, mailbox) limits: concurrency 4, 10,000 requests / 10 minutes, 10,000 recipients / day."""

from __future__ import annotations

from concurrent.futures import FIRST_COMPLETED, ThreadPoolExecutor, wait

from emulator.directory import PLATFORM_CLIENT_ID, PLATFORM_SENDER, PLATFORM_TENANT_ID

from .conftest import send


def _token(emulator):
    return emulator.mint_token(tid=PLATFORM_TENANT_ID, appid=PLATFORM_CLIENT_ID, roles=["Mail.Send"])


def test_five_concurrent_sends_to_one_mailbox_give_429_mailbox_concurrency(emulator, http):
    token = _token(emulator)
    # Admitted requests wait at the gate, so they are in flight together; no timing involved.
    emulator.add_fault(route="sendMail", kind="hold", mailbox=PLATFORM_SENDER)
    with ThreadPoolExecutor(max_workers=5) as pool:
        futures = [pool.submit(send, http, emulator, PLATFORM_SENDER, token) for _ in range(5)]
        done, _ = wait(futures, timeout=60, return_when=FIRST_COMPLETED)
        first = next(iter(done)).result()
        emulator.release_held()
        responses = [f.result(timeout=60) for f in futures]
    assert first.status_code == 429
    assert first.json()["error"]["code"] == "ApplicationThrottled"
    assert first.json()["error"]["message"] == "Application is over its MailboxConcurrency limit."
    assert first.headers["Retry-After"] == "1"
    assert sorted(r.status_code for r in responses) == [202, 202, 202, 202, 429]
    counters = emulator.counters()
    assert counters["max_concurrency"][f"{PLATFORM_CLIENT_ID}/{PLATFORM_SENDER}"] == 4
    assert counters["throttled_429"] == 1


def test_concurrency_429_without_retry_after_when_configured(emulator, http):
    emulator.set_config(mailbox_concurrency=0, concurrency_retry_after=None)
    response = send(http, emulator, PLATFORM_SENDER, _token(emulator))
    assert response.status_code == 429
    assert "Retry-After" not in response.headers


def test_request_window_429_then_clear_after_ten_minutes(emulator, http):
    emulator.set_config(requests_per_10min=3)
    token = _token(emulator)
    statuses = [send(http, emulator, PLATFORM_SENDER, token).status_code for _ in range(4)]
    assert statuses == [202, 202, 202, 429]
    emulator.advance_clock(601)
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202


def test_request_inside_retry_after_is_counted(emulator, http):
    emulator.add_fault(route="sendMail", kind="429", count=1, retry_after="30")
    token = _token(emulator)
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 429
    emulator.advance_clock(1)  # well past the in-flight grace, well inside the 30 s window
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202
    emulator.advance_clock(30)
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202
    counters = emulator.counters()
    assert counters["requests_inside_retry_after"] == 1
    assert counters["requests_in_flight_at_429"] == 0


def test_request_right_after_429_counts_as_in_flight_not_violation(emulator, http):
    emulator.set_config(retry_after_grace_ms=60_000)
    emulator.add_fault(route="sendMail", kind="429", count=1, retry_after="120")
    token = _token(emulator)
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 429
    assert send(http, emulator, PLATFORM_SENDER, token).status_code == 202
    counters = emulator.counters()
    assert counters["requests_inside_retry_after"] == 0
    assert counters["requests_in_flight_at_429"] == 1


def test_daily_recipient_limit_accepts_but_marks_would_bounce(emulator, http):
    emulator.set_config(recipients_per_day=3)
    token = _token(emulator)
    two = [{"emailAddress": {"address": f"r{i}@example.com"}} for i in range(2)]
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=two).status_code == 202
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=two).status_code == 202
    assert [m["would_bounce"] for m in emulator.outbox()] == [False, True]
    emulator.advance_clock(86_401)
    token = _token(emulator)  # the first one expired with the day
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=two).status_code == 202
    assert emulator.outbox()[-1]["would_bounce"] is False


def test_daily_limit_counts_a_recipient_once_and_names_the_ndr(emulator, http):
    emulator.set_config(recipients_per_day=2, recipient_window_s=60)
    token = _token(emulator)
    same = [{"emailAddress": {"address": "r@example.com"}}]
    shout = [{"emailAddress": {"address": "R@EXAMPLE.COM"}}]
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=same, ccRecipients=shout).status_code == 202
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=same).status_code == 202
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=same).status_code == 202
    assert [(m["recipients"], m["would_bounce"], m["ndr"]) for m in emulator.outbox()] == [
        (1, False, None), (1, False, None), (1, True, "RecipientRateLimitExceeded")]
    emulator.advance_clock(61)  # the configured window, not a day
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=same).status_code == 202
    assert emulator.outbox()[-1]["would_bounce"] is False


def test_tenant_external_limit_bounces_external_mail_only(emulator, http):
    emulator.set_config(external_recipients_per_day=1)
    token = _token(emulator)
    external = [{"emailAddress": {"address": f"x{i}@example.com"}} for i in range(2)]
    internal = [{"emailAddress": {"address": "colleague@platform.example"}}]
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=external[:1]).status_code == 202
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=internal).status_code == 202
    assert send(http, emulator, PLATFORM_SENDER, token, toRecipients=external[1:]).status_code == 202
    assert [m["ndr"] for m in emulator.outbox()] == [None, None, "550 5.7.233"]
    assert emulator.counters()["would_bounce"] == 1
