"""The worker records a Graph 403 ErrorAccessDenied as precisely as Send test diagnoses it (Access Policy,
RBAC scope, RBAC change propagating), holds the tenant as before, and the activity API and page show the fix
naming the right PowerShell check. Real workers, Redis, database and the TLS emulator's Exchange model."""

from __future__ import annotations

from collections.abc import Callable
from datetime import UTC, datetime, timedelta
from typing import Any

from sqlalchemy import update

from emulator.demo import DEMO_CEO, DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.codes import Code
from shared.models import ProviderConfig
from shared.providers import save_graph_provider
from shared.settings import Settings
from tests.api_harness import ApiServer
from tests.emulator.test_exchange_rbac import _scope_to_sender, _without_entra_mail_send
from tests.stack import Stack, wait_until

_P = ProviderConfig.__table__  # type: ignore[attr-defined]


def _configure(stack: Stack, tenant: str, sender: str, *, saved_hours_ago: float = 0) -> None:
    version = save_graph_provider(stack.engine, stack.box, tenant, sender_address=sender, sender_name="Governance",
                                  azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID,
                                  client_secret=DEMO_CLIENT_SECRET)
    if saved_hours_ago:  # a configuration saved long before: Exchange has applied any change since
        with stack.engine.begin() as conn:
            conn.execute(update(_P).where(_P.c.tenant_id == tenant, _P.c.version == version)
                         .values(created_at=datetime.now(UTC) - timedelta(hours=saved_hours_ago)))


def _send_and_hold(stack: Stack, tenant: str) -> tuple[str, dict[str, Any]]:
    nid = stack.producer.enqueue(tenant, {"to": ["ana@example.org"], "subject": "Review", "body": "Please review."})
    stack.start_workers(1)
    wait_until(lambda: stack.states([nid])[nid] == "held", what="the notification held")
    attempts = stack.attempts(nid)
    assert len(attempts) == 1 and attempts[0]["http_status"] == 403
    return nid, attempts[0]


def _activity(api: ApiServer, tenant: str, nid: str) -> dict[str, Any]:
    item: dict[str, Any] = api.client(tenant, "viewer").get(f"/v1/notifications/{nid}").json()
    return item


def test_outside_an_rbac_scope_is_recorded_as_rbac_scope_denied_with_its_cmdlet(
        make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any) -> None:
    # Given RBAC for Applications scoping the app to its sender, no Mail.Send in Entra ID, and a
    # configuration sending from a mailbox outside the scope, saved hours ago
    _without_entra_mail_send(emulator)
    _scope_to_sender(emulator)
    stack = make_stack()
    _configure(stack, "acme", DEMO_CEO, saved_hours_ago=3)

    # When a notification is sent
    nid, attempt = _send_and_hold(stack, "acme")

    # Then it is held, recorded as outside the RBAC scope with Graph's own code kept in the message
    assert attempt["error_code"] == Code.RBAC_SCOPE_DENIED
    assert attempt["error_message"].startswith("ErrorAccessDenied: ")
    assert emulator.outbox() == []
    item = _activity(make_api(stack.settings), "acme", nid)
    assert item["state"] == "held" and item["last_error_code"] == "RbacScopeDenied"
    assert "Test-ServicePrincipalAuthorization" in item["diagnosis"]["fix"]
    assert "Test-ApplicationAccessPolicy" not in item["diagnosis"]["fix"]
    assert "outside that assignment's scope" in item["diagnosis"]["cause"]


def test_a_configuration_saved_within_exchanges_cache_time_is_recorded_as_propagating(
        make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any) -> None:
    # Given the same refusal, for a configuration saved just now (Exchange caches grants up to 2 hours)
    _without_entra_mail_send(emulator)
    _scope_to_sender(emulator)
    stack = make_stack()
    _configure(stack, "acme", DEMO_CEO)

    nid, attempt = _send_and_hold(stack, "acme")

    assert attempt["error_code"] == Code.RBAC_PROPAGATING
    api = make_api(stack.settings)
    item = _activity(api, "acme", nid)
    assert "Exchange still caches" in item["diagnosis"]["cause"]
    assert "Test-ServicePrincipalAuthorization" in item["diagnosis"]["fix"]
    # the activity page shows the same diagnosis beside the held row
    page = api.client("acme", "viewer").get("/ui/activity").text
    assert "RbacPropagating" in page and "Test-ServicePrincipalAuthorization" in page


def test_an_access_policy_refusal_is_recorded_as_access_policy_denied_with_its_cmdlet(
        make_stack: Callable[..., Stack], make_api: Callable[[Settings], ApiServer], emulator: Any) -> None:
    # Given the demo tenant: Mail.Send consented, an Access Policy restricting the app to the sender's group
    stack = make_stack()
    _configure(stack, "blocked", DEMO_CEO)

    nid, attempt = _send_and_hold(stack, "blocked")

    assert attempt["error_code"] == Code.ACCESS_POLICY_DENIED and "[RAOP]" in attempt["error_message"]
    item = _activity(make_api(stack.settings), "blocked", nid)
    assert "Test-ApplicationAccessPolicy" in item["diagnosis"]["fix"]
    assert "Test-ServicePrincipalAuthorization" not in item["diagnosis"]["fix"]


def test_inside_the_rbac_scope_sends_and_the_tenant_stays_unheld(make_stack: Callable[..., Stack],
                                                                 emulator: Any) -> None:
    # The precise codes change nothing for a sender the scope covers (no Mail.Send in the token)
    _without_entra_mail_send(emulator)
    _scope_to_sender(emulator)
    stack = make_stack()
    _configure(stack, "acme", DEMO_SENDER)
    nid = stack.producer.enqueue("acme", {"to": ["ana@example.org"], "subject": "Review", "body": "Please review."})
    stack.start_workers(1)
    assert stack.wait_terminal([nid]) == {nid: "sent"}
    assert [m["app_id"] for m in emulator.outbox(mailbox=DEMO_SENDER)] == [DEMO_CLIENT_ID]
