"""`tenantmail doctor` against real services: all good, then the failures it must explain."""

from __future__ import annotations

import subprocess
import sys
from typing import Any

from emulator.demo import DEMO_CLIENT_ID, DEMO_CLIENT_SECRET, DEMO_SENDER, DEMO_TENANT_ID
from shared.providers import save_graph_provider
from tests.stack import ROOT


def _doctor(env: dict[str, str], *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "tenantmail", "doctor", *args], env=env, cwd=ROOT,
                          capture_output=True, text=True, timeout=60)


def test_doctor_passes_and_gets_a_token_for_a_good_tenant(make_stack: Any) -> None:
    stack = make_stack()
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)

    result = _doctor(stack.env, "--tenant", "acme")

    assert result.returncode == 0, result.stdout + result.stderr
    assert "OK    migrations current" in result.stdout
    assert "OK    tenant acme: token acquired" in result.stdout
    for check in ("SPF", "DKIM", "DMARC"):  # against the test DNS server's good zone
        assert f"OK    tenant acme: {check} of contoso.example" in result.stdout
    assert DEMO_CLIENT_SECRET not in result.stdout + result.stderr


def test_doctor_shows_a_broken_sender_domain_with_its_fixes(make_stack: Any) -> None:
    stack = make_stack()
    save_graph_provider(stack.engine, stack.box, "acme", sender_address="alerts@broken.example",
                        azure_tenant=DEMO_TENANT_ID, client_id=DEMO_CLIENT_ID, client_secret=DEMO_CLIENT_SECRET)

    result = _doctor(stack.env, "--tenant", "acme")

    assert result.returncode == 1
    assert "FAIL  tenant acme: SPF of broken.example: SPF does not include spf.protection.outlook.com" in result.stdout
    assert "fix: add include:spf.protection.outlook.com" in result.stdout
    assert "WARN  tenant acme: DMARC of broken.example: DMARC policy p=none" in result.stdout


def test_doctor_explains_a_wrong_secret_with_its_fix(make_stack: Any) -> None:
    stack = make_stack()
    save_graph_provider(stack.engine, stack.box, "acme", sender_address=DEMO_SENDER, azure_tenant=DEMO_TENANT_ID,
                        client_id=DEMO_CLIENT_ID, client_secret="the-secret-id-not-the-value")

    result = _doctor(stack.env, "--tenant", "acme")

    assert result.returncode == 1
    assert "AADSTS7000215" in result.stdout and "paste its Value" in result.stdout


def test_doctor_fails_when_redis_is_unreachable(make_stack: Any) -> None:
    stack = make_stack()
    env = {**stack.env, "REDIS_URL": "redis://127.0.0.1:1/0"}

    result = _doctor(env)

    assert result.returncode == 1
    assert "FAIL  redis redis://127.0.0.1:1/0" in result.stdout
