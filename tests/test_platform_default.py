"""The platform default provider end to end: workers send through the emulator's SMTP relay."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID, PLATFORM_NO_REPLY
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.stack import Stack


def _msg(i: int = 0, **extra: Any) -> dict[str, Any]:
    return {"to": [f"user{i}@example.org"], "subject": f"Welcome {i}", "body": "Hello.", **extra}


def test_tenant_without_provider_sends_through_the_relay_with_headers_and_attempt_rows(
    make_stack: Callable[..., Stack], emulator: Any
) -> None:
    stack = make_stack()
    ids = [stack.producer.enqueue("fabrikam", _msg(i, headers={"X-Campaign": "welcome"})) for i in range(6)]
    stack.start_workers(1, concurrency=4)

    assert set(stack.wait_terminal(ids).values()) == {"sent"}

    messages = emulator.smtp_messages()
    assert sorted(m["notification_id"] for m in messages) == sorted(ids)
    assert emulator.outbox() == []  # nothing went through Graph
    first = next(m for m in messages if m["notification_id"] == ids[0])
    assert first["mail_from"] == PLATFORM_NO_REPLY and first["tls"]
    assert first["headers"]["X-Campaign"] == "welcome" and first["message_id"]
    attempt = stack.attempts(ids[0])[0]
    assert attempt["outcome"] == "sent" and attempt["smtp_status"] == 250 and attempt["http_status"] is None
    assert attempt["client_request_id"] == first["message_id"]
    assert attempt["request_id"] == f"2.0.0 Ok: queued as {first['queue_id']}"
    row = stack.notification(ids[0])
    assert row["sender"] == PLATFORM_NO_REPLY and row["last_status"] == 250
    assert emulator.smtp_counters()["connections"] <= stack.settings.smtp_pool_size  # connections were reused


def test_relay_4xx_is_retried_with_backoff_and_recorded(make_stack: Callable[..., Stack], emulator: Any) -> None:
    emulator.add_smtp_fault(stage="rcpt", reply="451 4.7.1 Greylisted, try again later", count=2)
    stack = make_stack()
    nid = stack.producer.enqueue("fabrikam", _msg())
    stack.start_workers(1, concurrency=2)

    assert stack.wait_terminal([nid]) == {nid: "sent"}

    attempts = stack.attempts(nid)
    assert [(a["outcome"], a["smtp_status"], a["error_code"]) for a in attempts] == [
        ("retry", 451, "SMTP451"), ("retry", 451, "SMTP451"), ("sent", 250, None)]
    assert "Greylisted" in attempts[0]["error_message"]
    assert attempts[1]["started_at"] > attempts[0]["started_at"]
    assert len(emulator.smtp_messages()) == 1


def test_relay_5xx_fails_with_the_smtp_code_and_message(make_stack: Callable[..., Stack], emulator: Any) -> None:
    emulator.add_smtp_fault(stage="data", reply="554 5.7.1 Message rejected by policy")
    stack = make_stack()
    nid = stack.producer.enqueue("fabrikam", _msg())
    stack.start_workers(1, concurrency=2)

    assert stack.wait_terminal([nid]) == {nid: "failed"}

    [attempt] = stack.attempts(nid)
    assert (attempt["outcome"], attempt["smtp_status"], attempt["error_code"]) == ("failed", 554, "SMTP554")
    assert attempt["error_message"] == "554 5.7.1 Message rejected by policy"
    row = stack.notification(nid)
    assert row["last_error_code"] == "SMTP554" and row["last_status"] == 554


def test_connection_lost_after_data_is_ambiguous_and_retried_once_flagged(
    make_stack: Callable[..., Stack], emulator: Any
) -> None:
    emulator.add_smtp_fault(stage="data", kind="drop_after_data", count=1)
    stack = make_stack()
    nid = stack.producer.enqueue("fabrikam", _msg())
    stack.start_workers(1, concurrency=2)

    assert stack.wait_terminal([nid]) == {nid: "sent"}

    assert [a["outcome"] for a in stack.attempts(nid)] == ["ambiguous", "sent"]
    assert stack.notification(nid)["possible_duplicate"] is True
    received = emulator.smtp_messages(notification_id=nid)
    assert [m["dropped"] for m in received] == [True, False]  # the relay may have delivered both


def test_delete_reverts_to_the_platform_default_which_sends_by_smtp(
    make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any
) -> None:
    stack = make_stack(TENANTMAIL_PROVIDER_CACHE_TTL_MS="0")  # the next batch reads the version in force
    api = make_api(stack.settings)
    admin = api.client("acme")
    saved = admin.put("/v1/email-provider", json={
        "sender_address": DEMO_SENDER, "azure_tenant": DEMO_TENANT_ID, "client_id": DEMO_CLIENT_ID,
        "client_secret": DEMO_CLIENT_SECRET})
    assert saved.status_code == 200, saved.text
    stack.start_workers(1, concurrency=2)
    first = admin.post("/v1/notifications", json=_msg(1)).json()["id"]
    assert stack.wait_terminal([first]) == {first: "sent"}

    reverted = admin.delete("/v1/email-provider").json()
    second = admin.post("/v1/notifications", json=_msg(2)).json()["id"]

    assert reverted["provider"] == "platform" and reverted["service"] == "smtp" and reverted["version"] == 2
    assert stack.wait_terminal([second]) == {second: "sent"}
    assert [m["x_headers"]["X-Tenantmail-Notification-Id"] for m in emulator.outbox()] == [first]
    assert [m["notification_id"] for m in emulator.smtp_messages()] == [second]
    assert stack.notification(second)["provider_version"] == 2


def test_send_test_on_the_platform_default_goes_through_the_relay(api: ApiServer, emulator: Any) -> None:
    admin = api.client("fabrikam")

    sent = admin.post("/v1/email-provider/test", json={"to": "it@fabrikam.example"}).json()
    emulator.add_smtp_fault(stage="rcpt", reply="550 5.1.1 No such user here")
    refused = admin.post("/v1/email-provider/test", json={"to": "nobody@fabrikam.example"}).json()

    assert sent["result"] == "sent" and sent["provider"] == "platform" and sent["smtp_status"] == 250
    [message] = emulator.smtp_messages()
    assert message["message_id"] == sent["message_id"] and message["rcpt_tos"] == ["it@fabrikam.example"]
    assert refused["result"] == "failed" and refused["code"] == "SMTP550" and refused["smtp_status"] == 550
    assert "No such user" in refused["message"] and "not retried" in refused["diagnosis"]["fix"]


def test_platform_default_not_configured_is_reported(make_api: Callable[[Settings], ApiServer],
                                                     api_settings: Settings) -> None:
    api = make_api(api_settings.model_copy(update={"smtp_host": None}))
    admin = api.client("fabrikam")

    view = admin.get("/v1/email-provider").json()
    result = admin.post("/v1/email-provider/test", json={"to": "it@fabrikam.example"}).json()

    assert view["provider"] == "platform" and view["status"] == "not_configured"
    assert result["result"] == "failed" and result["code"] == "NoProviderConfigured"
    assert "TENANTMAIL_SMTP_HOST" in result["diagnosis"]["fix"]


def test_relay_auth_password_is_used_but_never_logged_and_a_wrong_one_fails(
    make_stack: Callable[..., Stack], emulator: Any
) -> None:
    emulator.set_config(smtp_credentials={"platform": "relay-password-7731"})
    good = make_stack(TENANTMAIL_SMTP_USERNAME="platform", TENANTMAIL_SMTP_PASSWORD="relay-password-7731",
                      TENANTMAIL_LOG_LEVEL="DEBUG")
    nid = good.producer.enqueue("fabrikam", _msg(1))
    good.start_workers(1, concurrency=2)
    assert good.wait_terminal([nid]) == {nid: "sent"}
    assert emulator.smtp_messages()[0]["auth_user"] == "platform"
    good.stop()

    bad = make_stack(TENANTMAIL_SMTP_USERNAME="platform", TENANTMAIL_SMTP_PASSWORD="not-the-password")
    other = bad.producer.enqueue("fabrikam", _msg(2))
    bad.start_workers(1, concurrency=2)

    assert bad.wait_terminal([other]) == {other: "failed"}
    assert bad.notification(other)["last_error_code"] == "SMTP535"
    assert "relay-password-7731" not in good.logs() and "not-the-password" not in bad.logs()
