"""Entra ID token endpoint and discovery, driven through MSAL against the real emulator."""

from __future__ import annotations

import base64

import jwt
import msal
import pytest

from emulator.demo import DEMO_EXPIRED_SECRET, make_tenant
from emulator.directory import (
    DEMO_CLIENT_ID,
    DEMO_TENANT_ID,
    PLATFORM_CLIENT_ID,
    PLATFORM_CLIENT_SECRET,
    PLATFORM_TENANT_ID,
)

from .conftest import GRAPH_SCOPE, make_certificate

TOKEN_FORM = {"grant_type": "client_credentials", "scope": GRAPH_SCOPE[0]}


def test_msal_gets_token_then_serves_second_call_from_cache(emulator, make_app):
    app = make_app()
    first = app.acquire_token_for_client(scopes=GRAPH_SCOPE)
    second = app.acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert first["token_source"] == "identity_provider"
    assert second["token_source"] == "cache"
    assert "scope" not in first
    assert emulator.counters()["token_requests"] == {DEMO_TENANT_ID: 1}


def test_token_is_jwt_with_roles_tid_appid_exp(make_app):
    result = make_app(tenant="contoso.example").acquire_token_for_client(scopes=GRAPH_SCOPE)
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["roles"] == ["Mail.Send"]
    assert claims["tid"] == DEMO_TENANT_ID
    assert claims["appid"] == DEMO_CLIENT_ID
    assert claims["aud"] == "https://graph.microsoft.com"
    assert claims["exp"] - claims["iat"] == result["expires_in"] == 3599


@pytest.mark.parametrize(
    "scope",
    [
        "https://graph.microsoft.us/.default",
        "https://dod-graph.microsoft.us/.default",
        "https://microsoftgraph.chinacloudapi.cn/.default",
    ],
)
def test_token_national_cloud_scope_sets_audience(make_app, scope):
    result = make_app().acquire_token_for_client(scopes=[scope])
    claims = jwt.decode(result["access_token"], options={"verify_signature": False})
    assert claims["aud"] == scope.removesuffix("/.default")


def test_token_lifetime_is_configurable(emulator, make_app):
    emulator.set_config(token_lifetime_s=120)
    app = make_app()
    assert app.acquire_token_for_client(scopes=GRAPH_SCOPE)["expires_in"] == 120
    # Under 300 s left MSAL treats the token as expired: every call reaches the emulator.
    assert app.acquire_token_for_client(scopes=GRAPH_SCOPE)["token_source"] == "identity_provider"


def test_token_wrong_secret_returns_7000215(make_app):
    result = make_app(credential="not-the-secret").acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000215]
    assert result["error_description"].startswith("AADSTS7000215: Invalid client secret provided.")


def test_token_expired_secret_returns_7000222(make_app):
    result = make_app(credential=DEMO_EXPIRED_SECRET).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [7000222]


def test_token_secret_expires_when_clock_advances(emulator, make_app):
    tenant = make_tenant(1)
    tenant["apps"][0]["secrets"][0]["expires_at"] = emulator.now() + 3600
    emulator.add_tenant(tenant)
    app_id, tid = tenant["apps"][0]["client_id"], tenant["id"]
    assert "access_token" in make_app(tid, app_id, "secret-1").acquire_token_for_client(scopes=GRAPH_SCOPE)
    emulator.advance_clock(7200)
    result = make_app(tid, app_id, "secret-1").acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error_codes"] == [7000222]


def test_token_unknown_tenant_raises_at_construction_90002(make_app):
    with pytest.raises(ValueError, match="Unable to get authority configuration") as info:
        make_app(tenant="ghost.example")
    assert "AADSTS90002" in str(info.value.__context__)


def test_token_unknown_app_returns_700016(make_app):
    result = make_app(client_id="99999999-9999-4999-8999-999999999999").acquire_token_for_client(
        scopes=GRAPH_SCOPE
    )
    assert result["error"] == "unauthorized_client"
    assert result["error_codes"] == [700016]


def test_token_scope_without_default_returns_1002012(make_app):
    result = make_app().acquire_token_for_client(scopes=["Mail.Send"])
    assert result["error"] == "invalid_scope"
    assert result["error_codes"] == [1002012]


def test_token_without_credential_returns_7000218(emulator, http):
    form = {**TOKEN_FORM, "client_id": DEMO_CLIENT_ID}
    response = http.post(f"{emulator.base_url}/{DEMO_TENANT_ID}/oauth2/v2.0/token", data=form)
    assert response.status_code == 401
    assert response.json()["error_codes"] == [7000218]


def test_token_malformed_tenant_returns_900023(emulator, http):
    form = {**TOKEN_FORM, "client_id": DEMO_CLIENT_ID, "client_secret": "x"}
    response = http.post(f"{emulator.base_url}/not_a_tenant!/oauth2/v2.0/token", data=form)
    assert response.status_code == 400
    assert response.json()["error"] == "invalid_request"
    assert response.json()["error_codes"] == [900023]


def test_token_unknown_tenant_at_token_endpoint_returns_90002(emulator, http):
    form = {**TOKEN_FORM, "client_id": DEMO_CLIENT_ID, "client_secret": "x"}
    response = http.post(f"{emulator.base_url}/ghost.example/oauth2/v2.0/token", data=form)
    assert response.status_code == 400
    assert response.json()["error_codes"] == [90002]


def test_token_accepts_basic_auth(emulator, http):
    basic = base64.b64encode(f"{PLATFORM_CLIENT_ID}:{PLATFORM_CLIENT_SECRET}".encode()).decode()
    response = http.post(
        f"{emulator.base_url}/{PLATFORM_TENANT_ID}/oauth2/v2.0/token",
        data=TOKEN_FORM,
        headers={"Authorization": f"Basic {basic}"},
    )
    assert response.status_code == 200
    assert set(response.json()) == {"token_type", "expires_in", "ext_expires_in", "access_token"}


def _tenant_with_certificate(emulator, cert_pem):
    tenant = make_tenant(7)
    tenant["apps"][0]["certificates"] = [{"pem": cert_pem}]
    emulator.add_tenant(tenant)
    return tenant["id"], tenant["apps"][0]["client_id"]


def test_token_certificate_credential_ps256_works(emulator, make_app):
    key_pem, cert_pem = make_certificate()
    tid, app_id = _tenant_with_certificate(emulator, cert_pem)
    credential = {"private_key": key_pem, "public_certificate": cert_pem}
    result = make_app(tid, app_id, credential).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert "access_token" in result, result
    assert emulator.requests_log(route="token")[-1]["form"]["client_assertion"] == "***"


def test_token_certificate_credential_sha1_thumbprint_rs256_works(emulator, make_app):
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes

    key_pem, cert_pem = make_certificate()
    tid, app_id = _tenant_with_certificate(emulator, cert_pem)
    thumbprint = x509.load_pem_x509_certificate(cert_pem.encode()).fingerprint(hashes.SHA1()).hex()
    credential = {"private_key": key_pem, "thumbprint": thumbprint}
    assert "access_token" in make_app(tid, app_id, credential).acquire_token_for_client(scopes=GRAPH_SCOPE)


def test_token_wrong_certificate_fails_700027(emulator, make_app):
    _, registered_pem = make_certificate()
    other_key, other_cert = make_certificate()
    tid, app_id = _tenant_with_certificate(emulator, registered_pem)
    credential = {"private_key": other_key, "public_certificate": other_cert}
    result = make_app(tid, app_id, credential).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error"] == "invalid_client"
    assert result["error_codes"] == [700027]


def test_token_forged_signature_with_registered_thumbprint_fails_700027(emulator, make_app):
    _, registered_pem = make_certificate()
    other_key, _ = make_certificate()
    tid, app_id = _tenant_with_certificate(emulator, registered_pem)
    # Right certificate announced in the header, signed with a different private key.
    credential = {"private_key": other_key, "public_certificate": registered_pem}
    result = make_app(tid, app_id, credential).acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error_codes"] == [700027]
    assert result["error_description"].startswith(
        "AADSTS700027: Client assertion failed signature validation."
    )


def test_discovery_oidc_authority_form_works(emulator, http):
    app = msal.ConfidentialClientApplication(
        PLATFORM_CLIENT_ID,
        client_credential=PLATFORM_CLIENT_SECRET,
        oidc_authority=f"{emulator.base_url}/{PLATFORM_TENANT_ID}",
        http_client=http,
    )
    assert "access_token" in app.acquire_token_for_client(scopes=GRAPH_SCOPE)
    paths = [e["path"] for e in emulator.requests_log(route="discovery")]
    assert f"/{PLATFORM_TENANT_ID}/.well-known/openid-configuration" in paths


def test_discovery_by_domain_advertises_tenant_guid(emulator, http):
    doc = http.get(f"{emulator.base_url}/contoso.example/v2.0/.well-known/openid-configuration").json()
    assert doc["token_endpoint"] == f"{emulator.base_url}/{DEMO_TENANT_ID}/oauth2/v2.0/token"


def test_instance_discovery_serves_aliases(emulator, http):
    response = http.get(f"{emulator.base_url}/common/discovery/instance", params={"api-version": "1.1"})
    assert response.status_code == 200
    assert "login.microsoftonline.com" in response.json()["metadata"][0]["aliases"]


def test_token_endpoint_429_fault_reaches_msal_with_retry_after(emulator, make_app):
    emulator.add_fault(route="token", kind="429", count=1, retry_after="7")
    result = make_app().acquire_token_for_client(scopes=GRAPH_SCOPE)
    assert result["error"] == "temporarily_unavailable"
    assert emulator.counters()["faults_injected"] == 1


def test_token_endpoint_503_fault_raises_in_msal(emulator, make_app):
    emulator.add_fault(route="token", kind="503", count=1)
    with pytest.raises(msal.exceptions.MsalServiceError):
        make_app().acquire_token_for_client(scopes=GRAPH_SCOPE)
