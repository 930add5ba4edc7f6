"""Client assertions against certificates registered through the control API, with hand-made JWTs for
each check (signature, thumbprint, aud, iss/sub, exp) and Entra's error body shape."""

from __future__ import annotations

import base64
import hashlib
import time
import uuid

import jwt
import pytest
import requests
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from emulator.directory import DEMO_CLIENT_ID, DEMO_TENANT_ID

from .conftest import GRAPH_SCOPE, make_certificate

ASSERTION_TYPE = "urn:ietf:params:oauth:client-assertion-type:jwt-bearer"


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def _assertion(emulator, key_pem: str, cert_pem: str, *, alg: str = "PS256", header_kind: str = "x5t#S256",
               **claims) -> str:
    der = x509.load_pem_x509_certificate(cert_pem.encode()).public_bytes(serialization.Encoding.DER)
    header = {"x5t#S256": _b64url(hashlib.sha256(der).digest())} if header_kind == "x5t#S256" else {
        "x5t": base64.urlsafe_b64encode(hashlib.sha1(der).digest()).decode()}  # MSAL pads the SHA-1 form
    now = time.time()
    body = {"aud": f"{emulator.base_url}/{DEMO_TENANT_ID}/oauth2/v2.0/token", "iss": DEMO_CLIENT_ID,
            "sub": DEMO_CLIENT_ID, "iat": now, "nbf": now, "exp": now + 600, "jti": str(uuid.uuid4()), **claims}
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    return jwt.encode(body, key, algorithm=alg, headers=header)


def _token(emulator, http: requests.Session, assertion: str) -> requests.Response:
    return http.post(f"{emulator.base_url}/{DEMO_TENANT_ID}/oauth2/v2.0/token", timeout=30, data={
        "grant_type": "client_credentials", "scope": GRAPH_SCOPE[0], "client_id": DEMO_CLIENT_ID,
        "client_assertion_type": ASSERTION_TYPE, "client_assertion": assertion})


@pytest.fixture
def registered(emulator) -> tuple[str, str]:
    """A key and certificate whose public part is registered on the demo app through the control API."""
    key_pem, cert_pem = make_certificate()
    emulator.add_certificate(DEMO_TENANT_ID, DEMO_CLIENT_ID, cert_pem)
    return key_pem, cert_pem


@pytest.mark.parametrize(("alg", "header_kind"), [("PS256", "x5t#S256"), ("RS256", "x5t")])
def test_assertion_signed_by_the_registered_certificate_gets_a_token(emulator, http, registered, alg, header_kind):
    response = _token(emulator, http, _assertion(emulator, *registered, alg=alg, header_kind=header_kind))

    assert response.status_code == 200, response.text
    claims = jwt.decode(response.json()["access_token"], options={"verify_signature": False})
    assert claims["appid"] == DEMO_CLIENT_ID and claims["appidacr"] == "2"


def test_unknown_thumbprint_gets_700027_in_entras_body_shape(emulator, http, registered):
    other_key, other_cert = make_certificate()

    response = _token(emulator, http, _assertion(emulator, other_key, other_cert))

    assert response.status_code == 401
    body = response.json()
    assert set(body) == {"error", "error_description", "error_codes", "timestamp", "trace_id", "correlation_id",
                         "error_uri"}
    assert body["error"] == "invalid_client" and body["error_codes"] == [700027]
    first_line, *rest = body["error_description"].split("\r\n")
    assert first_line.startswith("AADSTS700027: Client assertion failed signature validation.")
    assert rest[0] == f"Trace ID: {body['trace_id']}" and rest[1] == f"Correlation ID: {body['correlation_id']}"
    assert body["error_uri"].endswith("/error?code=700027")


def test_bad_signature_with_a_registered_thumbprint_gets_700027(emulator, http, registered):
    _, cert_pem = registered
    other_key, _ = make_certificate()

    response = _token(emulator, http, _assertion(emulator, other_key, cert_pem))

    assert response.json()["error_codes"] == [700027]


@pytest.mark.parametrize(("claims", "code"), [
    ({"aud": "https://login.microsoftonline.com/another-tenant.example/oauth2/v2.0/token"}, 700021),
    ({"iss": "11111111-2222-4333-8444-555555555555"}, 700023),
    ({"sub": "11111111-2222-4333-8444-555555555555"}, 700023),
    ({"exp": time.time() - 60}, 700024),
])
def test_assertion_claims_are_checked(emulator, http, registered, claims, code):
    response = _token(emulator, http, _assertion(emulator, *registered, **claims))

    assert response.status_code == 401 and response.json()["error_codes"] == [code]


def test_a_registered_certificate_past_its_expiry_gets_700027(emulator, http, registered):
    emulator.advance_clock(31 * 86400)  # make_certificate's certificates live 30 days

    response = _token(emulator, http, _assertion(emulator, *registered, exp=emulator.now() + 600))

    assert response.json()["error_codes"] == [700027]
    assert "expired" in response.json()["error_description"].split("\r\n")[0]


def test_add_certificate_refuses_unknown_apps_tenants_and_bad_pems(emulator):
    _, cert_pem = make_certificate()
    with pytest.raises(RuntimeError, match="404"):
        emulator.add_certificate(DEMO_TENANT_ID, "11111111-2222-4333-8444-555555555555", cert_pem)
    with pytest.raises(RuntimeError, match="404"):
        emulator.add_certificate("nosuch.example", DEMO_CLIENT_ID, cert_pem)
    with pytest.raises(RuntimeError, match="400"):
        emulator.add_certificate(DEMO_TENANT_ID, DEMO_CLIENT_ID, "-----BEGIN CERTIFICATE-----\nnope")
    apps = emulator.get_directory()["tenants"][0]["apps"]
    assert apps[0]["certificates"] == []


def test_smtp_relay_faults_are_validated_and_reset_clears_the_relay(emulator):
    with pytest.raises(RuntimeError, match="400"):
        emulator.add_smtp_fault(stage="rcpt", reply="250 fine")
    with pytest.raises(RuntimeError, match="400"):
        emulator.add_smtp_fault(stage="mail", kind="drop_after_data")
    emulator.add_smtp_fault(stage="data", reply="452 4.3.1 Insufficient storage", count=2)
    assert [f["hits"] for f in emulator.smtp_faults()] == [0]

    emulator.reset()

    assert emulator.smtp_faults() == [] and emulator.smtp_messages() == []
    assert emulator.smtp_counters()["connections"] == 0
