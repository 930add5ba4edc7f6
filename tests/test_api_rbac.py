"""Send test diagnoses the permission problems of RBAC for Applications, against the emulator's Exchange model."""

from __future__ import annotations

from typing import Any

from emulator.demo import DEMO_CEO, DEMO_CLIENT_ID, DEMO_SENDER, DEMO_TENANT_ID
from tests.api_harness import ApiServer
from tests.emulator.test_exchange_rbac import _scope_to_sender, _without_entra_mail_send
from tests.test_api_provider import form


def _test_send(api: ApiServer) -> dict[str, Any]:
    result: dict[str, Any] = api.client("acme").post("/v1/email-provider/test", json={"to": "ana@example.org"}).json()
    return result


def test_outside_the_rbac_scope_names_test_serviceprincipalauthorization(api: ApiServer, emulator: Any) -> None:
    _without_entra_mail_send(emulator)
    _scope_to_sender(emulator)
    assert api.client("acme").put("/v1/email-provider", json=form(sender_address=DEMO_CEO)).status_code == 200
    result = _test_send(api)
    assert result["result"] == "failed" and result["code"] == "ErrorAccessDenied"
    # just saved: the grant may still be propagating; the fix names the cache-bypassing cmdlet
    assert "propagating" in result["diagnosis"]["cause"] or "Exchange still caches" in result["diagnosis"]["cause"]
    assert "Test-ServicePrincipalAuthorization" in result["diagnosis"]["fix"]
    assert "Test-ApplicationAccessPolicy" not in result["diagnosis"]["fix"]


def test_inside_the_rbac_scope_sends_without_mail_send_in_the_token(api: ApiServer, emulator: Any) -> None:
    _without_entra_mail_send(emulator)
    _scope_to_sender(emulator)
    api.client("acme").put("/v1/email-provider", json=form())
    result = _test_send(api)
    assert result["result"] == "sent" and "notice" not in result
    assert emulator.outbox(mailbox=DEMO_SENDER)[0]["app_id"] == DEMO_CLIENT_ID


def test_tenant_wide_mail_send_is_flagged_as_making_a_scope_moot(api: ApiServer, emulator: Any) -> None:
    _without_entra_mail_send(emulator, roles=["Mail.Send"])
    _scope_to_sender(emulator)
    api.client("acme").put("/v1/email-provider", json=form(sender_address=DEMO_CEO))
    result = _test_send(api)
    assert result["result"] == "sent"  # outside the scope, yet sent: the scope restricts nothing
    assert "restricts nothing" in result["notice"]["cause"]


def test_an_access_policy_refusal_names_test_applicationaccesspolicy(api: ApiServer, emulator: Any) -> None:
    _without_entra_mail_send(emulator)
    _scope_to_sender(emulator)
    emulator.exchange(DEMO_TENANT_ID, "New-ApplicationAccessPolicy", AppId=DEMO_CLIENT_ID,
                      PolicyScopeGroupId=DEMO_SENDER, AccessRight="DenyAccess")
    api.client("acme").put("/v1/email-provider", json=form())
    result = _test_send(api)
    assert result["code"] == "ErrorAccessDenied" and "Test-ApplicationAccessPolicy" in result["diagnosis"]["fix"]
