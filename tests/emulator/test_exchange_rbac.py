"""RBAC for Applications in the emulator: MSAL tokens and Graph sendMail against scoped role assignments."""

from __future__ import annotations

from emulator.directory import DEMO_CEO, DEMO_CLIENT_ID, DEMO_SENDER, DEMO_TENANT_ID, demo_directory, derived_id

from .conftest import GRAPH_SCOPE, send

ENTERPRISE_APP = derived_id("enterprise-application", DEMO_CLIENT_ID)
APP_REGISTRATION = derived_id("app-registration", DEMO_CLIENT_ID)
SCOPE = "tenantmail senders"


def _without_entra_mail_send(emulator, *, roles=()):
    directory = demo_directory()
    contoso = directory["tenants"][0]
    contoso["apps"][0]["roles"] = list(roles)
    contoso["access_policies"] = []
    for box in contoso["mailboxes"]:
        box["attributes"] = {"CustomAttribute1": "tenantmail" if box["address"] == DEMO_SENDER else ""}
    emulator.set_directory(directory)


def _scope_to_sender(emulator, object_id=ENTERPRISE_APP):
    emulator.exchange(DEMO_TENANT_ID, "New-ServicePrincipal", AppId=DEMO_CLIENT_ID, ObjectId=object_id,
                      DisplayName="tenantmail")
    emulator.exchange(DEMO_TENANT_ID, "New-ManagementScope", Name=SCOPE,
                      RecipientRestrictionFilter="CustomAttribute1 -eq 'tenantmail'")
    emulator.exchange(DEMO_TENANT_ID, "New-ManagementRoleAssignment", App=DEMO_CLIENT_ID,
                      Role="Application Mail.Send", CustomResourceScope=SCOPE)


def _token(make_app):
    return make_app().acquire_token_for_client(scopes=GRAPH_SCOPE)["access_token"]


def test_a_scoped_role_assignment_lets_the_app_send_only_inside_its_scope(emulator, http, make_app):
    _without_entra_mail_send(emulator)
    token = _token(make_app)
    assert send(http, emulator, DEMO_SENDER, token).status_code == 403  # no permission yet
    _scope_to_sender(emulator)
    assert send(http, emulator, DEMO_SENDER, token).status_code == 202  # no Mail.Send in the token's roles
    denied = send(http, emulator, DEMO_CEO, token)
    assert denied.status_code == 403 and denied.json()["error"]["code"] == "ErrorAccessDenied"
    assert "RAOP" not in denied.json()["error"]["message"]
    rows = emulator.exchange(DEMO_TENANT_ID, "Test-ServicePrincipalAuthorization", Identity=DEMO_CLIENT_ID,
                             Resource=DEMO_CEO)
    assert [(r["RoleName"], r["AllowedResourceScope"], r["InScope"]) for r in rows] == [
        ("Application Mail.Send", SCOPE, False)]


def test_a_service_principal_of_the_app_registration_grants_nothing(emulator, http, make_app):
    _without_entra_mail_send(emulator)
    _scope_to_sender(emulator, object_id=APP_REGISTRATION)
    assert send(http, emulator, DEMO_SENDER, _token(make_app)).status_code == 403
    assert emulator.exchange(DEMO_TENANT_ID, "Test-ServicePrincipalAuthorization", Identity=DEMO_CLIENT_ID) == []


def test_tenant_wide_mail_send_makes_the_scope_moot(emulator, http, make_app):
    _without_entra_mail_send(emulator, roles=["Mail.Send"])
    _scope_to_sender(emulator)
    assert send(http, emulator, DEMO_CEO, _token(make_app)).status_code == 202  # a union, not an intersection


def test_a_new_assignment_waits_for_propagation(emulator, http, make_app):
    _without_entra_mail_send(emulator)
    emulator.set_config(rbac_propagation_s=3600)
    _scope_to_sender(emulator)
    token = _token(make_app)
    assert send(http, emulator, DEMO_SENDER, token).status_code == 403
    rows = emulator.exchange(DEMO_TENANT_ID, "Test-ServicePrincipalAuthorization", Identity=DEMO_CLIENT_ID,
                             Resource=DEMO_SENDER)
    assert rows[0]["InScope"] is True  # the cmdlet bypasses the cache
    emulator.advance_clock(3601)
    assert send(http, emulator, DEMO_SENDER, _token(make_app)).status_code == 202


def test_no_permission_at_all_and_the_rbac_denial_answers_are_configurable(emulator, http, make_app):
    _without_entra_mail_send(emulator)
    emulator.set_config(no_permissions_in_token=True, rbac_denied_message="Scoped out.")
    denied = send(http, emulator, DEMO_SENDER, _token(make_app))
    assert denied.status_code == 401 and denied.json()["error"]["code"] == "NoPermissionsInAccessToken"
    _scope_to_sender(emulator)
    assert send(http, emulator, DEMO_CEO, _token(make_app)).json()["error"]["message"] == "Scoped out."


def test_access_policy_cmdlets_create_and_test_a_policy(emulator):
    _without_entra_mail_send(emulator, roles=["Mail.Send"])
    emulator.exchange(DEMO_TENANT_ID, "New-ApplicationAccessPolicy", AppId=DEMO_CLIENT_ID,
                      PolicyScopeGroupId=DEMO_SENDER, AccessRight="RestrictAccess")
    test = "Test-ApplicationAccessPolicy"
    assert emulator.exchange(DEMO_TENANT_ID, test, Identity=DEMO_SENDER, AppId=DEMO_CLIENT_ID)[
        "AccessCheckResult"] == "Granted"
    assert emulator.exchange(DEMO_TENANT_ID, test, Identity=DEMO_CEO, AppId=DEMO_CLIENT_ID)[
        "AccessCheckResult"] == "Denied"
