"""Fixtures for the emulator's own tests: every test talks to a real TLS emulator on a free port."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from typing import Any

import msal
import pytest
import requests

from emulator.control_client import EmulatorHandle
from emulator.directory import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_TENANT_ID
from emulator.pytest_plugin import emulator  # noqa: F401  (the fixture, usable without the root plugin)
from emulator.testing import make_certificate  # noqa: F401  (tests import it from here)

GRAPH_SCOPE = ["https://graph.microsoft.com/.default"]


@pytest.fixture
def http(emulator: EmulatorHandle) -> Iterator[requests.Session]:  # noqa: F811
    """A requests session trusting only the emulator's CA, ignoring env CA bundles."""
    session = requests.Session()
    session.trust_env = False
    session.verify = emulator.ca_path
    yield session
    session.close()


@pytest.fixture
def make_app(
    emulator: EmulatorHandle,  # noqa: F811
    http: requests.Session,
) -> Callable[..., msal.ConfidentialClientApplication]:
    """Factory for MSAL apps pointed at the emulator (defaults: the demo tenant and app)."""

    def make(
        tenant: str = DEMO_TENANT_ID, client_id: str = DEMO_CLIENT_ID, credential: Any = DEMO_CLIENT_SECRET
    ) -> msal.ConfidentialClientApplication:
        return msal.ConfidentialClientApplication(
            client_id,
            client_credential=credential,
            authority=emulator.authority(tenant),
            instance_discovery=False,
            http_client=http,
            azure_region=False,
        )

    return make


@pytest.fixture
def demo_token(make_app: Callable[..., msal.ConfidentialClientApplication]) -> str:
    """A Graph token for the demo app, obtained through MSAL."""
    return make_app().acquire_token_for_client(scopes=GRAPH_SCOPE)["access_token"]


def send(http: requests.Session, handle: EmulatorHandle, mailbox: str, token: str | None, **message: Any):
    """POST a sendMail; `message` overrides a valid default message."""
    body = {
        "message": {
            "subject": "Hello",
            "body": {"contentType": "Text", "content": "Hi"},
            "toRecipients": [{"emailAddress": {"address": "someone@example.com"}}],
            **message,
        },
        "saveToSentItems": False,
    }
    headers = {"client-request-id": "11111111-1111-4111-8111-111111111111"}
    if token is not None:
        headers["Authorization"] = f"Bearer {token}"
    return http.post(
        f"{handle.graph_base_url}/users/{mailbox}/sendMail", json=body, headers=headers, timeout=30
    )
