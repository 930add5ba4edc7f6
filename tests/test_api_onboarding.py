"""Onboarding: the generated setup guide, applied to the emulator's Exchange model, gives a working and
correctly scoped sender; sender-domain checks against a real DNS server on loopback (tests/dns_server.py)."""

from __future__ import annotations

import shlex
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import requests

from emulator.demo import DEMO_CEO, DEMO_CLIENT_ID, DEMO_SENDER, DEMO_TENANT_ID
from emulator.directory import derived_id
from shared.settings import Settings
from shared.setup_guide import ENTERPRISE_APP_OBJECT_ID
from tests.api_harness import ApiServer
from tests.dns_server import DROP_DOMAIN, SERVFAIL_DOMAIN, DnsServer
from tests.emulator.test_exchange_rbac import _without_entra_mail_send
from tests.test_api_provider import form
from tests.test_api_redis_down import PrivateRedis

# What the admin copies from Entra > Enterprise applications > the app > Object ID.
ENTERPRISE_APP = derived_id("enterprise-application", DEMO_CLIENT_ID)


@pytest.fixture
def stoppable_redis(tmp_path: Path) -> Iterator[PrivateRedis]:
    """A Redis of this test alone, which it may stop midway."""
    server = PrivateRedis(tmp_path / "redis")
    yield server
    server.stop()


def _steps(api: ApiServer, **query: Any) -> dict[str, dict[str, Any]]:
    response = api.client("acme", "viewer").get("/v1/email-provider/setup", params=query)
    assert response.status_code == 200, response.text
    return {s["id"]: s for s in response.json()["steps"]}


def run_powershell(emulator: Any, line: str) -> Any:
    """Apply one generated PowerShell line through the emulator's cmdlet endpoint (`-Name value` pairs)."""
    tokens = shlex.split(line.replace(ENTERPRISE_APP_OBJECT_ID, ENTERPRISE_APP))
    params: dict[str, Any] = {}
    rest = tokens[1:]
    while rest:
        name, rest = rest[0], rest[1:]
        assert name.startswith("-"), f"not a parameter: {name!r} in {line!r}"
        if rest and not rest[0].startswith("-"):
            params[name[1:]], rest = rest[0], rest[1:]
        else:
            params[name[1:]] = True
    return emulator.exchange(DEMO_TENANT_ID, tokens[0], **params)


def _apply(emulator: Any, commands: list[str]) -> list[Any]:
    assert commands[0] == "Connect-ExchangeOnline"  # the session, not a change to the model
    return [run_powershell(emulator, line) for line in commands[1:]]


def _send_test(api: ApiServer) -> dict[str, Any]:
    result: dict[str, Any] = api.client("acme").post("/v1/email-provider/test", json={"to": "ana@example.org"}).json()
    return result


def test_the_guides_rbac_commands_give_a_sender_scoped_to_itself(api: ApiServer, emulator: Any) -> None:
    # Given the demo tenant as the guide's step 2 leaves it: no tenant-wide Mail.Send, no Access Policy
    _without_entra_mail_send(emulator)
    assert api.client("acme").put("/v1/email-provider", json=form()).status_code == 200
    steps = _steps(api)
    assert all("<APP_CLIENT_ID>" not in c and "<SENDER_MAILBOX>" not in c for c in steps["rbac"]["commands"])

    # When the admin runs step 4's commands
    outputs = _apply(emulator, steps["rbac"]["commands"])

    # Then the cmdlet's check says in scope, Send test from the sender is sent, and from the CEO refused
    assert [(r["RoleName"], r["InScope"]) for r in outputs[-1]] == [("Application Mail.Send", True)]
    sent = _send_test(api)
    assert sent["result"] == "sent" and "notice" not in sent, sent
    assert emulator.outbox(mailbox=DEMO_SENDER)[0]["app_id"] == DEMO_CLIENT_ID
    api.client("acme").put("/v1/email-provider", json=form(sender_address=DEMO_CEO))
    refused = _send_test(api)
    assert refused["result"] == "failed" and refused["code"] == "ErrorAccessDenied"
    assert "Test-ServicePrincipalAuthorization" in refused["diagnosis"]["fix"]
    assert emulator.outbox(mailbox=DEMO_CEO) == []


def test_the_guide_fills_in_the_enterprise_app_read_from_graph_and_its_commands_work_as_shown(
        api: ApiServer, emulator: Any) -> None:
    # Given an app without Mail.Send that may read its own service principal (Application.Read.All)
    _without_entra_mail_send(emulator, roles=["Application.Read.All"])
    assert api.client("acme").put("/v1/email-provider", json=form()).status_code == 200

    guide = api.client("acme", "viewer").get("/v1/email-provider/setup").json()
    steps = {s["id"]: s for s in guide["steps"]}

    # Then step 4 carries the enterprise application's object id, not a placeholder nor the registration's
    assert guide["enterprise_app_object_id"] == ENTERPRISE_APP
    assert steps["rbac"]["commands"][1] == (f'New-ServicePrincipal -AppId "{DEMO_CLIENT_ID}" -ObjectId '
                                            f'"{ENTERPRISE_APP}" -DisplayName "tenantmail sender"')
    assert not any("<" in c for c in steps["rbac"]["commands"]) and steps["register"]["commands"] == []
    assert derived_id("app-registration", DEMO_CLIENT_ID) not in repr(guide)
    # and the commands, pasted exactly as shown, give a sender scoped to itself
    assert _apply(emulator, steps["rbac"]["commands"])[-1][0]["InScope"] is True
    assert _send_test(api)["result"] == "sent"
    assert any(r.get("route") == "servicePrincipals" for r in emulator.requests_log())


def test_without_a_readable_service_principal_the_guide_says_where_to_find_it(api: ApiServer,
                                                                               emulator: Any) -> None:
    # The demo app holds Mail.Send only: Graph refuses its service principal (403 Authorization_RequestDenied)
    assert api.client("acme").put("/v1/email-provider", json=form()).status_code == 200
    guide = api.client("acme", "viewer").get("/v1/email-provider/setup").json()
    steps = {s["id"]: s for s in guide["steps"]}

    assert guide["enterprise_app_object_id"] is None
    assert f'-ObjectId "{ENTERPRISE_APP_OBJECT_ID}"' in steps["rbac"]["commands"][1]
    assert steps["register"]["commands"] == ['Connect-MgGraph -Scopes "Application.Read.All"',
                                             f"(Get-MgServicePrincipal -Filter \"appId eq '{DEMO_CLIENT_ID}'\").Id"]
    text = " ".join(steps["register"]["text"])
    assert "Enterprise applications" in text and "All applications" in text and "not the app registration" in text
    refused = [r for r in emulator.requests_log() if r.get("route") == "servicePrincipals"]
    assert refused and refused[-1]["status"] == 403


def test_the_emulator_lets_an_app_read_its_own_service_principal_when_configured(emulator: Any) -> None:
    url = f"{emulator.graph_base_url}/servicePrincipals(appId='{DEMO_CLIENT_ID}')"
    token = emulator.mint_token(tid=DEMO_TENANT_ID, appid=DEMO_CLIENT_ID, roles=["Mail.Send"])
    with requests.Session() as http:
        http.trust_env, http.verify = False, str(emulator.ca_path)
        ask = lambda: http.get(url, params={"$select": "id"}, headers={"Authorization": f"Bearer {token}"},  # noqa: E731
                               timeout=30)
        assert ask().json()["error"]["code"] == "Authorization_RequestDenied"
        emulator.set_config(directory_self_read=True)  # as Microsoft documents for an app's own objects
        assert ask().json() == {"@odata.context": "https://graph.microsoft.com/v1.0/$metadata#servicePrincipals/"
                                "$entity", "id": ENTERPRISE_APP}


def test_the_guides_access_policy_commands_scope_the_sender(api: ApiServer, emulator: Any) -> None:
    # Given Mail.Send consented in Entra (the legacy path's step 2) and no policy yet
    _without_entra_mail_send(emulator, roles=["Mail.Send"])
    api.client("acme").put("/v1/email-provider", json=form())

    outputs = _apply(emulator, _steps(api)["access_policy"]["commands"])

    assert outputs[-1]["AccessCheckResult"] == "Granted"
    assert _send_test(api)["result"] == "sent"
    api.client("acme").put("/v1/email-provider", json=form(sender_address=DEMO_CEO))
    refused = _send_test(api)
    assert refused["code"] == "ErrorAccessDenied" and "Test-ApplicationAccessPolicy" in refused["diagnosis"]["fix"]


def test_the_guide_follows_the_query_and_the_national_cloud(api: ApiServer) -> None:
    guide = api.client("acme", "viewer").get("/v1/email-provider/setup", params={
        "client_id": DEMO_CLIENT_ID.upper(), "sender": ["a@contoso.example", "b@contoso.example"],
        "cloud": "usgov_high"}).json()
    text = repr(guide)
    assert guide["portal"] == "https://portal.azure.us" and guide["graph_host"] == "https://graph.microsoft.us"
    steps = {s["id"]: s for s in guide["steps"]}
    assert steps["rbac"]["commands"][0] == "Connect-ExchangeOnline -ExchangeEnvironmentName O365USGovGCCHigh"
    assert ("PrimarySmtpAddress -eq 'a@contoso.example' -or PrimarySmtpAddress -eq 'b@contoso.example'"
            in steps["rbac"]["commands"][2])
    assert "<MAIL_ENABLED_SECURITY_GROUP>" in steps["access_policy"]["commands"][1]
    assert "30 minutes to 2 hours" in text and "cancels the scope" in text and DEMO_CLIENT_ID in text


def test_the_guide_of_a_tenant_on_the_platform_default_has_placeholders(api: ApiServer) -> None:
    guide = api.client("acme", "viewer").get("/v1/email-provider/setup").json()
    assert guide["client_id"] == "<APP_CLIENT_ID>" and guide["senders"] == ["<SENDER_MAILBOX>"]
    assert guide["portal"] == "https://entra.microsoft.com"


@pytest.mark.parametrize(("query", "field"), [({"client_id": "not-a-guid"}, "client_id"),
                                               ({"sender": "no-at-sign"}, "sender[0]"),
                                               ({"sender": "a@b.example\r\nBcc: x@y.example"}, "sender[0]"),
                                               ({"cloud": "https://evil.example"}, "cloud"),
                                               ({"sender": [f"s{i}@x.example" for i in range(11)]}, "sender")])
def test_bad_guide_input_is_422_naming_the_field(api: ApiServer, query: dict[str, Any], field: str) -> None:
    response = api.client("acme", "viewer").get("/v1/email-provider/setup", params=query)
    assert response.status_code == 422 and response.json()["error"]["field"] == field


def _checks(document: dict[str, Any]) -> dict[str, tuple[str, str | None]]:
    return {r["check"]: (r["status"], r["fix"]) for r in document["domain_checks"]["results"]}


def test_domain_checks_of_a_good_and_a_broken_zone(api: ApiServer) -> None:
    admin = api.client("acme")
    good = admin.put("/v1/email-provider", json=form()).json()
    assert {k: s for k, (s, _) in _checks(good).items()} == {"spf": "pass", "dkim": "pass", "dmarc": "pass"}

    # A broken zone never blocks the save: the answer carries the failures and their fixes
    saved = admin.put("/v1/email-provider", json=form(sender_address="alerts@broken.example"))
    assert saved.status_code == 200
    checks = _checks(admin.get("/v1/email-provider").json())
    assert checks["spf"][0] == "fail" and "include:spf.protection.outlook.com" in (checks["spf"][1] or "")
    assert checks["dkim"][0] == "fail" and "selector1._domainkey.broken.example" in (checks["dkim"][1] or "")
    assert checks["dmarc"][0] == "warn" and "p=quarantine" in (checks["dmarc"][1] or "")


def test_the_platform_default_is_checked_for_the_relays_include(api: ApiServer) -> None:
    document = api.client("acme", "viewer").get("/v1/email-provider").json()
    assert document["domain_checks"]["domain"] == "platform.example"
    assert _checks(document) == {"spf": ("pass", None), "dmarc": ("pass", None)}


def test_servfail_timeout_and_nxdomain_are_clear_results(make_api: Any, api_settings: Any) -> None:
    api = make_api(api_settings.model_copy(update={"dns_timeout_s": 0.5}))
    admin = api.client("acme")
    found = {}
    for domain in (SERVFAIL_DOMAIN, DROP_DOMAIN, "missing.example"):
        assert admin.put("/v1/email-provider", json=form(sender_address=f"x@{domain}")).status_code == 200
        found[domain] = admin.get("/v1/email-provider").json()["domain_checks"]["results"][0]
    assert found[SERVFAIL_DOMAIN]["status"] == "fail" and "SERVFAIL" in found[SERVFAIL_DOMAIN]["message"]
    assert found[DROP_DOMAIN]["status"] == "warn" and "no DNS answer in time" in found[DROP_DOMAIN]["message"]
    assert found["missing.example"]["status"] == "fail" and "NXDOMAIN" in found["missing.example"]["message"]


def test_domain_checks_are_cached(api: ApiServer, dns_server: DnsServer) -> None:
    viewer = api.client("acme", "viewer")
    api.client("acme").put("/v1/email-provider", json=form(sender_address="alerts@nested.example"))
    first = viewer.get("/v1/email-provider").json()["domain_checks"]
    asked = dns_server.asked("nested.example")
    assert asked >= 4  # SPF (and its include), two DKIM selectors, DMARC

    again = viewer.get("/v1/email-provider").json()["domain_checks"]

    assert again == first and dns_server.asked("nested.example") == asked


def test_domain_checks_are_shared_between_api_processes_through_redis(
        make_api: Callable[[Settings], ApiServer], api_settings: Settings, dns_server: DnsServer) -> None:
    # Given two API servers on one Redis (each with its own in-process cache)
    first, second = make_api(api_settings), make_api(api_settings)
    first.client("acme").put("/v1/email-provider", json=form(sender_address="alerts@nested.example"))
    report = first.client("acme", "viewer").get("/v1/email-provider").json()["domain_checks"]
    asked = dns_server.asked("nested.example")

    # When the other one shows the configuration
    again = second.client("acme", "viewer").get("/v1/email-provider").json()["domain_checks"]

    # Then it shows the same report without asking DNS again
    assert again == report and dns_server.asked("nested.example") == asked


def test_domain_checks_fail_open_when_redis_is_down(make_api: Callable[[Settings], ApiServer],
                                                    api_settings: Settings, dns_server: DnsServer,
                                                    stoppable_redis: PrivateRedis) -> None:
    private_redis = stoppable_redis
    api = make_api(api_settings.model_copy(update={"redis_url": private_redis.url}))
    admin = api.client("acme")
    assert admin.put("/v1/email-provider", json=form(sender_address="alerts@nested.example")).status_code == 200
    private_redis.stop()

    document = admin.get("/v1/email-provider").json()  # looked up once, kept in the process
    asked = dns_server.asked("nested.example")
    assert {r["check"] for r in document["domain_checks"]["results"]} == {"spf", "dkim", "dmarc"}
    assert admin.get("/v1/email-provider").json()["domain_checks"] == document["domain_checks"]
    assert dns_server.asked("nested.example") == asked
    assert admin.get("/v1/email-provider/setup").status_code == 200  # the guide's Redis read fails open too
