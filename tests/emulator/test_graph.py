"""Graph sendMail: success and every error of the catalogue, against the real emulator."""

from __future__ import annotations

import pytest

from emulator.directory import (
    DEMO_CEO,
    DEMO_CLIENT_ID,
    DEMO_SENDER,
    DEMO_TENANT_ID,
    DEMO_UNLICENSED,
    PLATFORM_CLIENT_ID,
    PLATFORM_NO_REPLY,
    PLATFORM_SENDER,
    PLATFORM_TENANT_ID,
    make_tenant,
)

from .conftest import GRAPH_SCOPE, send

NOTIFICATION_HEADER = [{"name": "X-Tenantmail-Notification-Id", "value": "n-1"}]


@pytest.fixture
def platform_token(emulator):
    return emulator.mint_token(tid=PLATFORM_TENANT_ID, appid=PLATFORM_CLIENT_ID, roles=["Mail.Send"])


def _error(response, status, code):
    assert response.status_code == status, response.text
    error = response.json()["error"]
    assert error["code"] == code
    assert set(error["innerError"]) >= {"date", "request-id", "client-request-id"}
    return error


def test_send_accepted_202_lands_in_outbox_with_ids_and_x_headers(emulator, http, demo_token):
    response = send(http, emulator, DEMO_SENDER, demo_token, internetMessageHeaders=NOTIFICATION_HEADER)
    assert response.status_code == 202
    assert response.content == b""
    assert response.headers["client-request-id"] == "11111111-1111-4111-8111-111111111111"
    [item] = emulator.outbox(mailbox=DEMO_SENDER)
    assert item["request_id"] == response.headers["request-id"]
    assert item["x_headers"] == {"X-Tenantmail-Notification-Id": "n-1"}
    assert (item["tenant_id"], item["app_id"], item["from"]) == (DEMO_TENANT_ID, DEMO_CLIENT_ID, DEMO_SENDER)
    assert item["message"]["subject"] == "Hello"


def test_send_by_mailbox_id_and_mixed_case_address(emulator, http, platform_token):
    assert send(http, emulator, PLATFORM_SENDER.upper(), platform_token).status_code == 202
    assert send(http, emulator, "2e9b7b1f-0000-4000-8000-000000000001", platform_token).status_code == 202
    assert {m["mailbox"] for m in emulator.outbox()} == {PLATFORM_SENDER}


def test_send_without_token_401_empty(emulator, http):
    response = send(http, emulator, DEMO_SENDER, None)
    assert _error(response, 401, "InvalidAuthenticationToken")["message"] == "Access token is empty."
    assert response.headers["WWW-Authenticate"].startswith('Bearer realm=""')


def test_send_expired_token_401_after_clock_advance(emulator, http, demo_token):
    emulator.advance_clock(3600)
    response = send(http, emulator, DEMO_SENDER, demo_token)
    assert _error(response, 401, "InvalidAuthenticationToken")["message"].startswith(
        "Access token has expired"
    )


def test_send_malformed_token_401(emulator, http):
    error = _error(send(http, emulator, DEMO_SENDER, "not-a-jwt"), 401, "InvalidAuthenticationToken")
    assert error["message"].startswith("CompactToken parsing failed")


def test_send_wrong_audience_token_401(emulator, http):
    token = emulator.mint_token(aud="https://management.azure.com", tid=DEMO_TENANT_ID, roles=["Mail.Send"])
    error = _error(send(http, emulator, DEMO_SENDER, token), 401, "InvalidAuthenticationToken")
    assert "Invalid audience" in error["message"]


def test_send_token_signed_by_other_key_401(emulator, http):
    token = emulator.mint_token(
        tid=DEMO_TENANT_ID, appid=DEMO_CLIENT_ID, roles=["Mail.Send"], signed_by="other"
    )
    _error(send(http, emulator, DEMO_SENDER, token), 401, "InvalidAuthenticationToken")


def test_send_without_mail_send_role_403_access_denied(emulator, http, make_app):
    tenant = make_tenant(3, admin_consent=False)
    emulator.add_tenant(tenant)
    app = make_app(tenant["id"], tenant["apps"][0]["client_id"], "secret-3")
    token = app.acquire_token_for_client(scopes=GRAPH_SCOPE)["access_token"]
    error = _error(send(http, emulator, "sender0@tenant3.example", token), 403, "ErrorAccessDenied")
    assert error["message"] == "Access is denied. Check credentials and try again."


def test_access_policy_blocks_mailbox_outside_group_raop_and_allows_inside(emulator, http, demo_token):
    blocked = send(http, emulator, DEMO_CEO, demo_token)
    assert "[RAOP]" in _error(blocked, 403, "ErrorAccessDenied")["message"]
    assert send(http, emulator, DEMO_SENDER, demo_token).status_code == 202
    assert [m["mailbox"] for m in emulator.outbox()] == [DEMO_SENDER]


def test_deny_access_policy_blocks_listed_mailbox(emulator, http, make_app):
    tenant = make_tenant(4, mailboxes=2)
    tenant["access_policies"] = [
        {
            "app_id": tenant["apps"][0]["client_id"],
            "scope": "sender1@tenant4.example",
            "access_right": "DenyAccess",
        }
    ]
    emulator.add_tenant(tenant)
    token = emulator.mint_token(tid=tenant["id"], appid=tenant["apps"][0]["client_id"], roles=["Mail.Send"])
    assert send(http, emulator, "sender0@tenant4.example", token).status_code == 202
    assert (
        "[RAOP]"
        in _error(send(http, emulator, "sender1@tenant4.example", token), 403, "ErrorAccessDenied")["message"]
    )


def test_send_unknown_user_404_error_invalid_user(emulator, http, platform_token):
    error = _error(send(http, emulator, "ghost@platform.example", platform_token), 404, "ErrorInvalidUser")
    assert error["message"] == "The requested user 'ghost@platform.example' is invalid."


def test_send_unlicensed_mailbox_404_not_enabled_for_rest(emulator, http):
    token = emulator.mint_token(
        tid=DEMO_TENANT_ID, appid="11111111-0000-4000-8000-000000000000", roles=["Mail.Send"]
    )
    _error(send(http, emulator, DEMO_UNLICENSED, token), 404, "MailboxNotEnabledForRESTAPI")


def test_send_on_premises_mailbox_404_not_enabled_for_rest(emulator, http, platform_token):
    _error(
        send(http, emulator, "onprem@platform.example", platform_token), 404, "MailboxNotEnabledForRESTAPI"
    )


def test_send_no_recipients_400_invalid_recipients(emulator, http, platform_token):
    error = _error(
        send(http, emulator, PLATFORM_SENDER, platform_token, toRecipients=[]), 400, "ErrorInvalidRecipients"
    )
    assert "contains no recipients" in error["message"]


def test_send_unresolvable_recipient_400_invalid_recipients(emulator, http, platform_token):
    bad = [{"emailAddress": {"address": "not an address"}}]
    error = _error(
        send(http, emulator, PLATFORM_SENDER, platform_token, toRecipients=bad), 400, "ErrorInvalidRecipients"
    )
    assert "is not resolved" in error["message"]


def test_send_header_without_x_prefix_400_invalid_internet_message_header(emulator, http, platform_token):
    headers = [{"name": "Tenantmail-Id", "value": "1"}]
    response = send(http, emulator, PLATFORM_SENDER, platform_token, internetMessageHeaders=headers)
    assert "'Tenantmail-Id'" in _error(response, 400, "InvalidInternetMessageHeader")["message"]


def test_send_message_over_mailbox_limit_400_message_size_exceeded(emulator, http):
    tenant = make_tenant(5)
    tenant["mailboxes"][0]["max_send_size_kb"] = 10
    emulator.add_tenant(tenant)
    token = emulator.mint_token(tid=tenant["id"], appid=tenant["apps"][0]["client_id"], roles=["Mail.Send"])
    big = {"contentType": "Text", "content": "x" * 20_000}
    _error(send(http, emulator, "sender0@tenant5.example", token, body=big), 400, "ErrorMessageSizeExceeded")


def test_send_request_over_4mb_413(emulator, http, platform_token):
    big = {"contentType": "Text", "content": "x" * (4 * 1024 * 1024 + 10)}
    response = send(http, emulator, PLATFORM_SENDER, platform_token, body=big)
    assert response.status_code == 413
    assert emulator.outbox() == []


def test_send_from_other_mailbox_without_grant_403_send_as_denied(emulator, http, platform_token):
    sender = {"emailAddress": {"address": PLATFORM_SENDER}}
    _error(
        send(http, emulator, PLATFORM_NO_REPLY, platform_token, **{"from": sender}), 403, "ErrorSendAsDenied"
    )


def test_send_as_grant_lets_mailbox_send_as_no_reply(emulator, http, platform_token):
    sender = {"emailAddress": {"address": PLATFORM_NO_REPLY}}
    assert send(http, emulator, PLATFORM_SENDER, platform_token, **{"from": sender}).status_code == 202
    assert emulator.outbox()[0]["from"] == PLATFORM_NO_REPLY


def test_send_invalid_json_400_bad_request(emulator, http, platform_token):
    response = http.post(
        f"{emulator.graph_base_url}/users/{PLATFORM_SENDER}/sendMail",
        data=b"{not json",
        headers={"Authorization": f"Bearer {platform_token}", "Content-Type": "application/json"},
    )
    _error(response, 400, "BadRequest")
