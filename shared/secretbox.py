"""Encryption of secrets at rest (client secrets in the database, tokens in Redis).

MultiFernet over the keys from settings, newest first: encrypting uses the first key, decrypting
tries them all, so keys rotate without downtime (add a new key in front, re-encrypt, drop the
old one). The embedded default keeps one generated key in state_dir, readable by its owner only.
"""

from __future__ import annotations

import os

from cryptography.fernet import Fernet, InvalidToken, MultiFernet

from shared.errors import ConfigurationError
from shared.settings import Settings


class SecretBox:
    """Encrypt and decrypt small secrets with the configured keys."""

    def __init__(self, keys: list[str]) -> None:
        if not keys:
            raise ConfigurationError("TENANTMAIL_ENCRYPTION_KEYS: at least one Fernet key is needed")
        try:
            fernets = [Fernet(k.strip().encode()) for k in keys]
        except (ValueError, TypeError) as exc:
            raise ConfigurationError(
                "TENANTMAIL_ENCRYPTION_KEYS: each key must be 32 url-safe base64-encoded bytes"
            ) from exc
        self._newest = fernets[0]
        self._fernet = MultiFernet(fernets)

    @classmethod
    def from_settings(cls, settings: Settings) -> SecretBox:
        """Keys from TENANTMAIL_ENCRYPTION_KEYS, else the embedded key file (created once)."""
        if settings.encryption_keys:
            return cls([k for k in settings.encryption_keys.split(",") if k.strip()])
        if settings.database_url is not None:
            raise ConfigurationError(
                "TENANTMAIL_ENCRYPTION_KEYS must be set when DATABASE_URL points at a shared database"
            )
        return cls([_embedded_key(settings)])

    def encrypt(self, plaintext: str) -> bytes:
        """Encrypt with the newest key."""
        return self._fernet.encrypt(plaintext.encode())

    def decrypt(self, token: bytes) -> str:
        """Decrypt with whichever configured key made it."""
        try:
            return self._fernet.decrypt(token).decode()
        except InvalidToken as exc:
            raise ConfigurationError("a stored secret cannot be decrypted with the configured keys") from exc

    def rotate(self, token: bytes) -> bytes:
        """Re-encrypt under the newest key (raises ConfigurationError when no configured key opens it)."""
        try:
            return self._fernet.rotate(token)
        except InvalidToken as exc:
            raise ConfigurationError("a stored secret cannot be decrypted with the configured keys") from exc

    def is_newest(self, token: bytes) -> bool:
        """Whether the newest key opens `token` (then rotating it would change nothing)."""
        return _opens(self._newest, token)

    def opens(self, token: bytes) -> bool:
        """Whether any configured key opens `token`."""
        return _opens(self._fernet, token)


def _opens(fernet: Fernet | MultiFernet, token: bytes) -> bool:
    try:
        fernet.decrypt(token)
    except InvalidToken:
        return False
    return True


def _embedded_key(settings: Settings) -> str:
    path = settings.state_dir / "encryption.key"
    if not path.exists():
        settings.state_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "w") as f:
            f.write(Fernet.generate_key().decode())
    return path.read_text().strip()
