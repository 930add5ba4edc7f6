"""Certificate credentials: a PEM private key plus its PEM certificate, as an admin pastes them.

`parse_certificate_pem` is the only way in: it checks the key is an unencrypted RSA key (Entra ID
signs client assertions with RS256/PS256 only), that one of the certificates belongs to that key,
and that the certificate is valid now. What it returns is normalised: PKCS#8 key, then that
certificate, so the stored text is always in the form `split_credential` expects. The thumbprint is
SHA-1 hex in upper case, as the Entra admin center's Certificates & secrets page shows it.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime

from cryptography import x509
from cryptography.exceptions import UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from shared.errors import ValidationFailed

FIELD = "certificate_pem"
MAX_PEM_CHARS = 64 * 1024
_KEY_MARKERS = ("-----BEGIN PRIVATE KEY-----", "-----BEGIN RSA PRIVATE KEY-----", "-----BEGIN EC PRIVATE KEY-----")
_CERT_BEGIN = "-----BEGIN CERTIFICATE-----"


@dataclass(frozen=True, slots=True)
class CertificateCredential:
    """A checked key and certificate; `pem` (key then certificate) never prints."""

    thumbprint: str
    not_after: datetime
    subject: str
    pem: str = field(repr=False)


def parse_certificate_pem(value: object, *, now: datetime | None = None) -> CertificateCredential:
    """Check a pasted key + certificate; raise ValidationFailed("certificate_pem", why) when unusable."""
    if not isinstance(value, str):
        raise ValidationFailed(FIELD, "must be a string holding a PEM private key and its PEM certificate")
    if len(value) > MAX_PEM_CHARS:
        raise ValidationFailed(FIELD, f"must be at most {MAX_PEM_CHARS} characters")
    key = _private_key(value)
    cert = _matching_certificate(value, key)
    moment = now or datetime.now(UTC)
    if cert.not_valid_after_utc <= moment:
        raise ValidationFailed(FIELD, f"the certificate expired on {cert.not_valid_after_utc:%Y-%m-%d}; "
                                      "create a new one and upload its public part to the app registration")
    if cert.not_valid_before_utc > moment:
        raise ValidationFailed(FIELD, f"the certificate is not valid before {cert.not_valid_before_utc:%Y-%m-%d}")
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption()).decode()
    cert_pem = cert.public_bytes(serialization.Encoding.PEM).decode()
    return CertificateCredential(thumbprint=thumbprint(cert), not_after=cert.not_valid_after_utc,
                                 subject=cert.subject.rfc4514_string(), pem=key_pem + cert_pem)


def thumbprint(cert: x509.Certificate) -> str:
    """SHA-1 of the DER certificate, upper-case hex: the thumbprint Entra ID shows."""
    return cert.fingerprint(hashes.SHA1()).hex().upper()  # SHA-1: what Entra displays


def split_credential(pem: str) -> tuple[str, str]:
    """(private key PEM, certificate PEM) of a stored credential from `parse_certificate_pem`."""
    at = pem.index(_CERT_BEGIN)
    return pem[:at], pem[at:]


def _private_key(text: str) -> rsa.RSAPrivateKey:
    if "-----BEGIN ENCRYPTED PRIVATE KEY-----" in text or "Proc-Type: 4,ENCRYPTED" in text:
        raise ValidationFailed(FIELD, "the private key is encrypted; export it without a passphrase "
                                      "(openssl pkcs12 -in cert.pfx -nodes)")
    block = _pem_block(text, _KEY_MARKERS)
    if block is None:
        raise ValidationFailed(FIELD, "no PEM private key found (-----BEGIN PRIVATE KEY-----)")
    try:
        key = serialization.load_pem_private_key(block.encode(), password=None)
    except (ValueError, TypeError, UnsupportedAlgorithm):
        raise ValidationFailed(FIELD, "the private key is not valid PEM (or of an unsupported kind)") from None
    if not isinstance(key, rsa.RSAPrivateKey):
        raise ValidationFailed(FIELD, "the private key must be an RSA key (Entra ID signs assertions with RSA)")
    if key.key_size < 2048:
        raise ValidationFailed(FIELD, "the RSA key must be at least 2048 bits")
    return key


def _matching_certificate(text: str, key: rsa.RSAPrivateKey) -> x509.Certificate:
    if _CERT_BEGIN not in text:
        raise ValidationFailed(FIELD, "no PEM certificate found (-----BEGIN CERTIFICATE-----) after the key")
    try:
        certs = x509.load_pem_x509_certificates(text[text.index(_CERT_BEGIN):].encode())
    except ValueError:
        raise ValidationFailed(FIELD, "the certificate is not valid PEM") from None
    wanted = key.public_key().public_numbers()
    for cert in certs:
        public = cert.public_key()
        if isinstance(public, rsa.RSAPublicKey) and public.public_numbers() == wanted:
            return cert
    raise ValidationFailed(FIELD, "the certificate does not belong to the private key (their public keys differ)")


def _pem_block(text: str, begins: tuple[str, ...]) -> str | None:
    for begin in begins:
        if begin in text:
            start = text.index(begin)
            end_marker = begin.replace("BEGIN", "END")
            end = text.find(end_marker, start)
            if end < 0:
                return None
            return text[start:end + len(end_marker)] + "\n"
    return None


def client_credential(credential_type: str, credential: str) -> str | dict[str, str]:
    """What MSAL's `client_credential` takes: the secret itself, or the certificate as a dict.

    A certificate goes in as private key + public certificate: MSAL then signs the client
    assertion with PS256 and names the key by its SHA-256 thumbprint (`x5t#S256`), which is what
    Entra ID expects (MSAL calls the SHA-1 `thumbprint` form deprecated).
    """
    if credential_type == "certificate":
        key_pem, cert_pem = split_credential(credential)
        return {"private_key": key_pem, "public_certificate": cert_pem}
    return credential
