"""A synchronous client for the control API, and the handle tests and benchmarks get."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import requests


class ControlClient:
    """Talks to /_emulator/ over HTTP(S) with its own `requests.Session` (trust_env=False)."""

    def __init__(self, base_url: str, ca_path: str | None, timeout_s: float = 30.0) -> None:
        self.base_url = base_url
        self.timeout_s = timeout_s
        self.session = requests.Session()
        self.session.trust_env = False
        self.session.verify = ca_path if ca_path else True

    def _call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = self.session.request(
            method, f"{self.base_url}/_emulator/{path}", timeout=self.timeout_s, **kwargs
        )
        if response.status_code >= 400:
            raise RuntimeError(f"control API {method} {path}: {response.status_code} {response.text}")
        return response.json()

    def set_directory(self, directory: dict[str, Any]) -> None:
        """Replace the whole directory."""
        self._call("PUT", "directory", json=directory)

    def add_tenant(self, tenant: dict[str, Any]) -> str:
        """Add or replace one tenant; returns its id."""
        return self._call("POST", "directory/tenants", json=tenant)["id"]

    def get_directory(self) -> dict[str, Any]:
        """The directory as loaded."""
        return self._call("GET", "directory")

    def outbox(self, **filters: Any) -> list[dict[str, Any]]:
        """Accepted messages, filtered by field equality (case-insensitive), e.g. mailbox=..."""
        return self._call("GET", "outbox", params=filters)

    def mail_items(self, **filters: Any) -> list[dict[str, Any]]:
        """Drafts and Sent Items copies left in mailboxes, filtered like `outbox`, e.g. folder="drafts"."""
        return self._call("GET", "mailitems", params=filters)

    def requests_log(self, **filters: Any) -> list[dict[str, Any]]:
        """The masked request log, filtered like `outbox`, e.g. route="token"."""
        return self._call("GET", "requests", params=filters)

    def counters(self) -> dict[str, Any]:
        """Counters since the last reset."""
        return self._call("GET", "counters")

    def reset(self) -> None:
        """Clear outbox, log, counters, faults, throttle state and clock offset (directory kept)."""
        self._call("POST", "reset")

    def add_fault(self, **spec: Any) -> str:
        """Add a fault rule (see docs/emulator.md); returns its id."""
        return self._call("POST", "faults", json=spec)["id"]

    def faults(self) -> list[dict[str, Any]]:
        """Active fault rules with their hit counts."""
        return self._call("GET", "faults")

    def remove_fault(self, fault_id: str) -> None:
        """Drop one rule."""
        self._call("DELETE", f"faults/{fault_id}")

    def clear_faults(self) -> None:
        """Drop every rule."""
        self._call("DELETE", "faults")

    def release_held(self) -> int:
        """Let requests held by "hold" faults continue."""
        return self._call("POST", "faults/release")["released"]

    def set_config(self, **changes: Any) -> dict[str, Any]:
        """Change run-time settings; returns the new config."""
        return self._call("POST", "config", json=changes)

    def get_config(self) -> dict[str, Any]:
        """Current settings."""
        return self._call("GET", "config")

    def advance_clock(self, seconds: float) -> float:
        """Move the emulator clock forward; returns its new time (epoch seconds)."""
        return self._call("POST", "clock", json={"advance_s": seconds})["now"]

    def now(self) -> float:
        """The emulator clock."""
        return self._call("GET", "clock")["now"]

    def mint_token(self, **claims: Any) -> str:
        """A token signed by the emulator (or `signed_by="other"`) with these claims over app defaults."""
        return self._call("POST", "tokens", json=claims)["access_token"]

    def add_certificate(self, tenant: str, client_id: str, cert_pem: str) -> None:
        """Register a certificate's public part on an app (as an admin uploads it in Certificates & secrets)."""
        self._call("POST", f"directory/tenants/{tenant}/apps/{client_id}/certificates", json={"pem": cert_pem})

    def exchange(self, tenant: str, cmdlet: str, **params: Any) -> Any:
        """Run an Exchange Online cmdlet (New-ServicePrincipal, New-ManagementScope,
        New-ManagementRoleAssignment, New-ApplicationAccessPolicy, Test-ServicePrincipalAuthorization,
        Test-ApplicationAccessPolicy) against the directory; returns its output."""
        return self._call("POST", f"exchange/{tenant}/cmdlet", json={"cmdlet": cmdlet, "params": params})["output"]

    def smtp_messages(self, **filters: Any) -> list[dict[str, Any]]:
        """Messages the SMTP relay received, filtered like `outbox` (e.g. notification_id=...)."""
        return self._call("GET", "smtp/messages", params=filters)

    def smtp_counters(self) -> dict[str, Any]:
        """The SMTP relay's counters: connections, transactions, accepted, dropped_after_data, replies ..."""
        return self._call("GET", "smtp/counters")

    def add_smtp_fault(self, **spec: Any) -> str:
        """Add an SMTP fault rule (see emulator/smtp.py); returns its id."""
        return self._call("POST", "smtp/faults", json=spec)["id"]

    def smtp_faults(self) -> list[dict[str, Any]]:
        """SMTP fault rules with their hit counts."""
        return self._call("GET", "smtp/faults")

    def smtp_disconnect(self) -> int:
        """Make the SMTP relay close every open client connection; returns how many it closed."""
        return self._call("POST", "smtp/disconnect")["closed"]

    def clear_smtp_faults(self) -> None:
        """Drop every SMTP fault rule."""
        self._call("DELETE", "smtp/faults")

    def close(self) -> None:
        """Close the HTTP session."""
        self.session.close()


@dataclass
class EmulatorHandle:
    """What `running_emulator()` and `EmulatorProcess` yield."""

    base_url: str
    port: int
    ca_path: str | None
    control: ControlClient = field(repr=False)
    smtp_host: str | None = None
    smtp_port: int | None = None
    smtp_security: str | None = None  # what a client should use: "starttls", "tls" or "none"

    def smtp_settings(self) -> dict[str, str]:
        """TENANTMAIL_SMTP_* variables that point the platform default provider at this relay."""
        if self.smtp_port is None:
            raise RuntimeError("this emulator runs without its SMTP relay")
        return {"TENANTMAIL_SMTP_HOST": str(self.smtp_host), "TENANTMAIL_SMTP_PORT": str(self.smtp_port),
                "TENANTMAIL_SMTP_SECURITY": str(self.smtp_security)}

    @property
    def graph_base_url(self) -> str:
        """base_url + "/v1.0"."""
        return f"{self.base_url}/v1.0"

    def authority(self, tenant: str) -> str:
        """The MSAL authority for a tenant GUID or domain."""
        return f"{self.base_url}/{tenant}"

    def __getattr__(self, name: str) -> Any:
        # handle.outbox(), handle.reset() ... delegate to the control client.
        if name.startswith("_") or name == "control":
            raise AttributeError(name)
        return getattr(self.control, name)
