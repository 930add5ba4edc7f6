"""A certificate authority generated at start, its PEM written to a file the caller can trust."""

from __future__ import annotations

import os
import ssl
import tempfile
from pathlib import Path

import trustme


class TlsMaterial:
    """The CA and a server certificate for 127.0.0.1, localhost and any `hostnames` given."""

    def __init__(self, state_dir: str | None = None, ca_path: str | None = None,
                 hostnames: tuple[str, ...] = ()) -> None:
        self._ca = trustme.CA(organization_name="tenantmail emulator")
        self._cert = self._ca.issue_cert("127.0.0.1", "localhost", "::1", *hostnames)
        if ca_path is None:
            directory = state_dir or tempfile.mkdtemp(prefix="tenantmail-emulator-")
            os.makedirs(directory, exist_ok=True)
            ca_path = os.path.join(directory, "emulator-ca.pem")
        Path(ca_path).parent.mkdir(parents=True, exist_ok=True)
        self._ca.cert_pem.write_to_path(ca_path)
        self.ca_path = ca_path

    def server_context(self) -> ssl.SSLContext:
        """An SSL context for the server side."""
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        self._cert.configure_cert(ctx)
        return ctx
