"""JWTs: access tokens the emulator signs and verifies, and client assertions it checks.

Access tokens are RS256 JWTs signed with a key generated at start. Verified tokens are cached
(token string -> claims) so Graph requests cost one dict lookup; `exp` is still checked against
the emulator clock on every request.
"""

from __future__ import annotations

import base64
import hashlib
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import jwt
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from emulator.directory import App, Certificate

GRAPH_APP_ID = "00000003-0000-0000-c000-000000000000"
# Resources a client-credentials scope may name, and what Graph accepts as `aud`.
GRAPH_RESOURCES = frozenset(
    {
        "https://graph.microsoft.com",
        "https://graph.microsoft.us",
        "https://dod-graph.microsoft.us",
        "https://microsoftgraph.chinacloudapi.cn",
        GRAPH_APP_ID,
    }
)
_CACHE_LIMIT = 100_000


@dataclass(frozen=True)
class TokenCheck:
    """Outcome of checking a bearer token: `problem` is None when it is usable."""

    claims: dict[str, Any] | None
    problem: str | None  # "empty" | "malformed" | "invalid" | "audience" | "expired"


class TokenService:
    """Mints and verifies the emulator's access tokens."""

    def __init__(self) -> None:
        self._key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
        public_der = self._key.public_key().public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )
        self.kid = _b64url(hashlib.sha1(public_der).digest())
        self._public = self._key.public_key()
        self._verified: dict[str, dict[str, Any]] = {}

    def mint(self, claims: dict[str, Any]) -> str:
        """Sign `claims` as an RS256 JWT."""
        return jwt.encode(claims, self._key, algorithm="RS256", headers={"kid": self.kid, "x5t": self.kid})

    def check(self, authorization: str | None, now: float) -> TokenCheck:
        """Check an Authorization header value the way Graph does, in Graph's order."""
        if not authorization or not authorization.lower().startswith("bearer "):
            return TokenCheck(None, "empty")
        token = authorization[7:].strip()
        if not token:
            return TokenCheck(None, "empty")
        claims = self._verified.get(token)
        if claims is None:
            problem, claims = self._verify(token)
            if problem is not None:
                return TokenCheck(None, problem)
            if len(self._verified) >= _CACHE_LIMIT:
                self._verified.clear()
            self._verified[token] = claims
        if claims.get("aud") not in GRAPH_RESOURCES:
            return TokenCheck(claims, "audience")
        if float(claims.get("exp", 0)) <= now or float(claims.get("nbf", 0)) > now + 300:
            return TokenCheck(claims, "expired")
        return TokenCheck(claims, None)

    def _verify(self, token: str) -> tuple[str | None, dict[str, Any]]:
        if token.count(".") != 2:
            return "malformed", {}
        try:
            claims = jwt.decode(token, self._public, algorithms=["RS256"], options=_NO_CLAIM_CHECKS)
        except jwt.InvalidSignatureError:
            return "invalid", {}
        except jwt.PyJWTError:
            return "malformed", {}
        return None, claims

    def jwks(self) -> dict[str, Any]:
        """The signing key as a JWKS document."""
        numbers = self._public.public_numbers()
        return {
            "keys": [
                {
                    "kty": "RSA",
                    "use": "sig",
                    "kid": self.kid,
                    "x5t": self.kid,
                    "n": _b64url(numbers.n.to_bytes((numbers.n.bit_length() + 7) // 8, "big")),
                    "e": _b64url(numbers.e.to_bytes(3, "big")),
                }
            ]
        }


_NO_CLAIM_CHECKS = {
    "verify_exp": False,
    "verify_aud": False,
    "verify_iat": False,
    "verify_nbf": False,
    "verify_iss": False,
}


def _b64url(raw: bytes) -> str:
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def check_assertion(assertion: str, app: App, tenant_keys: set[str], now: float) -> str | None:
    """Verify a client assertion against the app's certificates.

    Returns None when valid, else a problem key of entra_errors.CATALOGUE: "assertion_malformed",
    "assertion_key_not_found", "assertion_signature", "assertion_key_expired", "assertion_audience",
    "assertion_expired", "assertion_subject".
    `tenant_keys` is the tenant's GUID and domains: `aud` must be a token endpoint for one of them.
    """
    try:
        header = jwt.get_unverified_header(assertion)
    except jwt.PyJWTError:
        return "assertion_malformed"
    alg = header.get("alg")
    if alg not in ("RS256", "PS256"):
        return "assertion_malformed"
    cert = _find_certificate(app.certificates, header)
    if cert is None:
        return "assertion_key_not_found"
    try:
        claims = jwt.decode(assertion, cert.cert.public_key(), algorithms=[alg], options=_NO_CLAIM_CHECKS)
    except jwt.InvalidSignatureError:
        return "assertion_signature"
    except jwt.PyJWTError:
        return "assertion_malformed"
    if cert.expires_at is not None and cert.expires_at <= now:
        return "assertion_key_expired"
    if not _audience_ok(claims.get("aud"), tenant_keys):
        return "assertion_audience"
    if float(claims.get("exp", 0)) <= now or float(claims.get("nbf", 0)) > now + 300:
        return "assertion_expired"
    if (
        str(claims.get("sub", "")).lower() != app.client_id
        or str(claims.get("iss", "")).lower() != app.client_id
    ):
        return "assertion_subject"
    return None


def _find_certificate(certs: list[Certificate], header: dict[str, Any]) -> Certificate | None:
    s256 = str(header.get("x5t#S256", "")).rstrip("=")
    sha1 = str(header.get("x5t", "")).rstrip("=")
    for cert in certs:
        if (s256 and cert.x5t_s256 == s256) or (sha1 and cert.x5t == sha1):
            return cert
    return None


def _audience_ok(aud: Any, tenant_keys: set[str]) -> bool:
    # Host-agnostic: any https host, but the path must be this tenant's token endpoint.
    auds = aud if isinstance(aud, list) else [aud]
    for value in auds:
        parts = urlsplit(str(value))
        segments = [s for s in parts.path.split("/") if s]
        if (
            len(segments) >= 3
            and segments[0].lower() in tenant_keys
            and segments[1] == "oauth2"
            and segments[-1] == "token"
        ):
            return True
    return False
