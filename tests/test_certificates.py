"""shared.certificates: what an admin may paste as `certificate_pem`, and what each mistake is called."""

from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from emulator.testing import make_certificate
from shared.certificates import client_credential, parse_certificate_pem, split_credential
from shared.errors import ValidationFailed


def _reason(value: object) -> str:
    with pytest.raises(ValidationFailed) as info:
        parse_certificate_pem(value)
    assert info.value.field == "certificate_pem"
    return info.value.reason


def test_key_and_certificate_give_the_sha1_thumbprint_entra_shows_and_the_not_after() -> None:
    key_pem, cert_pem = make_certificate(valid_days=90)
    cert = x509.load_pem_x509_certificate(cert_pem.encode())

    parsed = parse_certificate_pem(key_pem + cert_pem)

    assert parsed.thumbprint == cert.fingerprint(hashes.SHA1()).hex().upper() and len(parsed.thumbprint) == 40
    assert parsed.not_after == cert.not_valid_after_utc
    assert key_pem not in repr(parsed)
    assert split_credential(parsed.pem) == (key_pem, cert_pem)


def test_certificate_before_the_key_and_a_chain_are_accepted() -> None:
    key_pem, cert_pem = make_certificate()
    _, other_cert = make_certificate("someone-else")

    parsed = parse_certificate_pem(other_cert + cert_pem + key_pem)

    assert split_credential(parsed.pem)[1] == cert_pem  # the certificate of this key, not the first one


def test_a_traditional_rsa_private_key_is_normalised_to_pkcs8() -> None:
    key_pem, cert_pem = make_certificate()
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    traditional = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                    serialization.NoEncryption()).decode()
    assert "BEGIN RSA PRIVATE KEY" in traditional

    parsed = parse_certificate_pem(traditional + cert_pem)

    assert split_credential(parsed.pem)[0] == key_pem


def test_mismatched_expired_and_future_certificates_are_refused_with_the_reason() -> None:
    key_pem, _ = make_certificate()
    _, other_cert = make_certificate()
    expired_key, expired_cert = make_certificate(valid_days=-1, not_before_days=-30)
    future_key, future_cert = make_certificate(not_before_days=5, valid_days=30)

    assert "does not belong to the private key" in _reason(key_pem + other_cert)
    assert "expired on" in _reason(expired_key + expired_cert)
    assert "not valid before" in _reason(future_key + future_cert)


def test_missing_parts_encrypted_and_non_rsa_keys_are_refused() -> None:
    key_pem, cert_pem = make_certificate()
    key = serialization.load_pem_private_key(key_pem.encode(), None)
    encrypted = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.BestAvailableEncryption(b"pass")).decode()
    ec_key = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()).decode()

    assert "no PEM private key" in _reason(cert_pem)
    assert "no PEM certificate" in _reason(key_pem)
    assert "encrypted" in _reason(encrypted + cert_pem)
    assert "RSA" in _reason(ec_key + cert_pem)
    body_start = key_pem.index("\n") + 1
    assert "not valid PEM" in _reason(key_pem[:body_start] + "!!!!" + key_pem[body_start + 4:] + cert_pem)
    assert "must be a string" in _reason(123)
    assert "at most" in _reason(key_pem + cert_pem + " " * 70_000)


def test_small_rsa_keys_are_refused() -> None:
    key_pem, cert_pem = make_certificate(key_size=1024)
    assert "2048" in _reason(key_pem + cert_pem)


def test_msal_gets_the_key_and_the_public_certificate() -> None:
    key_pem, cert_pem = make_certificate()
    parsed = parse_certificate_pem(key_pem + cert_pem)

    assert client_credential("certificate", parsed.pem) == {"private_key": key_pem, "public_certificate": cert_pem}
    assert client_credential("secret", "s3cr3t-value") == "s3cr3t-value"


_KEY_PEM, _CERT_PEM = make_certificate()
_PIECES = st.sampled_from([
    "-----BEGIN PRIVATE KEY-----\n", "-----END PRIVATE KEY-----\n", "-----BEGIN CERTIFICATE-----\n",
    "-----END CERTIFICATE-----\n", "-----BEGIN RSA PRIVATE KEY-----\n", "-----BEGIN EC PRIVATE KEY-----\n",
    "Proc-Type: 4,ENCRYPTED\n", "MIIBIjANBgkqhkiG9w0BAQEFAAOCAQ8AMIIBCgKCAQEA\n", _KEY_PEM, _CERT_PEM,
    _KEY_PEM[:200], _CERT_PEM[-200:], "\x00", "é", "\r\n"])


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.lists(st.one_of(_PIECES, st.text(max_size=40)), max_size=8).map("".join))
def test_any_text_is_either_accepted_or_refused_naming_the_field(text: str) -> None:
    try:
        parsed = parse_certificate_pem(text)
    except ValidationFailed as exc:
        assert exc.field == "certificate_pem" and exc.reason
    else:
        assert len(parsed.thumbprint) == 40
